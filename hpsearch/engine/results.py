"""What a study has found, read once per command: a :class:`StudySnapshot`, and status, best, trials and reports
made from it.

A snapshot is one read of the study: its layout, a :class:`~hpsearch.engine.phaseview.PhaseView` of each phase (its
trials as light rows) and its stored result. Every question a command asks (status, best, the report, the API's
result) is answered from the snapshot it was handed, and a running driver's snapshot is kept up to date by catching
its views up (only trials changed since the last look), not read again. The trials in full (params, metrics,
histories) are read once per process and caught up the same way afterwards.
"""

from __future__ import annotations

import contextlib
import datetime
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.backends.base import metric_on_test, scores_on_test
from hpsearch.engine.listener import StudyReport
from hpsearch.engine.phases import Phases
from hpsearch.engine.phaseview import CATCH_UP_SLACK, PhaseView, phase_total
from hpsearch.engine.summary import PausedRuns, StudySummary
from hpsearch.engine.training import resolved_config
from hpsearch.engine.winner import KeptWinner, Trial, rank_of
from hpsearch.errors import users_failure
from hpsearch.files import disk_use
from hpsearch.spec.build import best_fragment
from hpsearch.spec.models import PhaseSpec, StudySpec
from hpsearch.storage.connections import runs_folder
from hpsearch.storage.records import DEVICE, EXAMPLES, decode_params
from hpsearch.storage.trialstore import trial_id_of
from hpsearch.storage.urls import mask_url

__all__ = ["Results", "StudySnapshot"]


@dataclass
class StudySnapshot:
    """One read of a study: its layout (None before its first run), a view of each of the spec's phases, in the
    spec's order, and the stored result of the layout's generation (None: none yet, or an older generation's)."""

    layout: dict[str, Any] | None
    views: list[PhaseView]
    result: dict[str, Any] | None

    def view(self, phase: str) -> PhaseView:
        return next(view for view in self.views if view.phase.name == phase)


@dataclass
class _PhaseTrials:
    """A phase's trials in full, as :meth:`Results.trials` returns them, and when they were last caught up."""

    study_id: int
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # by trial id
    seen: datetime.datetime | None = None


class Results:
    """Status, best, trials and reports of one study, from snapshots of its phases."""

    def __init__(self, spec: StudySpec, url: str, phases: Phases, winner: KeptWinner | None = None) -> None:
        self.spec = spec
        self.url = url
        self.phases = phases
        self.winner = winner  # where the study's best trial so far keeps its model
        self.store = phases.store
        self._trials: dict[str, _PhaseTrials] = {}  # by Optuna study name

    def view(self, phase: PhaseSpec, layout: dict[str, Any] | None, refresh: bool = True) -> PhaseView:
        record = self.phases.layout.record(phase, layout) if layout else None
        view = PhaseView(phase, self.store, record, self.spec.objective.direction, phase_total(phase, record))
        if refresh:
            view.refresh(full=True)
        return view

    def snapshot(self) -> StudySnapshot:
        """The study as stored now: one read of each phase's rows."""
        layout = self.phases.layout.read()
        return StudySnapshot(layout, [self.view(p, layout) for p in self.spec.phases], self.stored_result(layout))

    def caught_up(self, snapshot: StudySnapshot) -> StudySnapshot:
        """``snapshot`` with its views caught up (trials changed since their last look) and its layout and result
        read again (one small value each)."""
        layout = self.phases.layout.read()
        views = [self.current(view, layout, exact=True) for view in snapshot.views]
        return StudySnapshot(layout, views, self.stored_result(layout))

    def current(self, view: PhaseView, layout: dict[str, Any] | None, *, exact: bool = False) -> PhaseView:
        """``view`` caught up while the layout still names its phase's Optuna study; else (a phase started, or
        started afresh, since) a first look at the study that serves it now."""
        record = self.phases.layout.record(view.phase, layout) if layout else None
        if record is not None and (view.record or {}).get("study") == record["study"]:
            view.refresh(exact=exact)
            return view
        return self.view(view.phase, layout)

    def stored_result(self, layout: dict[str, Any] | None) -> dict[str, Any] | None:
        result = self.phases.layout.table.get(self.spec.name, "result")
        if not result or not layout or result.get("generation") != layout.get("generation"):
            return None  # none yet, or one of a study since restarted with --force-new-phase
        return result

    def _best_row(self, snapshot: StudySnapshot) -> tuple[PhaseView, Any] | None:
        """The best trial over all phases: its phase's view and its row (the earlier phase's on a tie)."""
        found = [(view, view.best()) for view in snapshot.views]
        found = [(view, row) for view, row in found if row is not None]
        if not found:
            return None
        maximize = self.spec.objective.direction == "maximize"
        order = {view.phase.name: index for index, view in enumerate(snapshot.views)}
        return min(found, key=lambda pair: rank_of(pair[1].value, maximize, order[pair[0].phase.name], pair[1].number))

    def best(self, snapshot: StudySnapshot) -> dict[str, Any] | None:
        """The best trial over all phases, with everything needed to train it again."""
        found = self._best_row(snapshot)
        if found is None:
            return None
        view, row = found
        trial = self.store.storage.get_trial(row.trial_id)
        result = snapshot.result or {}
        same = result.get("phase") == view.phase.name and result.get("trial") == row.number
        params = decode_params(trial.params)
        return {
            "phase": view.phase.name, "trial": row.number, "value": row.value,
            "metric": self.spec.objective.metric, "params": params,
            "config": resolved_config(self.spec, params), "seed": trial.user_attrs.get("seed"),
            "data_fingerprint": result.get("data_fingerprint") if same else None,
            "test_failure": result.get("failure") if same else None,
            "trained_again": result.get("trained_again") if same else None,  # why its kept model was not used
            # the winner's scores on the test split (test_acc, test_loss, ...), measured once at the study's end or a
            # time box's
            "test_metric": metric_on_test(self.spec.objective.metric),
            **(scores_on_test(result) if same else {}),
        }

    def status(self, snapshot: StudySnapshot) -> StudySummary:
        """Per phase: state, trial counts, grid coverage, best; and the winner with its test accuracy."""
        phases = [view.status() for view in snapshot.views]
        result = snapshot.result
        complete = bool(phases) and all(p["state"] == "complete" for p in phases) and result is not None \
            and not result.get("partial")  # a time box's result: the completing run scores the winner again
        counted = [p["examples"] for p in phases if p["examples"] is not None]
        return StudySummary(study=self.spec.name, storage=mask_url(self.url), complete=complete, phases=phases,
                            best=self.best(snapshot), examples=sum(counted) if counted else None,
                            paused_runs=self._paused_runs(snapshot.views, phases))

    def _paused_runs(self, views: list[PhaseView], phases: list[dict[str, Any]]) -> PausedRuns | None:
        """The disk the halving phases' paused runs take (``paused_runs`` in each such phase's status too), and
        where; nothing without any."""
        folder, total = runs_folder(self.url), 0
        for view, status in zip(views, phases):
            if view.phase.schedule is not None and status["study_name"]:
                status["paused_runs"] = disk_use(folder / status["study_name"])
                total += status["paused_runs"]
        return PausedRuns(bytes=total, folder=str(folder)) if total else None

    def trials(self, layout: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every trial of every phase: phase, number, state, value, params, duration and bookkeeping. The first call
        reads them whole; later ones read only the trials changed since."""
        layout = layout if layout is not None else self.phases.layout.read()
        rows = []
        for phase in self.spec.phases:
            record = self.phases.layout.record(phase, layout) if layout else None
            if record is not None:
                rows.extend(self._phase_trials(phase, record["study"]))
        return rows

    def _phase_trials(self, phase: PhaseSpec, study_name: str) -> list[dict[str, Any]]:
        now = self.store.now()
        known = self._trials.get(study_name)
        if known is not None:  # caught up: the trials changed since, read whole in a few queries
            changed = self.store.rows(known.study_id, since=known.seen - CATCH_UP_SLACK,
                                      after_id=max(known.rows, default=0))
            for trial in self.store.frozen_trials([row.trial_id for row in changed]):
                known.rows[trial_id_of(trial)] = _trial_row(phase.name, study_name, trial)
            if self.store.state_counts(known.study_id) != +Counter(row["state"] for row in known.rows.values()):
                known = None  # a change the catch-up missed (see PhaseView.refresh): read again whole
        if known is None:
            known = self._trials[study_name] = self._read_whole(phase, study_name)
        known.seen = now
        return [dict(row) for row in sorted(known.rows.values(), key=lambda row: row["number"])]

    def _read_whole(self, phase: PhaseSpec, study_name: str) -> _PhaseTrials:
        known = _PhaseTrials(self.store.study_id(study_name))
        study = optuna.load_study(study_name=study_name, storage=self.store.storage)
        for trial in study.get_trials(deepcopy=False):
            known.rows[trial_id_of(trial)] = _trial_row(phase.name, study_name, trial)
        return known

    def report(self, data: Any, snapshot: StudySnapshot, retrain: bool = True, full: bool = True,
               retraining: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> StudyReport | None:
        """Plain data for plots and summaries; the best trial's curves and model from its kept model, or trained
        again.

        ``full`` False leaves out what only plots need (every trial's row, parameter importances). ``retraining``:
        the context the retraining runs in (the driver's: a signal ends it at once), not the storage reads."""
        from hpsearch.engine.training import train_once

        if snapshot.layout is None:
            return None
        best = self.best(snapshot)
        best_result, failure, trained_again = None, None, None
        if best is not None and retrain:
            view, row = self._best_row(snapshot)
            kept = (self.winner.take(Trial.of(row.trial_id, view.record["study"], best["params"], best["seed"]))
                    if self.winner is not None else "no kept winner is looked for")
            if isinstance(kept, str):  # trained again; the user's trainable may fail where it succeeded before
                trained_again = kept
                with retraining():
                    best_result, failure = users_failure(
                        "retraining the winner",
                        lambda: train_once(self.spec, data, best["params"], seed=best["seed"]))
            else:
                best_result = kept
        spaces: dict[str, dict[str, bool]] = {}
        importances: dict[str, dict[str, float]] = {}
        for view in snapshot.views:
            phase, record = view.phase, view.record
            if record is None:
                continue
            spaces[phase.name] = ({name: p.log for name, p in phase.space.items()} if phase.space else
                                  {name: _looks_logarithmic(values) for name, values in (record["grid"] or {}).items()
                                   if len(values) > 1})
            importances[phase.name] = _importances(self.phases.load(phase, record)) if full else {}
        return StudyReport(
            study=self.spec.name, metric=self.spec.objective.metric, direction=self.spec.objective.direction,
            trials=self.trials(snapshot.layout) if full else [], spaces=spaces, importances=importances, best=best,
            best_result=best_result, best_fragment=best_fragment(self.spec, best) if best else None,
            summary=self.status(snapshot), failure=failure, trained_again=trained_again,
        )


def _trial_row(phase: str, study_name: str, t: FrozenTrial) -> dict[str, Any]:
    return {
        "phase": phase, "number": t.number, "state": t.state.name,
        "value": t.value if t.state == TrialState.COMPLETE else None,
        "params": decode_params(t.params),
        "duration_seconds": t.duration.total_seconds() if t.duration else None,
        "point": t.user_attrs.get("point"), "attempt": t.user_attrs.get("attempt"),
        "seed": t.user_attrs.get("seed"), "failure": t.user_attrs.get("failure"),
        "examples": t.user_attrs.get(EXAMPLES), "device": t.user_attrs.get(DEVICE),
        "metrics": t.user_attrs.get("metrics"), "traceback": t.user_attrs.get("traceback"),
        "epoch_history": t.user_attrs.get("epoch_history"), "optuna_study": study_name,
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
    }


def _looks_logarithmic(values: list[Any]) -> bool:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) == len(values) and min(numbers) > 0 and max(numbers) / min(numbers) >= 100


def _importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the searched parameters; empty when too few trials vary."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # a single distinct value, or no parameter varies
        return {}

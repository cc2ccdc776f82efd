"""What a study has found: per-phase views kept up to date incrementally, and status, best, trials and reports.

A :class:`PhaseView` holds a phase's trials as light rows. The driver updates it with its own results as they happen
and catches up with other processes' trials on the heartbeat's cadence, reading only trials created, started or
finished since its last look; so progress, best-so-far and ETA cost nothing per trial, whatever the study's size.
The read-only commands (status, best, export, report) build views from one snapshot of each phase.
"""

from __future__ import annotations

import contextlib
import datetime
import math
from collections import Counter
import warnings
from typing import Any, Callable, ContextManager

import optuna
from optuna.trial import TrialState

from hpsearch.backends.base import metric_on_test, scores_on_test
from hpsearch.engine.listener import StudyReport
from hpsearch.engine.phases import Phases
from hpsearch.engine.training import resolved_config
from hpsearch.errors import users_failure
from hpsearch.files import disk_use
from hpsearch.search import grid as grids
from hpsearch.search.ladders import Work, not_promoted
from hpsearch.spec.build import best_fragment
from hpsearch.spec.models import PhaseSpec, StudySpec
from hpsearch.storage.connections import runs_folder
from hpsearch.storage.records import EXAMPLES, FINISHED_STATES, INTERRUPTED, LADDER_STOPPED, counts_as_failure, decode_params
from hpsearch.storage.trialstore import Row, TrialStore
from hpsearch.storage.urls import mask_url

__all__ = ["PhaseView", "Results"]

ETA_WINDOW = 10  # trials: the most an ETA's pace is measured over (a fifth of those ended, at least 3)
NOT_PROMOTED = not_promoted(0).rsplit(" ", 1)[0]  # "not promoted at": the reason's words before the budget
CATCH_UP_SLACK = datetime.timedelta(seconds=120)  # re-read this much before the last look: clocks and commits lag


class PhaseView:
    """The trials of one phase, as rows; ``total`` is the number of points (None for TPE, which counts trials).

    Counts, coverage, failures per point, best and mean duration are kept as rows arrive, so :meth:`status` costs
    nothing per trial whatever the size of the phase.
    """

    def __init__(self, phase: PhaseSpec, store: TrialStore | None, record: dict[str, Any] | None,
                 direction: str, total: int | None) -> None:
        self.phase = phase
        self.store = store
        self.record = record
        self.study_id = store.storage.get_study_id_from_name(record["study"]) if store and record else None
        self.direction = direction
        self.total = total
        self._seen: datetime.datetime | None = None
        self._work: Work | None = None  # see set_work
        self._all_work = 0.0  # the work of every point, and whether halving leaves some untrained (set_work)
        self._halving = False
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[int, Row] = {}
        self._max_id = 0
        self._counts: Counter[str] = Counter()
        self._covered: Counter[int] = Counter()
        self._n_covered = 0
        self._failures: Counter[int] = Counter()
        self._unpointed_failures = 0
        self._failed_rows: dict[int, list[Row]] = {}
        self._seconds = [0.0, 0]
        self.longest = 0.0  # seconds: the longest finished trial
        self._examples = [0, 0]  # training examples processed, by how many trials counted them
        self._best: Row | None = None
        self._finishes: list[tuple[datetime.datetime, int | None]] = []  # trained trials' ends, as they arrived
        self._covered_work = self._trained_work = 0.0  # in budget units (see set_work)

    def refresh(self, full: bool = False) -> None:
        """Catch up with the storage: everything when ``full``, else what changed since the last look."""
        if self.study_id is None:
            return
        now = self.store.now()
        if full or self._seen is None:
            rows = self.store.rows(self.study_id)
            self._reset()
        else:
            rows = self.store.rows(self.study_id, since=self._seen - CATCH_UP_SLACK, after_id=self._max_id)
        for row in rows:
            self.apply(row)
        self._seen = now

    def _account(self, row: Row, sign: int) -> None:
        self._counts[row.state] += sign
        if row.examples is not None:
            self._examples[0] += sign * row.examples
            self._examples[1] += sign
        if row.point is not None:
            if row.state in FINISHED_STATES:
                before = self._covered[row.point] > 0
                self._covered[row.point] += sign
                if self.total is not None and row.point < self.total:
                    self._n_covered += (self._covered[row.point] > 0) - before
                    self._covered_work += ((self._covered[row.point] > 0) - before) * self._work_of(row.point)
            elif counts_as_failure(row.state, row.failure):
                self._failures[row.point] += sign
        elif counts_as_failure(row.state, row.failure):
            self._unpointed_failures += sign  # a TPE trial
        if row.state in FINISHED_STATES and row.seconds is not None:
            self._seconds[0] += sign * row.seconds
            self._seconds[1] += sign
            if sign > 0:  # a finished trial never changes again
                self.longest = max(self.longest, row.seconds)

    def apply(self, row: Row) -> None:
        """Take ``row`` as the trial's state now (a finished trial never changes again)."""
        old = self.rows.get(row.trial_id)
        if old is not None:
            self._account(old, -1)
        self.rows[row.trial_id] = row
        self._account(row, +1)
        if row.complete is not None and (old is None or old.complete is None) and _trained(row):
            self._finishes.append((row.complete, row.point))  # a trial ends once: its first sight counts
            self._trained_work += self._work_of(row.point)
        self._max_id = max(self._max_id, row.trial_id)
        if row.state == "FAIL" and row.point is not None and (old is None or old.state != "FAIL"):
            self._failed_rows.setdefault(row.point, []).append(row)
        if row.state == "COMPLETE" and row.value is not None and math.isfinite(row.value):
            best = self._best
            better = best is None or (row.value > best.value if self.direction == "maximize"
                                      else row.value < best.value)
            if better or (row.value == best.value and row.number < best.number):
                self._best = row

    def best(self) -> Row | None:
        return self._best

    def replaced(self, point: int | None, number: int) -> Row | None:
        """The latest earlier failed trial of ``point``, which trial ``number`` retries."""
        earlier = [r for r in self._failed_rows.get(point, []) if r.number < number] if point is not None else []
        return max(earlier, key=lambda r: r.number) if earlier else None

    def set_work(self, work: Work) -> None:
        """What the phase's points cost to train (see :func:`hpsearch.search.ladders.work`), for :meth:`eta_seconds`;
        without it every point counts one unit."""
        self._work = work
        self._all_work = sum(work.of_point[:self.total]) if self.total is not None else 0.0
        self._halving = work.expected < sum(work.of_point)
        self._covered_work = sum(self._work_of(point) for point, n in self._covered.items()
                                 if n > 0 and self.total is not None and point < self.total)
        self._trained_work = sum(self._work_of(point) for _, point in self._finishes)

    def _work_of(self, point: int | None) -> float:
        work = self._work
        return work.of_point[point] if work is not None and point is not None and point < len(work.of_point) else 1.0

    def eta_seconds(self) -> float | None:
        """Seconds until the phase's last trial ends, at the pace its trials (every process's) have been ending
        lately: the training left, in budget units, times the seconds a unit took over the last few trials. Trials
        that train nothing (not promoted, not run) are neither work left nor pace."""
        work = self._work
        if self.total is None:  # TPE: trials
            left = float(self.phase.n_trials - self._counts["COMPLETE"] - self._counts["PRUNED"])
        elif work is not None and self._halving:  # halving: its survivors' training only
            left = work.expected - self._trained_work
        elif work is not None:
            left = self._all_work - self._covered_work
        else:
            left = float(self.total - self._n_covered)
        if left <= 0 and self.total is not None and self._n_covered < self.total and self._finishes:
            left = self._trained_work / len(self._finishes)  # more trained than expected (retries): a trial's worth
        pace = self._seconds_per_unit()
        return None if left <= 0 or pace is None else left * pace

    def _seconds_per_unit(self) -> float | None:
        """Seconds per budget unit over the phase's last trained trials: from the end of the first of them to the
        end of the last, over the work of the others (every process's, so workers in parallel count as such)."""
        window = max(3, min(ETA_WINDOW, len(self._finishes) // 5))
        recent = sorted(self._finishes[-2 * window:], key=lambda pair: pair[0])[-(window + 1):]
        if len(recent) >= 2:
            seconds = (recent[-1][0] - recent[0][0]).total_seconds()
            units = sum(self._work_of(point) for _, point in recent[1:])
            if seconds > 0 and units > 0:
                return seconds / units
        total, n = self._seconds
        if not n or not self._finishes:
            return None
        return total / n / (self._trained_work / len(self._finishes) or 1.0)  # one trial: its own length

    def status(self) -> dict[str, Any]:
        phase = self.phase
        status: dict[str, Any] = {"phase": phase.name, "sampler": phase.sampler, "state": "pending",
                                  "study_name": self.record["study"] if self.record else None,
                                  "complete": self._counts["COMPLETE"], "pruned": self._counts["PRUNED"],
                                  # failures that stand: not those a retry of the point has since made good
                                  "failed": self._unpointed_failures + sum(
                                      n for point, n in self._failures.items() if not self._covered[point]),
                                  "failed_trials": self._counts["FAIL"], "running": self._counts["RUNNING"],
                                  "waiting": self._counts["WAITING"], "done": 0, "total": self.total,
                                  "best_value": None, "best_trial": None, "failed_points": [],
                                  "grid": self.record.get("grid") if self.record else None,
                                  # what the phase cost: training examples processed (None: not counted)
                                  "examples": self._examples[0] if self._examples[1] else None}
        if self.record is None:
            return status
        if phase.sampler == "tpe":
            status["done"] = status["complete"] + status["pruned"]
            done = status["done"] >= phase.n_trials
        else:
            covered = self._n_covered
            status["done"] = covered
            status["failed_points"] = sorted(p for p, n in self._failures.items()
                                             if n > phase.max_retries and not self._covered[p] and p < self.total)
            done = covered + len(status["failed_points"]) >= self.total
        if self._best is not None:
            status["best_value"], status["best_trial"] = self._best.value, self._best.number
        status["state"] = "complete" if done and not status["running"] else "running" if self.rows else "pending"
        if not done and self.rows and not status["running"]:
            status["state"] = "incomplete"
        return status


def _trained(row: Row) -> bool:
    """Whether a finished trial trained (a rung halving did not promote, or one a failure below left, did not)."""
    return not row.failure or not (row.failure.startswith(NOT_PROMOTED) or row.failure in (LADDER_STOPPED,
                                                                                            INTERRUPTED))


def _total(phase: PhaseSpec, record: dict[str, Any] | None) -> int | None:
    """The phase's points (trials for random and TPE); a derived grid counts once it was derived."""
    if record is not None and record.get("grid") is not None:
        return grids.phase_size(phase.model_copy(update={"grid": record["grid"]}))
    return grids.phase_size(phase)


class Results:
    """Status, best, trials and reports of one study, from snapshots of its phases."""

    def __init__(self, spec: StudySpec, url: str, phases: Phases) -> None:
        self.spec = spec
        self.url = url
        self.phases = phases
        self.store = phases.store

    def view(self, phase: PhaseSpec, layout: dict[str, Any] | None, refresh: bool = True) -> PhaseView:
        record = self.phases.layout.record(phase, layout) if layout else None
        view = PhaseView(phase, self.store, record, self.spec.objective.direction, _total(phase, record))
        if refresh:
            view.refresh(full=True)
        return view

    def stored_result(self, layout: dict[str, Any] | None) -> dict[str, Any] | None:
        result = self.phases.layout.table.get(self.spec.name, "result")
        if not result or not layout or result.get("generation") != layout.get("generation"):
            return None  # none yet, or one of a study since restarted with --force-new-phase
        return result

    def best_of(self, views: list[PhaseView], layout: dict[str, Any] | None) -> dict[str, Any] | None:
        """The best trial over all phases, with everything needed to train it again."""
        found = [(view, view.best()) for view in views]
        found = [(view, row) for view, row in found if row is not None]
        if not found:
            return None
        pick = max if self.spec.objective.direction == "maximize" else min
        view, row = pick(found, key=lambda pair: pair[1].value)
        trial = self.store.storage.get_trial(row.trial_id)
        result = self.stored_result(layout) or {}
        same = result.get("phase") == view.phase.name and result.get("trial") == row.number
        params = decode_params(trial.params)
        return {
            "phase": view.phase.name, "trial": row.number, "value": row.value,
            "metric": self.spec.objective.metric, "params": params,
            "config": resolved_config(self.spec, params), "seed": trial.user_attrs.get("seed"),
            "data_fingerprint": result.get("data_fingerprint") if same else None,
            "test_failure": result.get("failure") if same else None,
            # the winner's scores on the test split (test_acc, test_loss, ...), measured once at the study's end or a
            # time box's
            "test_metric": metric_on_test(self.spec.objective.metric),
            **(scores_on_test(result) if same else {}),
        }

    def status(self, views: list[PhaseView] | None = None, layout: dict[str, Any] | None = None) -> dict[str, Any]:
        """Per phase: state, trial counts, grid coverage, best; and the winner with its test accuracy."""
        if views is None:
            layout = self.phases.layout.read()
            views = [self.view(p, layout) for p in self.spec.phases]
        phases = [view.status() for view in views]
        result = self.stored_result(layout)
        complete = bool(phases) and all(p["state"] == "complete" for p in phases) and result is not None \
            and not result.get("partial")  # a time box's result: the completing run scores the winner again
        counted = [p["examples"] for p in phases if p["examples"] is not None]
        return {"study": self.spec.name, "storage": mask_url(self.url), "complete": complete,
                "phases": phases, "best": self.best_of(views, layout), "examples": sum(counted) if counted else None,
                **self._paused_runs(views, phases)}

    def _paused_runs(self, views: list[PhaseView], phases: list[dict[str, Any]]) -> dict[str, Any]:
        """The disk the halving phases' paused runs take (``paused_runs`` in each such phase's status too), and
        where; nothing without any."""
        folder, total = runs_folder(self.url), 0
        for view, status in zip(views, phases):
            if view.phase.schedule is not None and status["study_name"]:
                status["paused_runs"] = disk_use(folder / status["study_name"])
                total += status["paused_runs"]
        return {"paused_runs": {"bytes": total, "folder": str(folder)}} if total else {}

    def best(self) -> dict[str, Any] | None:
        layout = self.phases.layout.read()
        return self.best_of([self.view(p, layout) for p in self.spec.phases], layout)

    def trials(self) -> list[dict[str, Any]]:
        """Every trial of every phase: phase, number, state, value, params, duration and bookkeeping."""
        rows = []
        layout = self.phases.layout.read()
        for phase in self.spec.phases:
            record = self.phases.layout.record(phase, layout) if layout else None
            study = self.phases.load(phase, record) if record else None
            if study is None:
                continue
            for t in study.get_trials(deepcopy=False):
                rows.append({
                    "phase": phase.name, "number": t.number, "state": t.state.name,
                    "value": t.value if t.state == TrialState.COMPLETE else None,
                    "params": decode_params(t.params),
                    "duration_seconds": t.duration.total_seconds() if t.duration else None,
                    "point": t.user_attrs.get("point"), "attempt": t.user_attrs.get("attempt"),
                    "seed": t.user_attrs.get("seed"), "failure": t.user_attrs.get("failure"),
                    "examples": t.user_attrs.get(EXAMPLES),
                    "metrics": t.user_attrs.get("metrics"), "traceback": t.user_attrs.get("traceback"),
                    "epoch_history": t.user_attrs.get("epoch_history"), "optuna_study": study.study_name,
                    "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
                })
        return rows

    def report(self, data: Any, retrain: bool = True, full: bool = True,
               retraining: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> StudyReport | None:
        """Plain data for plots and summaries; retrains the best trial for its curves and model.

        ``full`` False leaves out what only plots need (every trial's row, parameter importances). ``retraining``:
        the context the retraining runs in (the driver's: a signal ends it at once), not the storage reads."""
        from hpsearch.engine.training import train_once

        layout = self.phases.layout.read()
        if layout is None:
            return None
        views = [self.view(p, layout) for p in self.spec.phases]
        best = self.best_of(views, layout)
        best_result, failure = None, None
        if best is not None and retrain:  # the user's trainable may fail where it succeeded before
            with retraining():
                best_result, failure = users_failure(
                    "retraining the winner", lambda: train_once(self.spec, data, best["params"], seed=best["seed"]))
        spaces: dict[str, dict[str, bool]] = {}
        importances: dict[str, dict[str, float]] = {}
        for view in views:
            phase, record = view.phase, view.record
            if record is None:
                continue
            spaces[phase.name] = ({name: p.log for name, p in phase.space.items()} if phase.space else
                                  {name: _looks_logarithmic(values) for name, values in (record["grid"] or {}).items()
                                   if len(values) > 1})
            importances[phase.name] = _importances(self.phases.load(phase, record)) if full else {}
        return StudyReport(
            study=self.spec.name, metric=self.spec.objective.metric, direction=self.spec.objective.direction,
            trials=self.trials() if full else [], spaces=spaces, importances=importances, best=best,
            best_result=best_result, best_fragment=best_fragment(self.spec, best) if best else None,
            summary=self.status(views, layout), failure=failure,
        )


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

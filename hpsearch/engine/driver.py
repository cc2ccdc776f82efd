"""The study driver: runs a spec's phases in order, a trial at a time, until done or out of budget.

The rooms it draws on, each holding one idea:

- :mod:`hpsearch.engine.phases`: which Optuna study serves each phase, created once and atomically; edits refused.
- :mod:`hpsearch.engine.phaserun`: running one phase's trials, from the point queue or Optuna's sampler.
- :mod:`hpsearch.engine.pointqueue`: the exactly-once queue of a random or grid phase's points (claim, reap, heartbeat).
- :mod:`hpsearch.engine.proposals`: a TPE phase's configurations under ASHA, proposed as each starts and stored.
- :mod:`hpsearch.storage.trialstore`: the few statements on Optuna's tables that keep a trial's storage work constant.
- :mod:`hpsearch.engine.trials`: running one trial, storing its end in one transaction, telling the listener.
- :mod:`hpsearch.engine.results`: per-phase views, status, best, trials and reports.
- :mod:`hpsearch.engine.interrupt`: SIGINT/SIGTERM acted on where it is safe.
- :mod:`hpsearch.engine.budget`: the limits of one invocation, and what a run its time box ended says.

Per trial a random or grid phase costs one claim and one result write, whatever the size of the study; progress
comes from an in-memory view of the phase, caught up with other processes on the heartbeat's cadence.

Divergence policy: a NaN or infinite loss ends the trial at once as PRUNED with the reason in its ``failure``
attribute. Pruned trials have no objective value, so a diverged trial is never best, and it is not retried (the same
seed and configuration would diverge again).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import optuna

from hpsearch.data import Dataset
from hpsearch.engine.budget import Budget, all_complete, others_running, time_box_message
from hpsearch.engine.interrupt import Interrupted, Interruption
from hpsearch.engine.listener import StudyListener, StudyReport
from hpsearch.engine.phaserun import PhaseRunner
from hpsearch.engine.phases import Phases
from hpsearch.engine.phaseview import PhaseView, resuming_line
from hpsearch.engine.pointqueue import Heartbeat
from hpsearch.engine.results import Results, StudySnapshot
from hpsearch.engine.summary import StudySummary, TimeBox
from hpsearch.engine.training import load_data, score_test_split
from hpsearch.engine.trials import TrialRunner
from hpsearch.engine.winner import KeptWinner
from hpsearch.errors import SpecError, first_line, users_failure
from hpsearch.spec.build import best_fragment
from hpsearch.spec.checks import check_sizes
from hpsearch.spec.models import PhaseSpec, StudySpec
from hpsearch.storage.connections import dispose_engines, runs_folder, storage_lock
from hpsearch.storage.records import SharedState, StateTable, decode_param, decode_params, encode_param
from hpsearch.storage.trialstore import TrialStore
from hpsearch.storage.urls import StorageError, mask_url

__all__ = ["Budget", "Driver", "Interrupted", "check_run", "SharedState", "StudyListener", "StudyReport",
           "decode_param", "decode_params", "encode_param"]

INTERRUPTED_CLOSE_SECONDS = 0.5  # what tracking may still send after Ctrl-C, before its process is stopped

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _storage_failures(method: Callable[..., Any]) -> Callable[..., Any]:
    """A storage that fails mid-work (disk full, server gone) is a clear StorageError, not a traceback. Every write
    is a transaction, so what was finished stays finished; an unfinished trial is reaped and retried on resume."""
    import sqlalchemy.exc

    @functools.wraps(method)
    def guarded(self: Driver, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
            cause = exc.__cause__ or exc
            reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
            raise StorageError(
                f"storage {mask_url(self.url)!r} failed: {mask_url(reason)[:200]} (disk full or database gone?). "
                "Finished trials are kept; fix it and rerun the same command to resume."
            ) from None

    return guarded


def check_run(spec: StudySpec, only_phase: str | None,
              load: Callable[[], Dataset]) -> tuple[list[PhaseSpec], Dataset]:
    """The phases a run of ``spec`` goes through, and its data (from ``load``), checked without the storage: a run
    refused here (no phases, a phase too big to enqueue, data that do not load, points no trial could train with)
    has created nothing."""
    if not spec.phases:
        raise SpecError(f"{spec.source}: the spec has no phases to run; add 'phases' "
                        "(or use 'hpsearch train' to train the defaults once).")
    phases = [spec.phase(only_phase)] if only_phase else spec.phases
    check_sizes(spec)
    data = load()
    _check_points(spec, phases, len(data.y_train))
    return phases, data


def _check_points(spec: StudySpec, phases: list[PhaseSpec], n: int) -> None:
    """Refuse explicit points no trial could train with: a batch larger than the ``n`` training samples."""
    for phase in phases:
        sizes = (phase.grid or {}).get("batch_size", []) if isinstance(phase.grid, dict) else []
        space = phase.space.get("batch_size")
        if space is not None:
            sizes = space.choices if space.type == "categorical" else [space.high]
        sizes = [*sizes, spec.defaults.get("batch_size", 0)]
        too_big = [s for s in sizes if isinstance(s, (int, float)) and s > n]
        if too_big:
            raise SpecError(f"{spec.source}: phase {phase.name!r}: batch_size {too_big[0]} is larger "
                            f"than the training split ({n} samples).")


class Driver:
    """Runs, inspects and reports one study spec on one storage."""

    def __init__(self, spec: StudySpec, storage_url: str, *, listener: StudyListener | None = None,
                 echo: Callable[[str], None] = print, force_new_phase: bool = False,
                 interruption: Interruption | None = None, data: Dataset | None = None,
                 progress_lines: bool = True) -> None:
        self.spec = spec
        self.url = storage_url
        self.listener = listener or StudyListener()
        self.echo = echo
        self.interruption = interruption or Interruption()
        self._data = data  # loaded when first needed, unless the caller has it already (see check_run)
        try:
            with warnings.catch_warnings(), storage_lock(storage_url, "schema"):
                # under the lock: processes starting together on a fresh database would race creating its tables
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.storage = optuna.storages.RDBStorage(
                    storage_url,
                    heartbeat_interval=spec.heartbeat.interval,
                    grace_period=spec.heartbeat.grace_period,
                    engine_kwargs={"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else None,
                )
        except Exception as exc:  # SQLAlchemy and driver errors vary by database; all mean "cannot use it"
            reason = mask_url(first_line(exc))
            raise StorageError(f"storage {mask_url(storage_url)!r} cannot be opened: {reason}") from None
        self.store = TrialStore(self.storage)
        self.table = StateTable(storage_url, self.storage.engine)
        self.phases = Phases(spec, storage_url, self.storage, self.table, force_new_phase=force_new_phase,
                             echo=echo)
        winner = KeptWinner(runs_folder(storage_url) / f"winner-{spec.name}", spec.trainable,
                            lock=lambda: storage_lock(storage_url, f"{spec.name}:winner"))
        self.results = Results(spec, storage_url, self.phases, winner)
        self._views: dict[str, PhaseView] = {}
        self.heartbeat = Heartbeat(self.store, spec.heartbeat.interval)
        self.runner = TrialRunner(spec, self.store, lambda: self.data, listener=self.listener, echo=echo,
                                  interruption=self.interruption, heartbeat=self.heartbeat, views=self._views,
                                  progress_lines=progress_lines, winner=winner, live_studies=self._live_studies)
        self.phase_runner = PhaseRunner(spec, storage_url, self.store, self.phases, self.runner,
                                        listener=self.listener, echo=echo, interruption=self.interruption)

    def _live_studies(self) -> set[str]:
        """The Optuna studies that serve the spec's phases in the stored layout (one small read)."""
        layout = self.phases.layout.read()
        records = [self.phases.layout.record(phase, layout) for phase in self.spec.phases] if layout else []
        return {record["study"] for record in records if record}

    def close(self) -> None:
        """Stop the heartbeat thread and close this process's connections to the storage (a later call opens them
        again): what a library user's process keeps after a study is nothing."""
        self.heartbeat.close()
        self.storage.engine.dispose()
        dispose_engines(self.url)

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = load_data(self.spec)
        return self._data

    # ---- the read-only questions -------------------------------------------------------------------------------

    @_storage_failures
    def status(self, only_phase: str | None = None) -> StudySummary:
        """Per phase: state, trial counts, grid coverage, best; and the winner with its test accuracy.
        ``only_phase``: what a run of that phase alone checked (the others' definitions may have changed)."""
        self.phases.layout.check_stored([self.spec.phase(only_phase)] if only_phase else self.spec.phases)
        return self.results.status(self.results.snapshot())

    @_storage_failures
    def best(self) -> dict[str, Any] | None:
        """The best trial over all phases, with everything needed to train it again."""
        self.phases.layout.check_stored(self.spec.phases)
        return self.results.best(self.results.snapshot())

    @_storage_failures
    def trials(self) -> list[dict[str, Any]]:
        """Every trial of every phase: phase, number, state, value, params, duration and bookkeeping."""
        self.phases.layout.check_stored(self.spec.phases)
        return self.results.trials()

    @_storage_failures
    def report(self, retrain: bool = True) -> StudyReport | None:
        """Plain data for plots and summaries; the best trial's curves and model from its kept model, or trained
        again."""
        self.phases.layout.check_stored(self.spec.phases)
        return self.results.report(self.data if retrain else None, self.results.snapshot(), retrain=retrain)

    # ---- running -----------------------------------------------------------------------------------------------

    @_storage_failures
    def prepare(self) -> None:
        """Settle, once, which Optuna studies serve the phases: with --force-new-phase, retire every changed phase.
        Workers started afterwards (without the flag) then find nothing changed."""
        self.phases.layout.check_context(self.data.fingerprint)
        self.phases.layout.retire_changed()

    @_storage_failures
    def run(self, budget: Budget | None = None, only_phase: str | None = None) -> StudySummary:
        """Run the phases in order until done or out of budget. Returns the summary (see :meth:`status`)."""
        budget = budget or Budget()
        budget.keeps_winner = self.results.winner is not None and self.results.winner.can_keep
        phases, _ = check_run(self.spec, only_phase, lambda: self.data)
        if self.data.X_test is None and self.spec.trainable.evaluate is not None and not only_phase:
            self.echo(f"warning: {self.spec.source}: the data have no test split, so the winner is scored on no "
                      "held-out rows; set data.num_test to hold some out of the training rows.")
        self.interruption.check()  # each step of the start takes a while under load: a signal need not wait for all
        self.phases.layout.check_context(self.data.fingerprint)
        changed = self.phases.layout.refuse_changes(phases)
        snapshot = self.results.snapshot()  # the one read of the study's trials as rows; caught up from here on
        before = self.results.status(snapshot)
        self.interruption.check()
        finish_failed = bool((before.best or {}).get("test_failure"))  # the user's evaluate: try it again
        if before.complete and not only_phase and not changed and not finish_failed:
            self.echo(f"Study {self.spec.name!r} is already complete: nothing to run.")
            self.listener.on_study_start(self.spec, self.phases.shared(), False)
            self._mend_listener()  # a complete study's MLflow record is mended too, its runs' times kept
            self.listener.on_study_end(before, None)
            return before
        try:  # from the tracking process's start on, every way out closes it
            self.listener.on_study_start(self.spec, self.phases.shared())
            self._mend_listener()
            stopped_in = self._run_phases(phases, budget, snapshot)
            complete = not only_phase and all_complete(self._views.get(phase.name) for phase in self.spec.phases)
            if stopped_in is not None and not budget.box_reached and not complete:
                self.echo(f"Budget reached during phase {stopped_in!r}; rerun the same command to resume.")
            # a time box ends with a result: the winner so far, scored on the test split, by the last
            # process to stop (the trials of others still running may change the winner); a budget spent exactly
            # at the study's last trial ends it as though nothing had stopped it
            last = (budget.box_reached or complete) and not only_phase and not others_running(self._views.values())
            report = None
            snapshot = self.results.caught_up(self._with_live_views(snapshot))
            if not only_phase and (stopped_in is None or last):
                report = self._finalise(snapshot, partial=not complete)
        except KeyboardInterrupt:  # Interrupted too: the user waits for the exit, and the next run mends the rest
            self.listener.close(timeout=INTERRUPTED_CLOSE_SECONDS, quiet=True)
            raise
        except BaseException:
            # a failing run sends what it can in a few seconds; the next run mends the rest
            self.listener.close(timeout=10)
            raise
        summary = self.results.status(self.results.caught_up(snapshot))
        if budget.box_reached:
            # scored: the winner's stored result is the current winner's, by this run, an earlier one or another worker
            best = summary.best or {}
            summary.time_box = TimeBox(seconds=budget.time_box,
                                       scored=best.get("data_fingerprint") is not None and not best.get("test_failure"))
            self.echo(time_box_message(budget, stopped_in, only_phase, summary,
                                       lambda: others_running(self._views.values())))
        if report is not None:
            report.summary = summary
        self._mend_listener()  # trials of workers that died before they could log them
        self.listener.on_study_end(summary, report)
        return summary

    def _mend_listener(self) -> None:
        if not self.listener.wants_trials:
            return
        stored = self.results.trials()
        if stored:
            self.listener.on_existing_trials(stored, {row["phase"]: {"study_name": row["optuna_study"]}
                                                      for row in stored})

    def _run_phases(self, phases: list[PhaseSpec], budget: Budget, snapshot: StudySnapshot) -> str | None:
        """Run ``phases`` in order; the name of the phase the budget ran out in, None when all ran to their end."""
        for phase in phases:
            self.interruption.check()
            study, record, view = self.open_phase(phase, snapshot)
            resuming = resuming_line(phase, view.status())  # a resumed phase says where it stands
            if resuming and self.runner.progress_lines:  # (unless another process shows the study's progress)
                self.echo(resuming)
            self.listener.on_phase_start(phase, {"study_name": study.study_name, "grid": record.get("grid")})
            done = self.phase_runner.run(phase, study, record, view, budget)
            view.refresh()
            self.listener.on_phase_end(phase, view.status())
            if not done:
                return phase.name
        return None

    def open_phase(self, phase: PhaseSpec, snapshot: StudySnapshot) -> tuple[Any, dict[str, Any], PhaseView]:
        """Open ``phase`` as a run does: its Optuna study, its record and its view of ``snapshot``, caught up; the
        view is the one this run keeps up to date and ends with."""
        study, record = self.phases.open(phase)
        view = self.results.current(snapshot.view(phase.name), self.phases.layout.read())
        self._views[phase.name] = view
        return study, record, view

    # ---- the end -----------------------------------------------------------------------------------------------

    def _with_live_views(self, snapshot: StudySnapshot) -> StudySnapshot:
        """``snapshot`` with the views this run kept up to date in place of its own."""
        views = [self._views.get(view.phase.name, view) for view in snapshot.views]
        return StudySnapshot(snapshot.layout, views, snapshot.result)

    def _finalise(self, snapshot: StudySnapshot, partial: bool = False) -> StudyReport | None:
        """Evaluate the winner once on the test split (its kept model, or the winner trained again with its own
        seed where none is kept), store and report the result.

        Once per winner: of several workers finishing together, the first does it and the others return None.
        ``partial``: the study is not complete (a time box); its completion finalises again, for the full report.
        """
        with storage_lock(self.url, f"{self.spec.name}:finalise"):
            self.phases.layout.follow()  # a winner of this spec's generation, stored as that generation's
            snapshot = self.results.caught_up(snapshot)  # under the lock: what another finisher stored
            best = self.results.best(snapshot)
            stored = snapshot.result or {}
            if best is not None and (stored.get("phase"), stored.get("trial")) == (best["phase"], best["trial"]) \
                    and not stored.get("failure") and (partial or not stored.get("partial")):
                return None  # done; a finish that failed (the user's evaluate) is tried again
            report = self.results.report(self.data, snapshot, full=self.listener.wants_report,
                                         retraining=self.interruption.immediate)
            if report is None or report.best is None:
                return report
            best, retrained = report.best, report.best_result
            scores = {}
            if retrained is not None:  # the user's evaluate may fail: the study still ends
                scores, failure = users_failure("scoring the winner on the test split",
                                                lambda: score_test_split(self.spec, self.data, retrained))
                scores, report.failure = scores or {}, report.failure or failure
            if report.failure:
                self.echo(f"warning: {report.failure}; the study ends without the winner's test score.")
            self.phases.layout.follow()  # still this generation after the retraining, before its result is stored
            result = {"phase": best["phase"], "trial": best["trial"], "value": best["value"],
                      "retrained_value": retrained.metrics.get(self.spec.objective.metric) if retrained else None,
                      **({"trained_again": report.trained_again} if report.trained_again else {}),
                      "data_fingerprint": self.data.fingerprint, "generation": self.phases.layout.generation,
                      **({"partial": True} if partial else {}),
                      **scores, **({"failure": report.failure} if report.failure else {})}
            self.table.put(self.spec.name, "result", result)
            report.best = self.results.best(self.results.caught_up(snapshot))
            report.best_fragment = best_fragment(self.spec, report.best)
            return report

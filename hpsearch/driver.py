"""The study driver: runs a spec's phases in order, a trial at a time, until done or out of budget.

The rooms it draws on, each holding one idea:

- :mod:`hpsearch.phases`: which Optuna study serves each phase, created once and atomically; edits refused.
- :mod:`hpsearch.pointqueue`: the exactly-once queue of a random or grid phase's points (claim, reap, heartbeat).
- :mod:`hpsearch.trialstore`: the few statements on Optuna's tables that keep a trial's storage work constant.
- :mod:`hpsearch.trials`: running one trial, storing its end in one transaction, telling the listener.
- :mod:`hpsearch.results`: per-phase views, status, best, trials and reports.
- :mod:`hpsearch.interrupt`: SIGINT/SIGTERM acted on where it is safe.

Per trial a random or grid phase costs one claim and one result write, whatever the size of the study; progress
comes from an in-memory view of the phase, caught up with other processes on the heartbeat's cadence.

Divergence policy: a NaN or infinite loss ends the trial at once as PRUNED with the reason in its ``failure``
attribute. Pruned trials have no objective value, so a diverged trial is never best, and it is not retried (the same
seed and configuration would diverge again).
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from hpsearch import grid as grids
from hpsearch.data import Dataset
from hpsearch.errors import SpecError, users_failure
from hpsearch.formatting import format_duration
from hpsearch.interrupt import Interrupted, Interruption
from hpsearch.ladders import Ladders, check_budget
from hpsearch.listener import StudyListener, StudyReport, TrialInfo
from hpsearch.phases import Phases
from hpsearch.pointqueue import Heartbeat, PointQueue, owner, reap
from hpsearch.records import SEED, SharedState, StateTable, counts_as_failure, decode_param, decode_params, encode_param
from hpsearch.results import PhaseView, Results
from hpsearch.spec import PhaseSpec, StudySpec, best_fragment
from hpsearch.storage import StorageError, mask_url, storage_lock
from hpsearch.training import load_data, score_test_split
from hpsearch.trials import RunningTrial, TrialRunner
from hpsearch.trialstore import Row, TrialStore

__all__ = ["Budget", "Driver", "Interrupted", "SharedState", "StudyListener", "StudyReport",
           "decode_param", "decode_params", "encode_param"]

POLL_SECONDS = 2.0  # how often a process waiting for others' last trials looks again

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class Budget:
    """Limits of one invocation: wall seconds, trials started and a time box. Checked between trials.

    timeout: no trial starts after this many seconds; the study is left for a later run to go on with.
    time_box: seconds within which the run aims to end with a result. A trial starts only while it and the winner's
    retraining still fit, each counted as long as the longest finished trial known (of this run, or stored); once
    the box is reached the study is finalised with the trials it has (the winner retrained and scored on the test
    split), and a later run goes on with it. An estimate, not a bound: a trial longer than all before it overruns.
    """

    timeout: float | None = None
    max_trials: int | None = None
    time_box: float | None = None
    clock: Callable[[], float] = time.monotonic
    started_at: float | None = None
    trials: int = 0
    longest: float = 0.0  # seconds: the longest finished trial known
    box_reached: bool = False  # the time box, and nothing else, stopped the run

    def __post_init__(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock()

    def expect(self, seconds: float) -> None:
        """A finished trial (another worker's, an earlier run's) lasted ``seconds``."""
        self.longest = max(self.longest, seconds)

    def exhausted(self) -> bool:
        if self.max_trials is not None and self.trials >= self.max_trials:
            return True
        if self.timeout is not None and self.elapsed() >= self.timeout:
            return True
        self.box_reached = self.time_box is not None and self.elapsed() + 2 * self.longest >= self.time_box
        return self.box_reached

    def elapsed(self) -> float:
        return self.clock() - self.started_at

    def trials_left(self) -> int | None:
        """How many more trials may start (None: no limit)."""
        return None if self.max_trials is None else max(self.max_trials - self.trials, 0)

    def timed(self, train: Callable[[], Any], trials: int = 1) -> None:
        """Run ``trials`` trials (one, or a ladder's rungs trained as one), counting them and their length."""
        self.trials += trials
        began = self.clock()
        try:
            train()
        finally:
            self.expect(self.clock() - began)


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


class Driver:
    """Runs, inspects and reports one study spec on one storage."""

    def __init__(self, spec: StudySpec, storage_url: str, *, listener: StudyListener | None = None,
                 echo: Callable[[str], None] = print, force_new_phase: bool = False,
                 interruption: Interruption | None = None) -> None:
        self.spec = spec
        self.url = storage_url
        self.listener = listener or StudyListener()
        self.echo = echo
        self.interruption = interruption or Interruption()
        self._data: Dataset | None = None
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
            reason = mask_url(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
            raise StorageError(f"storage {mask_url(storage_url)!r} cannot be opened: {reason}") from None
        self.store = TrialStore(self.storage)
        self.table = StateTable(storage_url, self.storage.engine)
        self.phases = Phases(spec, storage_url, self.storage, self.table, force_new_phase=force_new_phase,
                             echo=echo)
        self.results = Results(spec, storage_url, self.phases)
        self._views: dict[str, PhaseView] = {}
        self._ladders: dict[str, Ladders | None] = {}  # per phase with a budget, its ladders
        self.runner = TrialRunner(spec, self.store, lambda: self.data, listener=self.listener, echo=echo,
                                  interruption=self.interruption,
                                  heartbeat=Heartbeat(self.store, spec.heartbeat.interval), views=self._views)

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = load_data(self.spec)
        return self._data

    # ---- the read-only questions -------------------------------------------------------------------------------

    @_storage_failures
    def status(self) -> dict[str, Any]:
        """Per phase: state, trial counts, grid coverage, best; and the winner with its test accuracy."""
        return self.results.status()

    @_storage_failures
    def best(self) -> dict[str, Any] | None:
        """The best trial over all phases, with everything needed to train it again."""
        return self.results.best()

    @_storage_failures
    def trials(self) -> list[dict[str, Any]]:
        """Every trial of every phase: phase, number, state, value, params, duration and bookkeeping."""
        return self.results.trials()

    @_storage_failures
    def report(self, retrain: bool = True) -> StudyReport | None:
        """Plain data for plots and summaries; retrains the best trial for its curves and model."""
        return self.results.report(self.data if retrain else None, retrain=retrain)

    # ---- running -----------------------------------------------------------------------------------------------

    @_storage_failures
    def prepare(self) -> None:
        """Settle, once, which Optuna studies serve the phases: with --force-new-phase, retire every changed phase.
        Workers started afterwards (without the flag) then find nothing changed."""
        self.phases.check_context(self.data.fingerprint)
        self.phases.retire_changed()

    @_storage_failures
    def run(self, budget: Budget | None = None, only_phase: str | None = None) -> dict[str, Any]:
        """Run the phases in order until done or out of budget. Returns the summary (see :meth:`status`)."""
        budget = budget or Budget()
        if not self.spec.phases:
            raise SpecError(f"{self.spec.source}: the spec has no phases to run; add 'phases' "
                            "(or use 'hpsearch train' to train the defaults once).")
        phases = [self.spec.phase(only_phase)] if only_phase else self.spec.phases
        grids.check_sizes(self.spec)
        self.data  # noqa: B018 - load (and validate) the data before touching the storage
        self._check_points(phases)
        self.phases.check_context(self.data.fingerprint)
        changed = self.phases.refuse_changes(phases)
        before = self.results.status()
        finish_failed = bool((before.get("best") or {}).get("test_failure"))  # the user's evaluate: try it again
        if before["complete"] and not only_phase and not changed and not finish_failed:
            self.echo(f"Study {self.spec.name!r} is already complete: nothing to run.")
            self.listener.on_study_start(self.spec, self.phases.shared(), False)
            self._mend_listener()  # a complete study's MLflow record is mended too, its runs' times kept
            self.listener.on_study_end(before, None)
            return before
        self.listener.on_study_start(self.spec, self.phases.shared())
        self._mend_listener()
        try:
            stopped_in = self._run_phases(phases, budget)
            # a time box ends with a result: the winner so far, retrained and scored on the test split, by the last
            # process to stop (the trials of others still running may change the winner)
            boxed = budget.box_reached and not only_phase and not self._others_running()
            report = self._finalise(partial=not self._study_complete()) if (
                not only_phase and (stopped_in is None or boxed)) else None
        except BaseException:
            # an interrupted or failing run sends what it can in a few seconds; the next run mends the rest
            self.listener.close(timeout=10)
            raise
        summary = self.results.status()
        if budget.box_reached:
            # scored: the winner's stored result is the current winner's, by this run, an earlier one or another worker
            best = summary["best"] or {}
            summary["time_box"] = {"seconds": budget.time_box,
                                   "scored": best.get("data_fingerprint") is not None and not best.get("test_failure")}
            self._say_time_box(budget, stopped_in, only_phase, summary)
        if report is not None:
            report.summary = summary
        self._mend_listener()  # trials of workers that died before they could log them
        self.listener.on_study_end(summary, report)
        return summary

    def _mend_listener(self) -> None:
        stored = self.results.trials()
        if stored:
            self.listener.on_existing_trials(stored, {row["phase"]: {"study_name": row["optuna_study"]}
                                                      for row in stored})

    def _check_points(self, phases: list[PhaseSpec]) -> None:
        """Refuse, before anything runs, explicit points no trial could train with."""
        n = len(self.data.y_train)
        for phase in phases:
            sizes = (phase.grid or {}).get("batch_size", []) if isinstance(phase.grid, dict) else []
            space = phase.space.get("batch_size")
            if space is not None:
                sizes = space.choices if space.type == "categorical" else [space.high]
            sizes = [*sizes, self.spec.defaults.get("batch_size", 0)]
            too_big = [s for s in sizes if isinstance(s, (int, float)) and s > n]
            if too_big:
                raise SpecError(f"{self.spec.source}: phase {phase.name!r}: batch_size {too_big[0]} is larger "
                                f"than the training split ({n} samples).")

    def _say_time_box(self, budget: Budget, stopped_in: str | None, only_phase: str | None,
                      summary: dict[str, Any]) -> None:
        box = budget.time_box or 0.0
        trials = f"{budget.trials} trial{'s' if budget.trials != 1 else ''}"
        head = (f"Time box of {format_duration(box) if box >= 1 else f'{box:g} s'} reached during phase "
                f"{stopped_in!r} after {trials}")
        again = "Rerun the same command to go on with the study."
        if only_phase:
            tail = "; rerun the same command to go on."
        elif summary["complete"]:
            tail = ": every trial has run, and the winner is scored on the test split."
        elif summary["time_box"]["scored"]:
            tail = f": the best trial so far is scored on the test split. {again}"
        elif self._others_running():
            tail = f"; trials of other processes are still running, and the last to stop scores the winner. {again}"
        elif summary["best"] is None:
            tail = f": no trial has finished yet, so there is no winner to score. {again}"
        else:
            tail = f"; the winner could not be scored (see the warning above). {again}"
        self.echo(head + tail)

    def _study_complete(self) -> bool:
        for phase in self.spec.phases:
            view = self._views.get(phase.name)
            if view is None:
                return False
            view.refresh()
            if view.status()["state"] != "complete":
                return False
        return True

    def _others_running(self) -> bool:
        """Trials of other processes are running (this one's trial has ended)."""
        for view in self._views.values():
            view.refresh()
            if view.status()["running"]:
                return True
        return False

    def _run_phases(self, phases: list[PhaseSpec], budget: Budget) -> str | None:
        """Run ``phases`` in order; the name of the phase the budget ran out in, None when all ran to their end."""
        for phase in phases:
            self.interruption.check()
            study, record = self.phases.open(phase)
            view = self.results.view(phase, self.phases.layout())
            budget.expect(view.longest)
            self._views[phase.name] = view
            self.listener.on_phase_start(phase, {"study_name": study.study_name, "grid": record.get("grid")})
            if phase.sampler == "tpe":
                done = self._run_sampled_phase(phase, study, view, budget)
            else:
                done = self._run_points_phase(phase, study, record, view, budget)
            view.refresh()
            self.listener.on_phase_end(phase, view.status())
            if not done:
                if not budget.box_reached:
                    self.echo(f"Budget reached during phase {phase.name!r}; rerun the same command to resume.")
                return phase.name
        return None

    def _reap(self, phase: PhaseSpec, view: PhaseView) -> bool:
        """Fail the phase's trials whose process is gone; True when any was."""
        running = self.store.rows(view.study_id, states=(TrialState.RUNNING,))
        reaped = reap(self.store, view.study_id, self.spec.heartbeat.grace_period, running,
                      self._ladders.get(phase.name))
        for row, reason in reaped:
            row.state, row.failure = "FAIL", reason
            view.apply(row)
            self.echo(f"[{phase.name}] trial {row.number} (point {row.point}) failed: {reason}; "
                      "its point will be retried")
            self.listener.on_trial_reaped(phase, self.runner.describe(row), reason)
        return bool(reaped)

    def _run_points_phase(self, phase: PhaseSpec, study: optuna.Study, record: dict[str, Any], view: PhaseView,
                          budget: Budget) -> bool:
        points = self.phases.points(phase, record)
        ladders = self._ladders[phase.name] = self._phase_ladders(phase, record)
        identity = ladders.of_point if ladders is not None else range(len(points))  # a ladder's rungs share a seed

        def seed_of(point: int) -> int:
            return grids.trial_seed(self.spec.seed, phase.name, identity[point])

        queue = PointQueue(self.store, self.url, view.study_id, study.study_name, points,
                           self.phases.distributions(phase, record), max_retries=phase.max_retries,
                           seed_of=seed_of, order_seed=self.spec.seed, ladders=ladders)
        me = owner()
        self._reap(phase, view)
        queue.reconcile()
        next_look = time.monotonic() + self.spec.heartbeat.interval
        while True:
            self.interruption.check()
            if time.monotonic() >= next_look:  # the heartbeat's cadence: others' dead trials, others' progress
                if self._reap(phase, view):
                    queue.reconcile()
                view.refresh()
                next_look = time.monotonic() + self.spec.heartbeat.interval
            budget.expect(view.longest)
            if budget.exhausted():
                return False
            claimed = queue.claim(me, rungs=budget.trials_left())
            if not claimed:
                if self._reap(phase, view) | bool(queue.reconcile()):
                    continue  # a trial failed since the last look: its retry was just queued
                view.refresh(full=True)
                if view.status()["running"]:
                    self.interruption.wait(POLL_SECONDS)  # another process holds the last points
                    continue
                return True
            rungs = []
            for trial_id, number, point in claimed:
                view.apply(Row(trial_id, number, "RUNNING", None, self.store.now(), None, point, owner=me))
                rungs.append(RunningTrial(phase, view, TrialInfo(trial_id, number, point, points[point],
                                                                 seed_of(point))))
            budget.timed(lambda: self.runner.run(rungs, study), trials=len(rungs))
            if any(counts_as_failure(row.state, row.failure) for row in
                   (view.rows.get(current.info.trial_id) for current in rungs) if row is not None):
                queue.reconcile()  # a failed trial's point goes back in the queue now

    def _phase_ladders(self, phase: PhaseSpec, record: dict[str, Any]) -> Ladders | None:
        """The phase's budget ladders, checked against the trainable (a derived grid's too); None without a
        budget."""
        if phase.budget is None:
            return None
        return check_budget(self.spec, phase, record["grid"], where=f"phase {phase.name!r}")

    def _run_sampled_phase(self, phase: PhaseSpec, study: optuna.Study, view: PhaseView, budget: Budget) -> bool:
        """TPE: trials are sampled one by one from the history, until n_trials are COMPLETE or PRUNED."""
        me = owner()
        while True:
            self.interruption.check()
            self._reap(phase, view)
            view.refresh()
            rows = list(view.rows.values())
            finished = sum(r.state in ("COMPLETE", "PRUNED") for r in rows)
            running = sum(r.state == "RUNNING" for r in rows)
            failures = sum(counts_as_failure(r.state, r.failure) for r in rows)
            if finished >= phase.n_trials:
                return True
            if failures > phase.max_retries * phase.n_trials:
                self.echo(f"[{phase.name}] giving up after {failures} failed trials")
                return True
            budget.expect(view.longest)
            if budget.exhausted():
                return False
            if finished + running >= phase.n_trials:
                self.interruption.wait(POLL_SECONDS)  # others' trials will end the phase
                continue
            trial = self._ask(phase, study, me)
            if trial is None:
                continue
            view.apply(Row(trial._trial_id, trial.number, "RUNNING", None, self.store.now(), None, owner=me))
            params = self._suggest(trial, phase)
            info = TrialInfo(trial._trial_id, trial.number, None, params, trial.user_attrs.get(SEED))
            budget.timed(lambda: self.runner.run([RunningTrial(phase, view, info, optuna_trial=trial)], study))

    def _ask(self, phase: PhaseSpec, study: optuna.Study, me: dict[str, Any]) -> optuna.Trial | None:
        """A new TPE trial, unless the phase's n_trials are already finished or running (under the lock)."""
        with storage_lock(self.url, f"{study.study_name}:claim"):
            trials = study.get_trials(deepcopy=False)
            taken = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) for t in trials)
            if taken >= phase.n_trials:
                return None
            # a resumed phase must not replay its first draws; parallel workers must not draw alike
            parallel = any(t.state == TrialState.RUNNING for t in trials)
            study.sampler = self.phases.sampler(phase, len(trials) * 100_003 + (os.getpid() if parallel else 0))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "heartbeat is meant for optimize": we beat ourselves
                trial = study.ask()
            self.store.own(trial._trial_id, me)
            trial.set_user_attr(SEED, grids.trial_seed(self.spec.seed, phase.name, trial.number))
            return trial

    @staticmethod
    def _suggest(trial: optuna.Trial, phase: PhaseSpec) -> dict[str, Any]:
        params = {}
        for name, p in phase.space.items():
            if p.type == "categorical":
                params[name] = decode_param(trial.suggest_categorical(name, [encode_param(c) for c in p.choices]))
            elif p.type == "int":
                params[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                params[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
        return params

    # ---- the end -----------------------------------------------------------------------------------------------

    def _finalise(self, partial: bool = False) -> StudyReport | None:
        """Retrain the winner with its own seed, evaluate it once on the test split, store and report the result.

        Once per winner: of several workers finishing together, the first does it and the others return None.
        ``partial``: the study is not complete (a time box); its completion finalises again, for the full report.
        """
        with storage_lock(self.url, f"{self.spec.name}:finalise"):
            layout = self.phases.layout()
            best = self.results.best()
            stored = self.results.stored_result(layout) or {}
            if best is not None and (stored.get("phase"), stored.get("trial")) == (best["phase"], best["trial"]) \
                    and not stored.get("failure") and (partial or not stored.get("partial")):
                return None  # done; a finish that failed (the user's evaluate) is tried again
            with self.interruption.immediate():
                report = self.results.report(self.data, full=self.listener.wants_report)
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
            result = {"phase": best["phase"], "trial": best["trial"], "value": best["value"],
                      "retrained_value": retrained.metrics.get(self.spec.objective.metric) if retrained else None,
                      "data_fingerprint": self.data.fingerprint, "generation": layout["generation"],
                      **({"partial": True} if partial else {}),
                      **scores, **({"failure": report.failure} if report.failure else {})}
            self.table.put(self.spec.name, "result", result)
            report.best = self.results.best()
            report.best_fragment = best_fragment(self.spec, report.best)
            return report

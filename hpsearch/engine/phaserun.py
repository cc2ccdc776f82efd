"""Running one phase: its trials, one after another, until the phase is done or the run's budget is spent.

A random or grid phase draws its points from the exactly-once queue (:mod:`hpsearch.engine.pointqueue`), a ladder's
rungs in one claim, and so does a TPE phase under ASHA, its points proposed as each configuration starts
(:mod:`hpsearch.engine.proposals`); a TPE phase without a schedule asks Optuna's sampler for each trial under the
phase's claim lock. Either way the trial itself is :class:`hpsearch.engine.trials.TrialRunner`'s, and trials of
processes that died are reaped on the heartbeat's cadence and retried.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState

from hpsearch.engine.budget import RECENT, Budget
from hpsearch.engine.interrupt import Interruption
from hpsearch.engine.listener import StudyListener, TrialInfo
from hpsearch.engine.pausedruns import KEPT_WAITING, PausedRuns
from hpsearch.engine.phases import Phases, point_params, space_distributions
from hpsearch.engine.phaseview import PhaseView
from hpsearch.engine.pointqueue import HalvingRule, PointQueue, owner, reap
from hpsearch.engine.proposals import ProposedPoints
from hpsearch.engine.trials import RunningTrial, TrialRunner
from hpsearch.search import grid as grids
from hpsearch.search.asha import work as asha_work
from hpsearch.search.ladders import Ladders, Work, ladders
from hpsearch.search.ladders import work as ladder_work
from hpsearch.spec.checks import check_budget, check_proposals, check_rungs, rank_metric
from hpsearch.spec.models import PhaseSpec, StudySpec
from hpsearch.storage.connections import runs_folder, storage_lock
from hpsearch.storage.records import SEED, counts_as_failure, decode_params
from hpsearch.storage.trialstore import Row, TrialStore, trial_id_of

__all__ = ["POLL_SECONDS", "PhaseRunner"]

POLL_SECONDS = 2.0  # how often a process waiting for others' last trials looks again
SEED_SAMPLE = 50  # trials of a resumed grid phase read to tell how its points were seeded


class PhaseRunner:
    """Runs the phases of one spec on one storage, a phase at a time (see :meth:`run`)."""

    def __init__(self, spec: StudySpec, url: str, store: TrialStore, phases: Phases, runner: TrialRunner, *,
                 listener: StudyListener, echo: Callable[[str], None], interruption: Interruption) -> None:
        self.spec, self.url, self.store, self.phases, self.runner = spec, url, store, phases, runner
        self.listener, self.echo, self.interruption = listener, echo, interruption
        self._ladders: dict[str, Ladders | None] = {}  # per phase with a budget, its ladders

    def run(self, phase: PhaseSpec, study: optuna.Study, record: dict[str, Any], view: PhaseView,
            budget: Budget) -> bool:
        """Run the phase's trials; True when the phase is done, False when the budget ran out first."""
        if phase.asks_sampler:
            return self._run_sampled(phase, study, view, budget)
        return self._run_points(phase, study, record, view, budget)

    def reap(self, phase: PhaseSpec, view: PhaseView) -> bool:
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

    # ---- a random or grid phase: the exactly-once queue ----------------------------------------------------------

    def _run_points(self, phase: PhaseSpec, study: optuna.Study, record: dict[str, Any], view: PhaseView,
                    budget: Budget) -> bool:
        points = self._points(phase, record, study)
        proposed = points if isinstance(points, ProposedPoints) else None  # a TPE phase's under ASHA
        found = self._ladders[phase.name] = self._ladders_of(phase, record, points)
        identity = self._seed_identity(phase, points, found, view)

        def seed_of(point: int) -> int:
            return grids.trial_seed(self.spec.seed, phase.name, identity[point])

        paused = self._paused_runs(phase, study, points, found)  # None unless the phase halves its ladders
        asynchronous = paused is not None and phase.schedule.type == "asha"
        budgets = proposed.budgets if proposed is not None else \
            [point.get(found.budget) if found else None for point in points]
        if asynchronous:
            expected, trials = asha_work(len(found.rungs), phase.schedule.rungs(), phase.schedule.reduction_factor)
            view.set_work(Work(ladder_work(found, budgets).of_point, expected, trials))
        else:
            view.set_work(ladder_work(found, budgets,
                                      reduction_factor=phase.schedule.reduction_factor if paused is not None else None,
                                      levels=phase.schedule.levels if paused is not None else None))
        budget.start_phase(phase.name, view.trial_lengths(RECENT))  # by the kinds of trial the work above tells
        halving = None
        if paused is not None:
            rank_by, maximize = rank_metric(self.spec, phase)
            levels = tuple(phase.schedule.levels) if phase.schedule.levels else None

            def fresh() -> None:  # nothing an earlier study of this name left is taken up
                paused.clear()
                if proposed is not None:
                    proposed.forget()

            halving = HalvingRule(phase.schedule.reduction_factor, maximize, rank_by, levels, asynchronous,
                                  on_stop=lambda stopped: self._stopped(phase, view, found, paused, stopped),
                                  on_fresh=fresh, **({"on_start": proposed.propose} if proposed is not None else {}),
                                  keep_waiting=KEPT_WAITING if asynchronous else None,
                                  on_let_go=paused.forget)
        queue = PointQueue(self.store, self.url, view.study_id, study.study_name, points,
                           point_params(phase, record), max_retries=phase.max_retries,
                           seed_of=seed_of, order_seed=self.spec.seed, ladders=found, halving=halving,
                           budgets=budgets if found is not None else None, check_interrupt=self.interruption.check)
        me = owner()
        self.reap(phase, view)
        self.phases.layout.follow()  # before anything is queued in the phase's study
        queue.reconcile()
        next_look = time.monotonic() + self.spec.heartbeat.interval
        while True:
            self.interruption.check()
            if time.monotonic() >= next_look:  # the heartbeat's cadence: others' dead trials, others' progress
                if self.reap(phase, view):
                    queue.reconcile()
                view.refresh()
                next_look = time.monotonic() + self.spec.heartbeat.interval
            budget.keeps_winner = budget.keeps_winner and self.runner.keeps_winners
            if budget.exhausted():
                return False
            self.phases.layout.follow()  # the study was not started afresh with another spec
            claimed = queue.claim(me, rungs=budget.trials_left())
            if not claimed:
                # a trial failed since the last look (its retry is queued now), or one ended a halving level
                if self.reap(phase, view) | bool(queue.reconcile()):
                    continue
                view.refresh(exact=True)  # the phase's end: its counts held against the storage's
                if not queue.open:  # nothing queued or running: no ladder's run is taken up again
                    if paused is not None:
                        paused.clear()
                    return True
                self.interruption.wait(POLL_SECONDS)  # queued since the claim, or running in another process
                continue
            rungs = []
            stored = self.store.user_attr([trial_id for trial_id, _, _ in claimed], SEED)  # what it was queued with
            for trial_id, number, point in claimed:
                view.apply(Row(trial_id, number, "RUNNING", None, self.store.now(), None, point, owner=me))
                rungs.append(RunningTrial(phase, view, TrialInfo(trial_id, number, point, points[point],
                                                                 stored.get(trial_id, seed_of(point))),
                                          paused=paused(found.of_point[point], point) if paused else None))
            budget.timed(lambda: self.runner.run(rungs, study), trials=len(rungs),
                         kind=view.work_of(rungs[-1].info.point))
            if any(counts_as_failure(row.state, row.failure) for row in
                   (view.rows.get(current.info.trial_id) for current in rungs) if row is not None):
                queue.reconcile()  # a failed trial's point goes back in the queue now

    def _points(self, phase: PhaseSpec, record: dict[str, Any], study: optuna.Study) -> Sequence[dict[str, Any]]:
        """The phase's points: a grid's, a random phase's drawn configurations (at each rung), or a TPE phase's under
        ASHA, proposed as it starts each configuration."""
        if phase.sampler != "tpe":
            return self.phases.points(phase, record)
        return ProposedPoints(phase, self.spec.seed, self.phases.shared(), study.study_name,
                              maximize=rank_metric(self.spec, phase)[1])

    def _paused_runs(self, phase: PhaseSpec, study: optuna.Study, points: list[dict[str, Any]],
                     found: Ladders | None) -> PausedRuns | None:
        """Where a halving phase keeps its ladders' runs between levels; None for other phases."""
        if phase.schedule is None or found is None:
            return None
        return PausedRuns(runs_folder(self.url) / study.study_name, found, points)

    def _stopped(self, phase: PhaseSpec, view: PhaseView, found: Ladders, paused: PausedRuns,
                 stopped: dict[int, int]) -> None:
        """Ladders halving did not promote: their paused runs go, the view counts their rungs, and the console
        hears of each level's cut."""
        view.refresh()
        ladders_at: dict[int, set[int]] = {}
        for point, budget in stopped.items():
            ladders_at.setdefault(budget, set()).add(found.of_point[point])
        for budget, stopped_ladders in sorted(ladders_at.items()):
            paused.forget(stopped_ladders)
            rungs = sum(budget_of == budget for budget_of in stopped.values())
            self.echo(f"[{phase.name}] {phase.schedule.type}: {len(stopped_ladders)} ladders not promoted at "
                      f"{phase.budget} {budget}; their {rungs} rungs above end PRUNED")

    def _seed_identity(self, phase: PhaseSpec, points: list[dict[str, Any]], found: Ladders | None,
                       view: PhaseView) -> Sequence[int]:
        """Per point, what its seed derives from: its ladder. In a grid phase without a ``budget`` too, the points
        that differ only in the trainable's budget parameter share a seed, so that a grid's values are the same
        whether or not it trains them as ladders; every other point its own. A phase started before they shared it
        keeps a seed per point (a retried point trains as its first attempt did), and says so."""
        if found is not None:
            return found.of_point
        budget = self.spec.trainable.budget
        if phase.sampler == "grid" and budget is not None and any(budget in point for point in points):
            with contextlib.suppress(ValueError):  # a budget value the trainable refuses: that trial says so
                shared = ladders([self.spec.config(**point) for point in points], budget).of_point
                if not self._seeded_per_point(phase, view, shared):
                    return shared
                self.echo(f"[{phase.name}] this phase started before points that differ only in {budget} shared "
                          "a seed: it keeps a seed per point; rerun with --force-new-phase to start it afresh with "
                          "shared seeds")
        return range(len(points))

    def _seeded_per_point(self, phase: PhaseSpec, view: PhaseView, shared: Sequence[int]) -> bool:
        """Whether the phase's stored trials were seeded a seed per point, not the ``shared`` one: its first trials
        whose two seeds differ tell (one read, whatever the phase's size)."""
        rows = sorted((row for row in view.rows.values() if row.point is not None and shared[row.point] != row.point),
                      key=lambda row: row.number)[:SEED_SAMPLE]
        seeds = self.store.user_attr([row.trial_id for row in rows], SEED)
        return any(seeds.get(row.trial_id) == grids.trial_seed(self.spec.seed, phase.name, row.point) for row in rows)

    def _ladders_of(self, phase: PhaseSpec, record: dict[str, Any], points: list[dict[str, Any]]) -> Ladders | None:
        """The phase's budget ladders, checked against the trainable (a derived grid's once it is known; an explicit
        grid's again, for a spec the Python API was handed without :func:`hpsearch.spec.build.load_spec`; an asha
        phase's configurations, each one ladder); None without a budget."""
        if phase.budget is None:
            return None
        if phase.sampler == "tpe":  # configurations yet to be proposed: each choice they may take is checked
            return check_proposals(self.spec, phase, where=f"phase {phase.name!r}")
        if phase.sampler == "random":
            return check_rungs(self.spec, phase, points, where=f"phase {phase.name!r}")
        return check_budget(self.spec, phase, record["grid"], where=f"phase {phase.name!r}")

    # ---- a TPE phase: Optuna's sampler ----------------------------------------------------------------------------

    def _run_sampled(self, phase: PhaseSpec, study: optuna.Study, view: PhaseView, budget: Budget) -> bool:
        """TPE: trials are sampled one by one from the history, until n_trials are COMPLETE or PRUNED."""
        me = owner()
        budget.start_phase(phase.name, view.trial_lengths(RECENT))
        while True:
            self.interruption.check()
            self.reap(phase, view)
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
            budget.keeps_winner = budget.keeps_winner and self.runner.keeps_winners
            if budget.exhausted():
                return False
            if finished + running >= phase.n_trials:
                self.interruption.wait(POLL_SECONDS)  # others' trials will end the phase
                continue
            trial = self._ask(phase, study, me)
            if trial is None:
                continue
            view.apply(Row(trial_id_of(trial), trial.number, "RUNNING", None, self.store.now(), None, owner=me))
            params = decode_params(trial.params)  # drawn by the sampler as the trial was asked
            info = TrialInfo(trial_id_of(trial), trial.number, None, params, trial.user_attrs.get(SEED))
            budget.timed(lambda: self.runner.run([RunningTrial(phase, view, info, optuna_trial=trial)], study),
                         kind=view.work_of(None))

    def _ask(self, phase: PhaseSpec, study: optuna.Study, me: dict[str, Any]) -> optuna.Trial | None:
        """A new TPE trial, unless the phase's n_trials are already finished or running (under the lock)."""
        with storage_lock(self.url, f"{study.study_name}:claim"):
            self.phases.layout.follow()  # the study was not started afresh with another spec
            trials = study.get_trials(deepcopy=False)
            taken = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) for t in trials)
            if taken >= phase.n_trials:
                return None
            # a resumed phase must not replay its first draws; parallel workers must not draw alike
            parallel = any(t.state == TrialState.RUNNING for t in trials)
            study.sampler = self.phases.sampler(phase, len(trials) * 100_003 + (os.getpid() if parallel else 0))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "heartbeat is meant for optimize": we beat ourselves
                trial = study.ask(fixed_distributions=space_distributions(phase))
            self.store.own(trial_id_of(trial), me)
            trial.set_user_attr(SEED, grids.trial_seed(self.spec.seed, phase.name, trial.number))
            return trial

"""The exactly-once point queue of a random, grid or ASHA phase: enqueue, claim, reap, heartbeat, owner liveness.

Each point is a WAITING trial, enqueued once under a lock all processes share and claimed by one process through the
storage's atomic WAITING -> RUNNING transition (see :mod:`hpsearch.storage.trialstore`). A point is enqueued again only when
it has no trial that is COMPLETE, PRUNED, WAITING or RUNNING and has failed at most ``max_retries`` times. A trial
whose process died (heartbeat lost, or its pid gone on this host) is failed by whoever notices, so its point is
retried; a result that arrives after that is discarded, never counted twice.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from hpsearch.engine.interrupt import hold_signals
from hpsearch.files import process_start
from hpsearch.search.asha import admit
from hpsearch.search.ladders import Halving, Ladders, halve, is_not_promoted, not_promoted
from hpsearch.storage.connections import storage_lock
from hpsearch.storage.records import (ATTEMPT, FAILURE, FINISHED_STATES, HEARTBEAT_LOST, LADDER_STOPPED, NEVER_STARTED,
                              POINT, SEED, WITHDRAWN, WORKER_DIED, counts_as_failure)
from hpsearch.storage.trialstore import Row, TrialStore

__all__ = ["HalvingRule", "Heartbeat", "PointQueue", "owner", "owner_is_dead", "reap"]

ENQUEUE_BATCH = 2000  # trials per transaction when a big grid is enqueued


def _pid_namespace() -> str:
    """This process's host and pid namespace: containers sharing a hostname must not judge each other's pids."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def owner() -> dict[str, Any]:
    """This process, as a trial it claims records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()),
            "pidns": _pid_namespace()}


def owner_is_dead(who: dict[str, Any] | None) -> bool:
    """True when the trial's process ran in this pid namespace and is gone (or its pid was reused)."""
    if not who or who.get("host") != socket.gethostname():
        return False
    if not who.get("pidns") or who.get("pidns") != _pid_namespace():
        return False
    pid = who.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return who.get("start") is not None and process_start(pid) != who.get("start")


class Heartbeat:
    """One thread per process that beats for the trials running now (one, or a ladder's rungs), every ``interval``
    seconds, until :meth:`close`.

    The claim records a trial's first beat; ``beating(*trial_ids)`` covers the trials' run.
    """

    def __init__(self, store: TrialStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._current: tuple[int, ...] = ()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _beat(self) -> None:
        hold_signals()
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is harmless; the grace period absorbs it
                self.store.heartbeat(*self._current)

    @contextlib.contextmanager
    def beating(self, *trial_ids: int) -> Iterator[None]:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="hpsearch-heartbeat", daemon=True)
            self._thread.start()
        self._current = trial_ids
        try:
            yield
        finally:
            self._current = ()

    def close(self) -> None:
        """Stop the thread (a later :meth:`beating` starts another): a library user's process keeps none."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)  # a beat waiting on a busy database ends on its own (a daemon thread)
            self._thread = None


def reap(store: TrialStore, study_id: int, grace_period: float, running: list[Row],
         ladders: Ladders | None = None) -> list[tuple[Row, str]]:
    """Fail the ``running`` trials whose process is gone; returns those this process failed, with the reason.

    Of one process's rungs of one ladder only the lowest was training; the others never ran, and fail as
    ``LADDER_STOPPED``, which uses up no retry.
    """
    if not running:
        return []
    stale = store.stale(study_id)
    now = store.now()
    grace = datetime.timedelta(seconds=grace_period)
    gone = []
    for row in running:
        if row.trial_id in stale:
            gone.append((row, HEARTBEAT_LOST))
        elif owner_is_dead(row.owner):
            gone.append((row, WORKER_DIED))
        elif row.owner is None and row.start is not None and now - row.start > grace:
            gone.append((row, NEVER_STARTED))
    if ladders is not None:  # in one transaction: another reaper must not take a rung above for the one training
        gone = _untrained_rungs(gone, ladders)
        failed = store.fail_together([(row.trial_id, {"failure": reason}) for row, reason in gone])
        return [(row, reason) for row, reason in gone if row.trial_id in failed]
    reaped = []
    for row, reason in gone:
        if store.finish(row.trial_id, TrialState.FAIL, None, {"failure": reason}):
            reaped.append((row, reason))  # else it finished, or another process reaped it first
    return reaped


def _untrained_rungs(gone: list[tuple[Row, str]], ladders: Ladders) -> list[tuple[Row, str]]:
    """``gone`` with the reason of every rung above the lowest of its process and ladder set to LADDER_STOPPED."""
    def ladder_key(row: Row) -> tuple[str, int] | None:
        if row.point is None or row.point >= len(ladders.of_point):
            return None
        return json.dumps(row.owner, sort_keys=True), ladders.of_point[row.point]

    training: dict[tuple[str, int], Row] = {}
    for row, _ in gone:
        key = ladder_key(row)
        if key is not None:
            rungs = ladders.rungs[key[1]]
            if key not in training or rungs.index(row.point) < rungs.index(training[key].point):
                training[key] = row
    return [(row, reason if ladder_key(row) is None or training[ladder_key(row)] is row else LADDER_STOPPED)
            for row, reason in gone]


@dataclass(frozen=True)
class HalvingRule:
    """A halving phase's rule: keep the best 1/reduction_factor at each level, or, ``asynchronous`` (ASHA), promote
    a ladder as soon as it is among the best 1/reduction_factor of those that ended its rung, and start one new
    ladder at a time while there is nothing to promote. ``on_stop(stopped)`` hears of the rungs that just ended
    PRUNED (point: the budget its ladder stopped at), so that what their runs kept between levels can go;
    ``on_fresh()``, under the lock, that the phase has no trial yet; ``on_start(ladder, decided, queued)``, under
    the lock, that ASHA starts ``ladder`` now (a TPE phase proposes its configuration then, from the rungs' values
    ``decided`` and the points ``queued``); ``on_let_go(ladders)``, that ASHA keeps those ladders' paused runs no
    longer (behind the best ``keep_waiting`` waiting at their rung; told at every reconcile)."""

    reduction_factor: int
    maximize: bool  # whether a higher rank_by (or objective) is better
    rank_by: str | None = None  # a metric of the trials' ``metrics``; None: the objective, the trials' value
    levels: tuple[int, ...] | None = None  # the budget values where a level ends; None: at each rung
    asynchronous: bool = False
    on_stop: Callable[[dict[int, int]], None] = lambda stopped: None
    on_fresh: Callable[[], None] = lambda: None
    on_start: Callable[[int, Mapping[int, float | None], Collection[int]], None] = lambda ladder, decided, queued: None
    keep_waiting: int | None = None
    on_let_go: Callable[[Collection[int]], None] = lambda ladders: None


@dataclass
class PointQueue:
    """The queue of one phase's points in one Optuna study."""

    store: TrialStore
    url: str
    study_id: int
    study_name: str
    points: Sequence[dict[str, Any]]  # a TPE phase's are known once proposed (see HalvingRule.on_start)
    params_of: Callable[[dict[str, Any]], dict[str, tuple[Any, BaseDistribution]]]  # a point as a trial's params
    max_retries: int
    seed_of: Callable[[int], int]  # a point's training seed
    order_seed: int  # the seed of the order points are queued in
    ladders: Ladders | None = None  # a phase with a budget: points that train as one
    halving: HalvingRule | None = None  # a phase with ``schedule: halving`` (needs ladders)
    budgets: Sequence[int] | None = None  # with ladders: each point's budget (a TPE phase's points come later)
    check_interrupt: Callable[[], None] = lambda: None  # raises when the run was told to stop (SIGTERM, Ctrl-C)
    open: int = 0  # the phase's trials queued or running at the last reconcile, those it queued included
    _ranks: dict[int, float | None] = field(default_factory=dict)  # complete trial: its rank_by (never changes)
    _first: tuple[int, ...] = ()  # ASHA: the points to queue before any other, in this order

    def reconcile(self) -> int:
        """Enqueue every point that needs a trial (one read of the phase, batched writes); returns how many.
        Afterwards ``open`` counts the phase's queued and running trials: when it is 0, the phase is done, since
        only a running trial's end can make another reconcile queue anything.

        Under the lock, so no two processes enqueue one point. A signal stops it between two batches. Queued trials of points that left the phase (its
        n_trials was lowered) are withdrawn: failed with a reason that uses up no retry. With halving, only the
        rungs the ladders' levels admit are queued, and the rungs of ladders that were not promoted end PRUNED here,
        together, in one transaction.
        """
        with storage_lock(self.url, f"{self.study_name}:points"):
            by_point: dict[int, list[Row]] = {}
            for row in self.store.rows(self.study_id):
                by_point.setdefault(row.point if row.point is not None else -1, []).append(row)
            if self.halving is not None and not by_point:
                self.halving.on_fresh()  # a new phase: nothing left from an earlier study of this name is taken up
            plan = self._halving(by_point) if self.halving is not None else None
            self.open = sum(r.state in ("WAITING", "RUNNING") for point, rows in by_point.items()
                            if point < len(self.points) for r in rows)
            for point, rows in by_point.items():
                if point >= len(self.points):
                    for row in rows:
                        if row.state == "WAITING":
                            self.store.finish(row.trial_id, TrialState.FAIL, None, {"failure": WITHDRAWN},
                                          from_state=TrialState.WAITING)
            batch: list[tuple[dict[str, Any], dict[str, Any]]] = []
            enqueued = 0
            stopped = []
            for point in self._order():
                rows = by_point.get(point, [])
                if any(r.state != "FAIL" for r in rows):
                    continue  # finished, or claimed / queued
                if sum(counts_as_failure(r.state, r.failure) for r in rows) > self.max_retries:
                    continue  # exhausted: reported as failed
                if plan is not None and point not in plan.admitted and point not in plan.stopped:
                    continue  # its ladder's level below is not decided yet
                params = self.params_of(self.points[point])
                attrs = {POINT: point, ATTEMPT: len(rows) + 1, SEED: self.seed_of(point)}
                if plan is not None and point in plan.stopped:
                    stopped.append((params, {**attrs, FAILURE: not_promoted(plan.stopped[point])}))
                    continue
                batch.append((params, attrs))
                if len(batch) == ENQUEUE_BATCH:
                    enqueued += self.store.enqueue(self.study_id, batch)
                    batch = []
                    self.check_interrupt()  # each batch is a transaction: a rerun enqueues the rest, once each
            enqueued += self.store.enqueue(self.study_id, batch)
            if stopped:
                self.store.enqueue(self.study_id, stopped, state=TrialState.PRUNED)
                self.halving.on_stop({attrs[POINT]: plan.stopped[attrs[POINT]] for _, attrs in stopped})
        self.open += enqueued
        return enqueued

    def _halving(self, by_point: dict[int, list[Row]]) -> Halving:
        """Where the phase's halving stands, from its trials: a point is decided once it finished, or failed more
        often than it may."""
        decided: dict[int, float | None] = {}
        complete: dict[int, int] = {}  # point: its complete trial
        for point, rows in by_point.items():
            done = [r for r in rows if r.state in FINISHED_STATES]
            if done:
                decided[point] = done[0].value if done[0].state == "COMPLETE" else None
                if done[0].state == "COMPLETE":
                    complete[point] = done[0].trial_id
            elif sum(counts_as_failure(r.state, r.failure) for r in rows) > self.max_retries:
                decided[point] = None
        if self.halving.rank_by is not None:  # ranked by another metric the trials report: one without it stops
            unread = [trial_id for trial_id in complete.values() if trial_id not in self._ranks]
            metrics = self.store.user_attr(unread, "metrics")  # stored with the trial's end, in one transaction
            for trial_id in unread:
                value = (metrics.get(trial_id) or {}).get(self.halving.rank_by)
                number = isinstance(value, (int, float)) and math.isfinite(value)
                self._ranks[trial_id] = float(value) if number else None
            for point, trial_id in complete.items():
                decided[point] = self._ranks[trial_id]
        budgets = self.budgets
        if not self.halving.asynchronous:
            return halve(self.ladders, budgets, decided, reduction_factor=self.halving.reduction_factor,
                         maximize=self.halving.maximize, levels=self.halving.levels)
        # a rung that ended PRUNED as not promoted never ran: neither a promotion made nor a value of its rung
        never_ran = {point for point, rows in by_point.items() if any(is_not_promoted(r.failure) for r in rows)}
        decided = {point: value for point, value in decided.items() if point not in never_ran}
        queued = {point for point, rows in by_point.items() if 0 <= point < len(self.points)} - never_ran
        waiting = any(row.state == "WAITING" for point, rows in by_point.items() if 0 <= point < len(self.points)
                      for row in rows)  # a point past the phase's end is withdrawn, not waiting
        found = admit(self.ladders, budgets, decided, queued, reduction_factor=self.halving.reduction_factor,
                      maximize=self.halving.maximize, starts=0 if waiting else 1, stopped_before=never_ran,
                      keep_waiting=self.halving.keep_waiting)
        if found.let_go:  # each time: a process reaped after its rung ended may have saved the run since
            self.halving.on_let_go(sorted({self.ladders.of_point[point] for point in found.let_go}))
        # a free process starts a new configuration only when it has nothing to promote
        self._first = found.promote or found.start
        if not found.promote and found.start:
            self.halving.on_start(self.ladders.of_point[found.start[0]], decided, queued)
        return Halving(frozenset(queued | set(self._first)), found.stopped)

    def _order(self) -> Iterator[int]:
        """The order points are queued in: a seeded shuffle (pruners compare against a spread of the grid, and a
        budget stops on a random subset); with ladders, a shuffle of the ladders, each one's rungs together and in
        ascending budget, so that one claim takes a ladder."""
        if self.ladders is None:
            yield from (int(p) for p in np.random.default_rng([self.order_seed, len(self.points)])
                        .permutation(len(self.points)))
            return
        if self.halving is not None and self.halving.asynchronous:  # ASHA's order; then retries, in ladder order
            first = set(self._first)
            yield from self._first
            yield from (point for rungs in self.ladders.rungs for point in rungs if point not in first)
            return
        rungs = self.ladders.rungs
        for ladder in np.random.default_rng([self.order_seed, len(self.points)]).permutation(len(rungs)):
            yield from rungs[int(ladder)]

    def claim(self, who: dict[str, Any], rungs: int | None = None) -> list[tuple[int, int, int]]:
        """(trial id, number, point) of the trials this process now runs: the oldest queued trial and, in a phase of
        ladders, the other queued rungs of its ladder (at most ``rungs`` trials in all), ascending in budget; empty
        when nothing is queued."""
        if self.ladders is None or rungs == 1:
            return self.store.claim(self.study_id, who)
        ladders = self.ladders

        def others(point: int) -> tuple[set[int], int]:
            ladder = ladders.ladder(point)
            k = ladder.index(point)
            rest = [*ladder[k + 1:], *ladder[:k]][:None if rungs is None else rungs - 1]  # the rungs above first
            return set(rest), 2 * len(ladder)  # enqueued together: within a few trials of the first

        claimed = self.store.claim(self.study_id, who, others)
        if len(claimed) > 1:
            position = {point: k for k, point in enumerate(ladders.ladder(claimed[0][2]))}
            claimed.sort(key=lambda trial: position[trial[2]])
        return claimed

"""The exactly-once point queue of a random or grid phase: enqueue, claim, reap, heartbeat, owner liveness.

Each point is a WAITING trial, enqueued once under a lock all processes share and claimed by one process through the
storage's atomic WAITING -> RUNNING transition (see :mod:`hpsearch.trialstore`). A point is enqueued again only when
it has no trial that is COMPLETE, PRUNED, WAITING or RUNNING and has failed at most ``max_retries`` times. A trial
whose process died (heartbeat lost, or its pid gone on this host) is failed by whoever notices, so its point is
retried; a result that arrives after that is discarded, never counted twice.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from hpsearch.records import (ATTEMPT, HEARTBEAT_LOST, NEVER_STARTED, POINT, SEED, WITHDRAWN, WORKER_DIED,
                              counts_as_failure, encode_param)
from hpsearch.storage import storage_lock
from hpsearch.trialstore import Row, TrialStore

__all__ = ["Heartbeat", "PointQueue", "owner", "owner_is_dead", "reap"]

ENQUEUE_BATCH = 2000  # trials per transaction when a big grid is enqueued


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str:
    """This process's host and pid namespace: containers sharing a hostname must not judge each other's pids."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def owner() -> dict[str, Any]:
    """This process, as a trial it claims records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
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
    return who.get("start") is not None and _process_start(pid) != who.get("start")


class Heartbeat:
    """One thread per process that beats for the trial running now, every ``interval`` seconds.

    The claim records a trial's first beat; ``beating(trial_id)`` covers the trial's run.
    """

    def __init__(self, store: TrialStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._current: int | None = None
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while True:
            time.sleep(self.interval)
            trial_id = self._current
            if trial_id is not None:
                with contextlib.suppress(Exception):  # a missed beat is harmless; the grace period absorbs it
                    self.store.heartbeat(trial_id)

    @contextlib.contextmanager
    def beating(self, trial_id: int) -> Iterator[None]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="hpsearch-heartbeat", daemon=True)
            self._thread.start()
        self._current = trial_id
        try:
            yield
        finally:
            self._current = None


def reap(store: TrialStore, study_id: int, grace_period: float, running: list[Row]) -> list[tuple[Row, str]]:
    """Fail the ``running`` trials whose process is gone; returns those this process failed, with the reason."""
    if not running:
        return []
    stale = store.stale(study_id)
    now = store.now()
    grace = datetime.timedelta(seconds=grace_period)
    reaped = []
    for row in running:
        if row.trial_id in stale:
            reason = HEARTBEAT_LOST
        elif owner_is_dead(row.owner):
            reason = WORKER_DIED
        elif row.owner is None and row.start is not None and now - row.start > grace:
            reason = NEVER_STARTED
        else:
            continue
        if store.finish(row.trial_id, TrialState.FAIL, None, {"failure": reason}):
            reaped.append((row, reason))  # else it finished, or another process reaped it first
    return reaped


@dataclass
class PointQueue:
    """The queue of one phase's points in one Optuna study."""

    store: TrialStore
    url: str
    study_id: int
    study_name: str
    points: list[dict[str, Any]]
    distributions: dict[str, BaseDistribution]
    max_retries: int
    seed_of: Callable[[int], int]  # a point's training seed
    order_seed: int  # the seed of the order points are queued in

    def reconcile(self) -> int:
        """Enqueue every point that needs a trial (one read of the phase, batched writes); returns how many.

        Under the lock, so no two processes enqueue one point. Queued trials of points that left the phase (its
        n_trials was lowered) are withdrawn: failed with a reason that uses up no retry.
        """
        with storage_lock(self.url, f"{self.study_name}:points"):
            by_point: dict[int, list[Row]] = {}
            for row in self.store.rows(self.study_id):
                by_point.setdefault(row.point if row.point is not None else -1, []).append(row)
            for point, rows in by_point.items():
                if point >= len(self.points):
                    for row in rows:
                        if row.state == "WAITING":
                            self.store.finish(row.trial_id, TrialState.FAIL, None, {"failure": WITHDRAWN},
                                          from_state=TrialState.WAITING)
            # a seeded shuffle: pruners compare against a spread of the grid, and a budget stops on a random subset
            order = np.random.default_rng([self.order_seed, len(self.points)]).permutation(len(self.points))
            batch: list[tuple[dict[str, Any], dict[str, Any]]] = []
            enqueued = 0
            for point in (int(p) for p in order):
                rows = by_point.get(point, [])
                if any(r.state != "FAIL" for r in rows):
                    continue  # finished, or claimed / queued
                if sum(counts_as_failure(r.state, r.failure) for r in rows) > self.max_retries:
                    continue  # exhausted: reported as failed
                params = {name: (encode_param(value), self.distributions[name])
                          for name, value in self.points[point].items()}
                batch.append((params, {POINT: point, ATTEMPT: len(rows) + 1, SEED: self.seed_of(point)}))
                if len(batch) == ENQUEUE_BATCH:
                    enqueued += self.store.enqueue(self.study_id, batch)
                    batch = []
            enqueued += self.store.enqueue(self.study_id, batch)
        return enqueued

    def claim(self, who: dict[str, Any]) -> tuple[int, int, int] | None:
        """(trial id, number, point) of a trial this process now runs, or None when nothing is queued."""
        return self.store.claim(self.study_id, who)

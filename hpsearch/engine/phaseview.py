"""A phase's trials as light rows, kept up to date incrementally: counts, coverage, best and ETA at no cost per trial.

The driver updates a :class:`PhaseView` with its own results as they happen and catches up with other processes'
trials on the heartbeat's cadence, reading only trials created, started or finished since its last look; so progress,
best-so-far and ETA cost nothing per trial, whatever the study's size.
"""

from __future__ import annotations

import datetime
import math
from collections import Counter
from typing import Any

from hpsearch.search import grid as grids
from hpsearch.search.ladders import Work, not_promoted
from hpsearch.spec.models import PhaseSpec
from hpsearch.storage.records import FINISHED_STATES, INTERRUPTED, LADDER_STOPPED, counts_as_failure
from hpsearch.storage.trialstore import Row, TrialStore

__all__ = ["CATCH_UP_SLACK", "PhaseView", "phase_total", "resuming_line", "shown_total"]

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
        self._lengths: list[tuple[int | None, float]] = []  # trained trials' points and seconds, as they ended
        self._examples = [0, 0]  # training examples processed, by how many trials counted them
        self._best: Row | None = None
        self._finishes: list[tuple[datetime.datetime, int | None]] = []  # trained trials' ends, as they arrived
        self._covered_work = self._trained_work = 0.0  # in budget units (see set_work)

    def refresh(self, full: bool = False, *, exact: bool = False) -> None:
        """Catch up with the storage: everything when ``full``, else what changed since the last look.

        ``exact``: where a decision rests on the view (a phase's end, the study's result), the caught-up counts are
        checked against the storage's, one small query; a change the catch-up missed (a worker's clock behind by
        more than CATCH_UP_SLACK) makes them differ, since a trial's state only moves forward, and the phase is
        read again whole."""
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
        if exact and not full and self.store.state_counts(self.study_id) != +self._counts:
            self.refresh(full=True)

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
            if row.seconds is not None:
                self._lengths.append((row.point, row.seconds))
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

    def trial_lengths(self, last: int) -> dict[float, list[float]]:
        """The seconds of the ``last`` trained trials of each kind (by their work: a rung, a level, a point), as
        they ended, every process's; what a time box estimates the next trial from."""
        lengths: dict[float, list[float]] = {}
        for point, seconds in self._lengths:
            lengths.setdefault(self._work_of(point), []).append(seconds)
        return {kind: seconds[-last:] for kind, seconds in lengths.items()}

    def work_of(self, point: int | None) -> float:
        """A point's training work (see :meth:`set_work`): the kind of trial it is, for :meth:`trial_lengths`."""
        return self._work_of(point)

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
        if phase.asks_sampler:
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


def shown_total(phase: PhaseSpec, status: dict[str, Any]) -> int | None:
    """The phase's size as people read it: its points, or a TPE phase's ``n_trials`` (None: a derived grid not yet
    derived)."""
    return status["total"] if status["total"] is not None or not phase.asks_sampler else phase.n_trials


def resuming_line(phase: PhaseSpec, status: dict[str, Any]) -> str | None:
    """What a phase an earlier run left unfinished says as a run takes it up (None: nothing to say)."""
    if not status["done"] or status["state"] == "complete":
        return None
    running = f", {status['running']} running in other processes" if status["running"] else ""
    return f"[{phase.name}] resuming: {status['done']} of {shown_total(phase, status)} done{running}"


def phase_total(phase: PhaseSpec, record: dict[str, Any] | None) -> int | None:
    """The phase's points (trials for random and TPE); a derived grid counts once it was derived."""
    if record is not None and record.get("grid") is not None:
        return grids.phase_size(phase.model_copy(update={"grid": record["grid"]}))
    return grids.phase_size(phase)

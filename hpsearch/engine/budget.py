"""The limits of one invocation (wall seconds, trials, a time box) and what a run says when its time box ends it."""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from hpsearch.formatting import format_duration

if TYPE_CHECKING:
    from hpsearch.engine.phaseview import PhaseView
    from hpsearch.engine.summary import StudySummary

__all__ = ["Budget", "all_complete", "others_running", "time_box_message"]


RECENT = 9  # trials of a kind whose median estimates the next one: a slow outlier moves it little


@dataclass
class Budget:
    """Limits of one invocation: wall seconds, trials started and a time box. Checked between trials.

    timeout: no trial starts after this many seconds; the study is left for a later run to go on with.
    time_box: seconds within which the run aims to end with a result. A trial starts only while it still fits,
    counted as long as the median of the phase's last few trials of its kind (see :meth:`estimate`), and, where the
    study's end must train the winner again to score it (``keeps_winner`` False), while that retraining fits too,
    counted the same; once the box is reached the study is finalised with the trials it has (the winner scored on the
    test split), and a later run goes on with it. The first trial of a run always starts, so that rerunning the same
    command goes on with the study even when the box is shorter than its trials. An estimate, not a bound: a trial
    may overrun it.
    """

    timeout: float | None = None
    max_trials: int | None = None
    time_box: float | None = None
    clock: Callable[[], float] = time.monotonic
    started_at: float | None = None
    trials: int = 0
    keeps_winner: bool = False  # whether the study's end scores the winner's kept model, not trains it again
    box_reached: bool = False  # the time box, and nothing else, stopped the run
    phase: str | None = None  # the phase whose trials come next
    _lengths: dict[tuple[str | None, Any], deque[float]] = field(default_factory=dict)  # by phase and kind
    _last_estimate: float = 0.0

    def __post_init__(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock()

    def start_phase(self, phase: str, known: Mapping[Any, Sequence[float]] | None = None) -> None:
        """Trials of ``phase`` come next. ``known``: its trials' lengths in seconds stored before this run (an
        earlier run's, other processes'), by kind, as they ended; this run's own trials push them out, oldest first."""
        self.phase = phase
        for kind, seconds in (known or {}).items():
            lengths = self._lengths.setdefault((phase, kind), deque(maxlen=RECENT))
            if not lengths:
                lengths.extend(seconds)

    def estimate(self) -> float:
        """Seconds the next trial is expected to last: the median of the last RECENT trials of each kind of the
        current phase (a rung, a level of a ladder, a point), the longest kind's; before any, the last estimate."""
        medians = [statistics.median(lengths) for (phase, _), lengths in self._lengths.items()
                   if phase == self.phase and lengths]
        if medians:
            self._last_estimate = max(medians)
        return self._last_estimate

    def exhausted(self) -> bool:
        if self.max_trials is not None and self.trials >= self.max_trials:
            return True
        if self.timeout is not None and self.elapsed() >= self.timeout:
            return True
        room = self.estimate() * (1 if self.keeps_winner else 2)
        self.box_reached = self.time_box is not None and self.trials > 0 and self.elapsed() + room >= self.time_box
        return self.box_reached

    def left(self) -> float | None:
        """Seconds left of the time box (None without one)."""
        return None if self.time_box is None else max(self.time_box - self.elapsed(), 0.0)

    def elapsed(self) -> float:
        return self.clock() - self.started_at

    def trials_left(self) -> int | None:
        """How many more trials may start (None: no limit)."""
        return None if self.max_trials is None else max(self.max_trials - self.trials, 0)

    def timed(self, train: Callable[[], Any], trials: int = 1, kind: Any = None) -> None:
        """Run ``trials`` trials (one, or a ladder's rungs trained as one) of the current phase, counting them and
        their length under ``kind`` (see :meth:`estimate`)."""
        self.trials += trials
        began = self.clock()
        try:
            train()
        finally:
            self._lengths.setdefault((self.phase, kind), deque(maxlen=RECENT)).append(self.clock() - began)


def all_complete(views: Iterable[PhaseView | None]) -> bool:
    """Every phase's view (None: a phase this run never opened) says the phase is complete, caught up first."""
    for view in views:
        if view is None:
            return False
        view.refresh()
        if view.status()["state"] != "complete":
            return False
    return True


def others_running(views: Iterable[PhaseView]) -> bool:
    """Trials of other processes are running (this one's trial has ended)."""
    for view in views:
        view.refresh()
        if view.status()["running"]:
            return True
    return False


def _seconds(seconds: float) -> str:
    return format_duration(seconds) if seconds >= 1 else f"{seconds:.2g} s"


def time_box_message(budget: Budget, stopped_in: str | None, only_phase: str | None, summary: StudySummary,
                     others: Callable[[], bool]) -> str:
    """What a run the time box ended says: where it stopped, and whether the winner is scored (``others``: whether
    other processes' trials are still running)."""
    box = budget.time_box or 0.0
    trials = f"{budget.trials} trial{'s' if budget.trials != 1 else ''}"
    estimate = _seconds(budget.estimate())
    room = (f"less than its next trial's expected {estimate}, the median of the phase's recent trials"
            if budget.keeps_winner else f"less than its next trial and the winner's retraining would take, about "
            f"{estimate} each by the median of the phase's recent trials")
    left = budget.left() or 0.0
    head = (f"Time box of {_seconds(box)} reached during phase {stopped_in!r} after {trials}, " +
            (f"{_seconds(left)} before its end ({room})" if left > 0 else
             "past its end (the first trial of a run always starts)"))
    again = "Rerun the same command to go on with the study."
    if only_phase:
        tail = "; rerun the same command to go on."
    elif summary.complete:
        tail = ": every trial has run, and the winner is scored on the test split."
    elif summary.time_box is not None and summary.time_box.scored:
        tail = f": the best trial so far is scored on the test split. {again}"
    elif others():
        tail = f"; trials of other processes are still running, and the last to stop scores the winner. {again}"
    elif summary.best is None:
        tail = f": no trial has finished yet, so there is no winner to score. {again}"
    else:
        tail = f"; the winner could not be scored (see the warning above). {again}"
    return head + tail

"""The limits of one invocation (wall seconds, trials, a time box) and what a run says when its time box ends it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from hpsearch.formatting import format_duration

if TYPE_CHECKING:
    from hpsearch.engine.phaseview import PhaseView
    from hpsearch.engine.summary import StudySummary

__all__ = ["Budget", "all_complete", "others_running", "time_box_message"]


@dataclass
class Budget:
    """Limits of one invocation: wall seconds, trials started and a time box. Checked between trials.

    timeout: no trial starts after this many seconds; the study is left for a later run to go on with.
    time_box: seconds within which the run aims to end with a result. A trial starts only while it and the winner's
    retraining still fit, each counted as long as the longest finished trial known (of this run, or stored); once
    the box is reached the study is finalised with the trials it has (the winner retrained and scored on the test
    split), and a later run goes on with it. The first trial of a run always starts, so that rerunning the same
    command goes on with the study even when the box is shorter than its trials. An estimate, not a bound: that
    first trial may overrun, as may a trial longer than all before it.
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
        self.box_reached = (self.time_box is not None and self.trials > 0
                            and self.elapsed() + 2 * self.longest >= self.time_box)
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


def time_box_message(budget: Budget, stopped_in: str | None, only_phase: str | None, summary: StudySummary,
                     others: Callable[[], bool]) -> str:
    """What a run the time box ended says: where it stopped, and whether the winner is scored (``others``: whether
    other processes' trials are still running)."""
    box = budget.time_box or 0.0
    trials = f"{budget.trials} trial{'s' if budget.trials != 1 else ''}"
    head = (f"Time box of {format_duration(box) if box >= 1 else f'{box:g} s'} reached during phase "
            f"{stopped_in!r} after {trials}")
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

"""The limits of one invocation (``hpsearch.engine.budget``) on a clock the test moves: trials, a timeout, the time
box's room for one more trial and the winner's retraining, and the line a run the box ended says."""

from __future__ import annotations

import pytest

from hpsearch.engine.budget import Budget, time_box_message
from hpsearch.engine.summary import StudySummary, TimeBox


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_trial_budget_counts_the_rungs_trained_as_one():
    budget = Budget(max_trials=3, clock=Clock())
    assert budget.trials_left() == 3 and not budget.exhausted()
    budget.timed(lambda: None, trials=2)  # a ladder's two rungs
    assert budget.trials_left() == 1 and not budget.exhausted()
    budget.timed(lambda: None)
    assert budget.trials_left() == 0 and budget.exhausted() and not budget.box_reached
    assert Budget(clock=Clock()).trials_left() is None


def test_a_timeout_stops_the_next_start_not_the_running_trial():
    clock = Clock()
    budget = Budget(timeout=10.0, clock=clock)

    def trial() -> None:
        clock.now += 12.0  # runs past the timeout: it is not cut short

    budget.timed(trial)
    assert budget.elapsed() == 12.0 and budget.exhausted() and not budget.box_reached


def test_the_time_box_keeps_room_for_one_more_trial_and_the_winner_s_retraining():
    clock = Clock()
    budget = Budget(time_box=100.0, clock=clock)
    assert not budget.exhausted()  # the first trial always starts, however short the box

    def trial() -> None:
        clock.now += 30.0

    budget.timed(trial)
    assert budget.longest == 30.0 and not budget.exhausted()  # 30 + 2 x 30 < 100: one more fits, and the retraining
    budget.expect(40.0)  # another worker's trial took longer: the estimate follows the longest known
    assert budget.exhausted() and budget.box_reached  # 30 + 2 x 40 >= 100


def test_a_trial_that_raises_still_counts_its_length():
    clock = Clock()
    budget = Budget(clock=clock)

    def failing() -> None:
        clock.now += 5.0
        raise RuntimeError("the trainable failed")

    with pytest.raises(RuntimeError):
        budget.timed(failing)
    assert (budget.trials, budget.longest) == (1, 5.0)


def _summary(complete: bool = False, best: dict | None = None, scored: bool = False) -> StudySummary:
    return StudySummary(study="s", storage="sqlite:///s.db", complete=complete, phases=[], best=best,
                        time_box=TimeBox(seconds=60.0, scored=scored))


@pytest.mark.parametrize("summary, others, tail", [
    (_summary(complete=True), False, ": every trial has run, and the winner is scored on the test split."),
    (_summary(best={"value": 0.5}, scored=True), False, ": the best trial so far is scored on the test split. Rerun"),
    (_summary(best={"value": 0.5}), True, "; trials of other processes are still running, and the last to stop"),
    (_summary(), False, ": no trial has finished yet, so there is no winner to score. Rerun"),
    (_summary(best={"value": 0.5}), False, "; the winner could not be scored (see the warning above). Rerun"),
])
def test_what_a_run_the_time_box_ended_says(summary, others, tail):
    budget = Budget(time_box=60.0, clock=Clock())
    budget.timed(lambda: None)
    line = time_box_message(budget, "grid", None, summary, lambda: others)
    assert line.startswith("Time box of 1 min reached during phase 'grid' after 1 trial") and tail in line
    only = time_box_message(budget, "grid", "grid", summary, lambda: others)
    assert only.endswith("after 1 trial; rerun the same command to go on.")

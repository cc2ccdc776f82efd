"""The limits of one invocation (``hpsearch.engine.budget``) on a clock the test moves: trials, a timeout, the time
box's room for the next trial (and the winner's retraining where it is not kept), estimated robustly, and the line a
run the box ended says."""

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


def _trials(budget: Budget, clock: Clock, seconds: list[float], kind: object = None) -> None:
    for length in seconds:
        def trial(length: float = length) -> None:
            clock.now += length

        budget.timed(trial, kind=kind)


def test_the_time_box_keeps_room_for_the_next_trial_and_for_the_winner_s_retraining_where_it_is_not_kept():
    clock = Clock()
    budget = Budget(time_box=100.0, clock=clock)
    assert not budget.exhausted()  # the first trial always starts, however short the box
    _trials(budget, clock, [30.0])
    assert budget.estimate() == 30.0 and not budget.exhausted()  # 30 + 2 x 30 < 100: one more fits, and the retraining
    _trials(budget, clock, [40.0])
    assert budget.exhausted() and budget.box_reached  # 70 + 2 x 35 >= 100
    clocks = Clock(), Clock()
    kept, unkept = (Budget(time_box=100.0, clock=clock, keeps_winner=keeps)
                    for clock, keeps in zip(clocks, (True, False)))
    for budget, clock in zip((kept, unkept), clocks):
        _trials(budget, clock, [30.0, 30.0])
    assert not kept.exhausted()  # 60 + 30 < 100: the winner is kept, room for the next trial only
    assert unkept.exhausted()  # 60 + 2 x 30 >= 100


def test_a_slow_outlier_trial_does_not_end_the_box_early():
    """Trials of 5 s and one of 40 s: the box is filled to within one trial, where the longest trial known would
    have ended it 45 s early."""
    clock = Clock()
    budget = Budget(time_box=100.0, clock=clock, keeps_winner=True)
    _trials(budget, clock, [5.0, 5.0, 40.0])
    while not budget.exhausted():
        _trials(budget, clock, [5.0])
    assert budget.estimate() == 5.0 and budget.elapsed() == 95.0 and budget.trials == 12


def test_the_estimate_is_the_longest_kind_s_median_and_stored_lengths_count_at_a_phase_s_start():
    clock = Clock()
    budget = Budget(time_box=1000.0, clock=clock, keeps_winner=True)
    budget.start_phase("random", {1.0: [2.0, 2.0, 90.0], 3.0: [6.0, 7.0]})  # an earlier run's rungs
    assert budget.estimate() == 6.5  # the longer rung's median
    _trials(budget, clock, [9.0, 9.0, 9.0, 9.0], kind=3.0)  # this run's push the stored out, oldest first
    assert budget.estimate() == 9.0
    budget.start_phase("grid")  # nothing known of the grid yet: the last estimate stands
    assert budget.estimate() == 9.0
    _trials(budget, clock, [1.0])
    assert budget.estimate() == 1.0


def test_a_trial_that_raises_still_counts_its_length():
    clock = Clock()
    budget = Budget(clock=clock)

    def failing() -> None:
        clock.now += 5.0
        raise RuntimeError("the trainable failed")

    with pytest.raises(RuntimeError):
        budget.timed(failing)
    assert (budget.trials, budget.estimate()) == (1, 5.0)


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
    clock = Clock()
    budget = Budget(time_box=60.0, clock=clock, keeps_winner=True)
    _trials(budget, clock, [25.0, 25.0])
    head = ("Time box of 1 min reached during phase 'grid' after 2 trials, 10 s before its end (less than its next "
            "trial's expected 25 s, the median of the phase's recent trials)")
    line = time_box_message(budget, "grid", None, summary, lambda: others)
    assert line.startswith(head) and tail in line
    only = time_box_message(budget, "grid", "grid", summary, lambda: others)
    assert only == f"{head}; rerun the same command to go on."
    clock.now += 20.0
    assert time_box_message(budget, "grid", "grid", summary, lambda: others) == (
        "Time box of 1 min reached during phase 'grid' after 2 trials, past its end (the first trial of a run always "
        "starts); rerun the same command to go on.")
    clock.now -= 20.0
    budget.keeps_winner = False
    assert time_box_message(budget, "grid", "grid", summary, lambda: others).startswith(
        "Time box of 1 min reached during phase 'grid' after 2 trials, 10 s before its end (less than its next trial "
        "and the winner's retraining would take, about 25 s each by the median of the phase's recent trials)")

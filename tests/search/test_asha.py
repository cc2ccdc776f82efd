"""The ASHA rule (``hpsearch.search.asha``) as pure code: rungs, promotions from stored values alone, what a phase of
ladders queues and stops, the rung TPE models and the price of a phase. Simulated pools of processes, finishing rungs
in a random order, hold the rule against its definition."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpsearch.search.asha import Admission, Promotion, admit, model_rung, next_step, rungs, work
from hpsearch.search.ladders import ladders


@pytest.mark.parametrize(("low", "high", "factor", "expected"), [
    (100, 2700, 3, (100, 300, 900, 2700)),
    (100, 3000, 3, (100, 300, 900, 2700, 3000)),  # the top rung trains to max_budget
    (1, 15, 2, (1, 2, 4, 8, 15)),
    (5, 5, 3, (5,)),
])
def test_rungs_grow_by_the_reduction_factor_up_to_the_maximum(low, high, factor, expected):
    assert rungs(low, high, factor) == expected


@pytest.mark.parametrize(("low", "high", "factor", "message"), [
    (0, 10, 3, "0 < min_budget <= max_budget"),
    (20, 10, 3, "0 < min_budget <= max_budget"),
    (1, 10, 1, "reduction_factor must be at least 2"),
    (1.5, 10, 3, "min_budget must be a whole number"),
    (True, 10, 3, "min_budget must be a whole number"),
])
def test_rungs_refuse_what_makes_no_ladder(low, high, factor, message):
    with pytest.raises(ValueError, match=message):
        rungs(low, high, factor)


def step(values, promoted, maximize=True):
    return next_step(values, promoted, reduction_factor=3, maximize=maximize)


def test_a_rung_promotes_its_best_third_once_three_have_ended():
    nothing = [set(), set(), set()]
    assert step([{}, {}, {}], nothing) is None  # start a new configuration
    assert step([{0: 0.5, 1: 0.9}, {}, {}], nothing) is None  # two ended: floor(2 / 3) = 0 go on
    assert step([{0: 0.5, 1: 0.9, 2: 0.7}, {}, {}], nothing) == Promotion(1, 1)
    assert step([{0: 0.5, 1: 0.9, 2: 0.7}, {}, {}], [{1}, set(), set()]) is None  # already on its way
    assert step([{0: 0.5, 1: 0.9, 2: 0.7}, {}, {}], nothing, maximize=False) == Promotion(0, 1)


def test_the_highest_rung_with_a_promotion_goes_first_and_the_top_rung_sends_no_one_on():
    values = [{k: k / 10 for k in range(9)}, {8: 0.9, 7: 0.8, 6: 0.7}, {8: 0.95, 7: 0.1, 6: 0.2}]
    assert step(values, [{8, 7, 6}, set(), {8}]) == Promotion(8, 2)  # rung 1's best, before rung 0's next
    assert step(values, [{8, 7, 6}, {8}, set()]) is None  # rung 2 is the top: nothing above it


def test_a_configuration_that_ended_without_a_value_counts_but_never_goes_on():
    assert step([{0: None, 1: None, 2: 0.1}, {}], [set(), set()]) == Promotion(2, 1)
    assert step([{0: None, 1: None, 2: None}, {}], [set(), set()]) is None


def test_ties_go_to_the_configuration_started_first():
    assert step([{5: 0.5, 3: 0.5, 4: 0.5}, {}], [set(), set()]) == Promotion(3, 1)


def test_tpe_models_the_highest_rung_with_a_value_per_parameter_and_one():
    assert model_rung([10, 4, 1], n_params=3) == 1
    assert model_rung([10, 4, 4], n_params=3) == 2
    assert model_rung([2, 0, 0], n_params=3) == 0  # none has enough: the lowest, where TPE starts at random


def test_the_price_of_a_phase_is_what_each_rung_s_survivors_train_on_from_the_rung_below():
    # 27 configurations to 100, 9 on to 300, 3 on to 900, 1 on to 2700
    assert work(27, (100, 300, 900, 2700), 3) == (27 * 100 + 9 * 200 + 3 * 600 + 1 * 1800, 27 + 9 + 3 + 1)
    assert work(2, (100, 300), 3) == (200, 2)  # none promoted


@settings(max_examples=100, deadline=None)
@given(n_configs=st.integers(1, 40), processes=st.integers(1, 5), depth=st.integers(1, 4),
       data=st.data())
def test_a_pool_of_processes_ends_with_every_rung_s_best_third_promoted(n_configs, processes, depth, data):
    """Processes take the next step whenever one is free and end their rungs in an order the test draws. Every
    promotion was among its rung's best third when it was made, no configuration trains a rung twice, and once
    nothing is left to promote, every rung's best floor(n / 3) of its n went on."""
    value = {(config, rung): data.draw(st.one_of(st.none(), st.floats(0, 1)), label="value")
             for config in range(n_configs) for rung in range(depth)}
    values: list[dict[int, float | None]] = [{} for _ in range(depth)]
    promoted: list[set[int]] = [set() for _ in range(depth)]
    running: list[tuple[int, int]] = []
    started = 0
    trained = set()
    while True:
        while len(running) < processes:
            found = step(values, promoted)
            if found is not None:
                below = values[found.rung - 1]
                best = sorted((c for c, v in below.items() if v is not None), key=lambda c: (-below[c], c))
                assert found.config in best[:len(below) // 3]
                promoted[found.rung - 1].add(found.config)
                running.append((found.config, found.rung))
            elif started < n_configs:
                running.append((started, 0))
                started += 1
            else:
                break  # nothing to do until a running rung ends
        if not running:
            break
        config, rung = running.pop(data.draw(st.integers(0, len(running) - 1), label="ends"))
        assert (config, rung) not in trained
        trained.add((config, rung))
        values[rung][config] = value[config, rung]
    assert started == n_configs
    for rung in range(depth - 1):
        ended = values[rung]
        best = sorted((c for c, v in ended.items() if v is not None), key=lambda c: (-ended[c], c))
        assert set(best[:len(ended) // 3]) <= promoted[rung]
        assert promoted[rung] <= set(best)


def asha_ladders(n_configs: int, depth: int):
    """The points of ``n_configs`` configurations at ``depth`` rungs (budgets 1, 3, 9, ...), point c * depth + r
    being configuration c's rung r, grouped into ladders (ladder c: configuration c)."""
    points = [{"config": config, "num_iters": 3 ** rung} for config in range(n_configs) for rung in range(depth)]
    return ladders(points, "num_iters"), [point["num_iters"] for point in points]


def admitted(found, budgets, decided, queued, starts=1, maximize=True) -> Admission:
    return admit(found, budgets, decided, queued, reduction_factor=3, maximize=maximize, starts=starts)


def test_a_phase_starts_one_configuration_at_a_time_until_a_rung_promotes():
    found, budgets = asha_ladders(4, 3)  # points 0-2: configuration 0's rungs, 3-5: configuration 1's, ...
    assert admitted(found, budgets, {}, set()) == Admission((), (0,), {})
    assert admitted(found, budgets, {}, set(), starts=2) == Admission((), (0, 3), {})
    assert admitted(found, budgets, {0: 0.2, 3: 0.9}, {0, 3, 6}) == Admission((), (9,), {})
    # three ended rung 0: the best (configuration 1) goes on to rung 1, before the last configuration starts
    assert admitted(found, budgets, {0: 0.2, 3: 0.9, 6: 0.5}, {0, 3, 6}) == Admission((4,), (9,), {})


def test_the_rung_below_closes_when_every_configuration_ended_it_and_the_rest_stop_there():
    found, budgets = asha_ladders(4, 3)
    decided = {0: 0.2, 3: 0.9, 6: 0.5, 9: 0.1}
    # configuration 1 on its way to rung 1: rung 0 is closed, the others stop at budget 1
    assert admitted(found, budgets, decided, {0, 3, 6, 9, 4}) == Admission((), (), {1: 1, 2: 1, 7: 1, 8: 1, 10: 1,
                                                                                       11: 1})
    # while configuration 3 has not ended rung 0, configuration 0 may still be among the best floor(4 / 3)
    assert admitted(found, budgets, {0: 0.2, 3: 0.9, 6: 0.5}, {0, 3, 6, 9, 4}).stopped == {}
    # a rung ended without a value stops at once
    assert admitted(found, budgets, {0: None, 3: 0.9}, {0, 3, 6}).stopped == {1: 1, 2: 1}


def test_a_higher_rung_s_promotion_is_queued_first():
    found, budgets = asha_ladders(9, 3)
    rung0 = {3 * config: config / 10 for config in range(9)}  # configuration 8 best, then 7, 6
    # 8, 7 and (promoted early, among the best third of the few ended then) 5 went on to rung 1; 6 has not yet
    queued = set(rung0) | {3 * 8 + 1, 3 * 7 + 1, 3 * 5 + 1}
    decided = {**rung0, 3 * 8 + 1: 0.1, 3 * 7 + 1: 0.3, 3 * 5 + 1: 0.2}
    # rung 1's best (configuration 7) to rung 2 first, then configuration 6 to rung 1
    assert admitted(found, budgets, decided, queued).promote == (3 * 7 + 2, 3 * 6 + 1)
    decided.pop(3 * 5 + 1)  # with two of rung 1 ended, it promotes no one yet
    assert admitted(found, budgets, decided, queued).promote == (3 * 6 + 1,)


@settings(max_examples=100, deadline=None)
@given(n_configs=st.integers(1, 30), processes=st.integers(1, 4), depth=st.integers(1, 4), data=st.data())
def test_a_queue_of_asha_ladders_agrees_with_the_rule_and_ends_every_rung_once(n_configs, processes, depth, data):
    """A queue as a phase keeps it: a free process asks :func:`admit` (new configurations only when nothing is
    queued), queues what it says, and claims the oldest queued rung; rungs end in an order the test draws. The first
    promotion is always the one :func:`next_step` makes; a rung said to stop never runs and stays stopped; at the end
    every rung ran once or stopped at the budget its configuration reached, and every rung's best floor(n / 3) went
    on."""
    found, budgets = asha_ladders(n_configs, depth)
    value = {point: data.draw(st.one_of(st.none(), st.floats(0, 1)), label="value") for point in range(len(budgets))}
    decided: dict[int, float | None] = {}
    queued: list[int] = []  # in the order queued
    waiting: list[int] = []
    running: list[int] = []
    stopped: dict[int, int] = {}
    while True:
        while len(running) < processes:
            now = admitted(found, budgets, decided, set(queued), starts=0 if waiting else 1)
            assert stopped.items() <= now.stopped.items()  # a stopped rung stays stopped, at the same budget
            stopped = now.stopped
            new = [*now.promote, *([] if now.promote else now.start)]
            assert not set(new) & (set(queued) | set(stopped))
            if now.promote:
                config, rung = divmod(now.promote[0], depth)
                values = [{c: decided[c * depth + r] for c in range(n_configs) if c * depth + r in decided}
                          for r in range(depth)]
                promoted = [{c for c in range(n_configs) if c * depth + r + 1 in queued} for r in range(depth)]
                assert next_step(values, promoted, reduction_factor=3, maximize=True) == Promotion(config, rung)
            queued += new
            waiting += new
            if not waiting:
                break  # nothing to do until a running rung ends
            running.append(waiting.pop(0))
        if not running:
            break
        point = running.pop(data.draw(st.integers(0, len(running) - 1), label="ends"))
        decided[point] = value[point]
    assert sorted([*queued, *stopped]) == list(range(len(budgets)))  # each rung ran once or stopped
    for config in range(n_configs):
        ran = [r for r in range(depth) if config * depth + r in decided]
        assert ran == list(range(len(ran))) and ran
        assert {config * depth + r: budgets[config * depth + ran[-1]] for r in range(len(ran), depth)}.items() <= \
            stopped.items()
    for rung in range(depth - 1):
        ended = {c: decided[c * depth + rung] for c in range(n_configs) if c * depth + rung in decided}
        best = sorted((c for c, v in ended.items() if v is not None), key=lambda c: (-ended[c], c))
        went_on = {c for c in range(n_configs) if c * depth + rung + 1 in decided}
        assert set(best[:len(ended) // 3]) <= went_on <= set(best)

"""The ASHA rule (``hpsearch.search.asha``) as pure code: rungs, promotions from stored values alone, the rung TPE
models and the price of a phase. A simulated pool of processes, finishing rungs in a random order, holds the rule
against its definition."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpsearch.search.asha import Promotion, model_rung, next_step, rungs, work


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


@settings(max_examples=200, deadline=None)
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

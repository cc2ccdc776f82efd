"""TPE under ASHA (``hpsearch.engine.proposals``): what TPE proposes from the rungs' values, which rung it models,
that a proposal is stored once and read back by any process, and that one is never skipped."""

from __future__ import annotations

import pytest

from hpsearch.engine.proposals import ProposedPoints
from hpsearch.spec.models import PhaseSpec

RUNGS = (10, 30, 90)  # min_budget 10, max_budget 90, reduction_factor 3


class State:
    """The study's shared values, in memory (the storage's table in a run)."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.puts = 0

    def get(self, key: str) -> object:
        return self.values.get(key)

    def put(self, key: str, value: object) -> None:
        self.values[key] = value
        self.puts += 1


def tpe_phase(n_trials: int = 40, **space: dict) -> PhaseSpec:
    return PhaseSpec(name="tpe", sampler="tpe", n_trials=n_trials, budget="num_iters",
                     schedule={"type": "asha", "reduction_factor": 3, "min_budget": 10, "max_budget": 90},
                     space=space or {"x": {"type": "float", "low": 0.0, "high": 1.0}})


def proposed(state: State | None = None, **space: dict) -> ProposedPoints:
    return ProposedPoints(tpe_phase(**space), 7, state or State(), "study.tpe", maximize=True)


def fill(points: ProposedPoints, n: int, value_at: dict[int, object]) -> dict[int, float | None]:
    """Propose n configurations one after another, each ending the rungs ``value_at`` names with the value that
    function of its x gives; returns every rung's value (point: value)."""
    decided: dict[int, float | None] = {}
    for c in range(n):
        points.propose(c, decided, set(decided))
        x = points[c * len(RUNGS)].get("x")
        for rung, value in value_at.items():
            decided[c * len(RUNGS) + rung] = value(x)
    return decided


def test_a_configuration_is_proposed_at_each_of_its_rungs_and_read_back_by_another_process():
    state = State()
    mine, theirs = proposed(state), proposed(state)
    mine.propose(0, {}, set())
    assert [mine[k]["num_iters"] for k in range(3)] == list(RUNGS)
    assert {mine[k]["x"] for k in range(3)} == {theirs[0]["x"]}  # theirs reads it from the storage
    assert len(mine) == 40 * 3 and mine.budgets[:4] == [10, 30, 90, 10]
    with pytest.raises(LookupError, match="configuration 1 was not proposed yet"):
        theirs[3]


def test_a_proposal_stored_once_is_not_made_again_and_none_is_skipped():
    state = State()
    points = proposed(state)
    points.propose(0, {}, set())
    first, puts = points[0], state.puts
    points.propose(0, {0: 0.5}, {0})  # a process killed before its first rung was queued: the rerun queues it
    assert points[0] == first and state.puts == puts
    with pytest.raises(RuntimeError, match="configuration 2 proposed after only 1"):
        points.propose(2, {}, set())


def test_proposals_are_a_function_of_the_rungs_values_and_the_study_seed():
    def run(seed: int) -> list[float]:
        points = ProposedPoints(tpe_phase(), seed, State(), "study.tpe", maximize=True)
        fill(points, 15, {0: lambda x: -abs(x - 0.8)})
        return [points[c * 3]["x"] for c in range(15)]

    assert run(7) == run(7) != run(8)


def test_after_its_first_draws_tpe_proposes_near_the_best_values_of_the_lowest_rung():
    points = proposed()
    fill(points, 30, {0: lambda x: -abs(x - 0.8)})
    xs = [points[c * 3]["x"] for c in range(30)]
    # two random draws (one parameter, plus one), then TPE: most of its last ten land within 0.15 of 0.8, where
    # random draws put three in ten
    assert sum(abs(x - 0.8) < 0.15 for x in xs[20:]) >= 6, xs


def test_tpe_models_the_highest_rung_with_a_value_per_parameter_and_one():
    """Rung 0 favours x near 0.2, rung 1 (trained longer) near 0.8: once rung 1 holds two values (one parameter,
    plus one), TPE models it and proposes near 0.8."""
    points = proposed()
    decided: dict[int, float | None] = {}
    for c, x in enumerate([0.05, 0.15, 0.25, 0.35, 0.5, 0.6, 0.7, 0.75, 0.85, 0.95]):
        decided[c * 3] = -abs(x - 0.2)
        points._configurations.append({"x": x})
        if x in (0.75, 0.85):
            decided[c * 3 + 1] = -abs(x - 0.8)
    points._state.put(points._key, list(points._configurations))
    points.propose(10, decided, set(decided))
    assert abs(points[30]["x"] - 0.8) < abs(points[30]["x"] - 0.2), points[30]
    lower = proposed()
    lower._state.put(lower._key, list(points._configurations[:10]))
    lower.propose(10, {point: value for point, value in decided.items() if point % 3 == 0}, set(decided))
    assert abs(lower[30]["x"] - 0.2) < abs(lower[30]["x"] - 0.8), lower[30]


def test_a_space_of_lists_and_choices_travels_in_optuna_s_encoding_and_back():
    points = proposed(hidden_sizes={"type": "categorical", "choices": [[32], [64, 64]]},
                      optimizer={"type": "categorical", "choices": ["sgd", "adam"]})
    fill(points, 6, {0: lambda x: 1.0})
    assert all(points[c * 3]["hidden_sizes"] in ([32], [64, 64]) for c in range(6))
    assert all(points[c * 3]["optimizer"] in ("sgd", "adam") for c in range(6))


def test_forget_lets_a_phase_without_trials_start_from_no_proposal():
    state = State()
    points = proposed(state)
    points.propose(0, {}, set())
    points.forget()
    with pytest.raises(LookupError):
        points[0]
    points.propose(0, {}, set())  # as the first again


def test_a_configuration_still_training_at_the_modelled_rung_changes_the_next_proposal():
    """TPE's constant liar: with configuration 20 running, the proposal for 21 is not the one it would be with 20
    unknown to TPE (the same seed and values otherwise)."""
    def after(running: bool) -> float:
        points = proposed()
        decided = fill(points, 20, {0: lambda x: -abs(x - 0.8)})
        points.propose(20, decided, set(decided))
        points.propose(21, decided, set(decided) | ({60} if running else set()))
        return points[63]["x"]

    assert after(running=True) != after(running=False)

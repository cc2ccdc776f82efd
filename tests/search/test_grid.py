from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from hpsearch.search.grid import derive_grid, grid_points, random_points, trial_seed
from hpsearch.spec.models import ParamSpec

SPACE = {
    "hidden_size": ParamSpec(type="int", low=40, high=160, step=20),
    "learning_rate": ParamSpec(type="float", low=1e-5, high=1e-1, log=True),
    "num_iters": ParamSpec(type="categorical", choices=[1000, 2000, 3000]),
    "reg": ParamSpec(type="float", low=0.05, high=0.5),
}


def test_grid_points_enumerate_the_product_in_spec_order():
    points = grid_points({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(points) == 6
    assert points[0] == {"a": 1, "b": "x"} and points[1] == {"a": 1, "b": "y"} and points[-1] == {"a": 2, "b": "z"}


def test_the_assignments_grid_has_288_points():
    grid = {"hidden_size": [60, 80, 100, 120], "num_iters": [1000, 2000, 3000], "batch_size": [100, 200],
            "learning_rate": [0.01, 0.001, 0.0001], "learning_rate_decay": [0.95], "reg": [0.1, 0.15, 0.25, 0.35]}
    assert len(grid_points(grid)) == 288


def test_random_points_are_deterministic_in_range_and_prefix_stable():
    a = random_points(SPACE, 20, study_seed=0, phase="random")
    assert a == random_points(SPACE, 20, study_seed=0, phase="random")
    assert a[:5] == random_points(SPACE, 5, study_seed=0, phase="random")  # raising n_trials extends the list
    assert a != random_points(SPACE, 20, study_seed=1, phase="random")
    for p in a:
        assert p["hidden_size"] in range(40, 161, 20)
        assert 1e-5 <= p["learning_rate"] <= 1e-1 and 0.05 <= p["reg"] <= 0.5
        assert p["num_iters"] in (1000, 2000, 3000)


def test_trial_seeds_depend_on_identity_only():
    assert trial_seed(0, "grid", 3) == trial_seed(0, "grid", 3)
    assert len({trial_seed(0, "grid", k) for k in range(100)}) == 100
    assert trial_seed(0, "grid", 3) != trial_seed(0, "random", 3) != trial_seed(1, "grid", 3)


def test_derived_grid_spans_the_best_trials():
    best = [{"hidden_size": 60, "learning_rate": 1e-3, "num_iters": 2000, "reg": 0.1},
            {"hidden_size": 120, "learning_rate": 1e-2, "num_iters": 3000, "reg": 0.3},
            {"hidden_size": 100, "learning_rate": 1e-4, "num_iters": 2000, "reg": 0.2}]
    grid = derive_grid(SPACE, best, points=3)
    # the midpoint 90 lies between two values of the step-20 lattice from 40: 40 + 20 * round(2.5) = 80 (half to even)
    assert grid["hidden_size"] == [60, 80, 120]
    assert grid["learning_rate"] == [1e-4, 1e-3, 1e-2]  # log-spaced
    assert grid["num_iters"] == [2000, 3000]  # categoricals seen, in the order of the choices
    assert grid["reg"] == [0.1, 0.2, 0.3]


def test_derived_grid_collapses_identical_values():
    grid = derive_grid(SPACE, [{"hidden_size": 80, "learning_rate": 0.01, "num_iters": 1000, "reg": 0.2}] * 2, 4)
    assert grid == {"hidden_size": [80], "learning_rate": [0.01], "num_iters": [1000], "reg": [0.2]}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), k=st.integers(1, 8), points=st.integers(1, 6))
def test_derived_grid_lies_inside_the_space_and_is_deterministic(seed, k, points):
    best = random_points(SPACE, k, study_seed=seed, phase="random")
    grid = derive_grid(SPACE, best, points)
    assert grid == derive_grid(SPACE, best, points)
    for name, values in grid.items():
        param = SPACE[name]
        assert values == sorted(set(values)) or param.type == "categorical"
        if param.type == "categorical":
            assert set(values) <= set(param.choices)
            continue
        assert len(values) <= points
        assert all(param.low <= v <= param.high for v in values)
        seen = [p[name] for p in best]
        assert min(values) >= min(seen) * (1 - 1e-5) - 1e-12 or param.type == "int"
        assert max(values) <= max(seen) * (1 + 1e-5) + 1e-12 or param.type == "int"
        if param.type == "int":
            assert all(isinstance(v, int) and (v - param.low) % param.step == 0 for v in values)
        assert all(math.isfinite(v) for v in values)

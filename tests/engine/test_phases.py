"""How a phase's points are stored as Optuna trials: what each point costs, and that each reads back as it was."""

from __future__ import annotations

import math

import pytest
import sqlalchemy as sa
from hypothesis import example, given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution

import hpsearch
from hpsearch.engine.phases import BOUNDED, GRID_CHOICES, point_params
from hpsearch.search.grid import grid_points
from hpsearch.spec.models import PhaseSpec

TRAINABLE = '''
def train(config, data, *, seed, on_epoch=None):
    return {"val_acc": 0.0}
'''

LONGEST_VALUE = 30  # characters: the longest value (as stored, quotes and escapes included) the grids below hold
# what one parameter of one point may store at most (its distribution's JSON and its value), whatever the grid's size
PARAM_BYTES = GRID_CHOICES * (LONGEST_VALUE + 2) + 128
MAX_POINTS = 2000  # per generated grid, to keep each example about a second


def grid_values(kind: str, count: int, start: int) -> list:
    """``count`` distinct values of one kind, from ``start`` on."""
    made = {
        "int": lambda k: start + 7 * k,
        "big_int": lambda k: 2**60 + start + k,  # beyond what a float holds exactly
        "float": lambda k: (start + k) * 1.000001e-3,
        "str": lambda k: f"v{start + k}",
        "list": lambda k: [start + k, 8],  # as hidden_sizes
        "int_or_float": lambda k: start + k if k % 2 else (start + k) / 4,
    }[kind]
    return [made(k) for k in range(count)]


@st.composite
def grids(draw: st.DrawFn) -> dict[str, list]:
    """One to three parameters of any kind, the first with up to MAX_POINTS values, the grid at most MAX_POINTS
    points."""
    grid, room = {}, MAX_POINTS
    for name in ("a", "b", "c")[:draw(st.integers(1, 3))]:
        count = draw(st.integers(1, room))
        kind = draw(st.sampled_from(["int", "big_int", "float", "str", "list", "int_or_float", "bool"]))
        if kind == "bool":
            count = min(count, 2)
        values = [True, False][:count] if kind == "bool" else grid_values(kind, count, draw(st.integers(-999, 999)))
        grid[name] = values
        room //= count
    return grid


def stored_bytes_per_point(storage: str, study_name: str) -> dict[int, int]:
    """Per trial of the study, the bytes of its param rows: each distribution's JSON and value, as SQLite has them."""
    p, t, s = (sa.table(name, *map(sa.column, columns)) for name, columns in (
        ("trial_params", ("trial_id", "distribution_json", "param_value")), ("trials", ("trial_id", "study_id")),
        ("studies", ("study_id", "study_name"))))
    engine = sa.create_engine(storage)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(p.c.trial_id, sa.func.sum(sa.func.length(p.c.distribution_json)
                                                    + sa.func.length(p.c.param_value)))
                .join(t, t.c.trial_id == p.c.trial_id).join(s, s.c.study_id == t.c.study_id)
                .where(s.c.study_name == study_name).group_by(p.c.trial_id))
            return dict(rows.all())
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def trainable_folder(tmp_path_factory):
    """A trainable without a configuration model, which takes values of any kind (a process imports it once)."""
    folder = tmp_path_factory.mktemp("trainable")
    (folder / "anykind.py").write_text(TRAINABLE)
    return folder


@settings(max_examples=8, deadline=None)
@given(grid=grids())
@example(grid={"a": grid_values("float", 2000, 1)})  # 33 MB stored before each trial's distribution was bounded
@example(grid={"a": grid_values("str", 70, 0), "b": grid_values("int", 40, 3)})
def test_each_grid_point_stores_a_bounded_size_and_reads_back_as_it_was(tmp_path_factory, trainable_folder, grid):
    storage = f"sqlite:///{tmp_path_factory.mktemp('grid') / 'study.db'}"
    spec = {"name": "sizes", "data": {"dataset": "synthetic", "num_train": 40, "num_val": 20},
            "model": {"backend": "anykind:train"}, "tracking": {"enabled": False},
            "objective": {"metric": "val_acc", "direction": "maximize"},
            "phases": [{"name": "grid", "sampler": "grid", "grid": grid}]}

    result = hpsearch.run(spec, storage=storage, base_dir=trainable_folder, max_trials=0, echo=lambda line: None)

    points = grid_points(grid)
    stored = stored_bytes_per_point(storage, "sizes.grid")
    assert len(stored) == len(points) == math.prod(len(values) for values in grid.values())
    assert max(stored.values()) <= len(grid) * PARAM_BYTES
    for trial in result.trials:  # read back as a point trains with it: its type too (1 is not 1.0 is not True)
        point = points[trial["point"]]
        assert {k: (type(v), v) for k, v in trial["params"].items()} == {k: (type(v), v) for k, v in point.items()}


def test_a_phase_recorded_before_params_were_bounded_keeps_every_value_as_a_choice():
    """A resumed phase of an older study enqueues its retries the way its first trials were stored."""
    values = grid_values("float", GRID_CHOICES + 1, 1)
    phase = PhaseSpec(name="grid", sampler="grid", grid={"learning_rate": values})
    old = {"study": "s.grid", "definition": {}, "grid": {"learning_rate": values}}
    point = {"learning_rate": values[3]}
    assert point_params(phase, old)(point) == {"learning_rate": (values[3], CategoricalDistribution(values))}
    assert point_params(phase, {**old, BOUNDED: True})(point) == {
        "learning_rate": (values[3], FloatDistribution(min(values), max(values)))}

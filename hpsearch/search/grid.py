"""The points a phase evaluates, as pure functions of its parameters: no storage, no Optuna.

A random phase is a list of ``n_trials`` points, point k drawn from the space with a generator seeded by the study
seed, the phase and k: the same spec always yields the same points, so a resumed or parallel phase evaluates each
exactly once. A grid phase is the Cartesian product of its grid, in the spec's key order. A derived grid spans the
values the best trials of an earlier phase used.
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any, Iterable, Literal, Mapping, Protocol, Sequence

import numpy as np


__all__ = ["MAX_POINTS", "Param", "derive_grid", "grid_points", "phase_size", "random_points", "sample_point",
           "trial_seed", "with_rungs"]

MAX_POINTS = 1_000_000  # per phase: beyond this, enqueuing alone takes minutes and the study is surely a typo


class Param(Protocol):
    """A parameter's search space, as the spec's ``Param`` describes it."""

    type: Literal["float", "int", "categorical"]
    low: float | None
    high: float | None
    log: bool
    step: float | None
    choices: Sequence[Any] | None


def _phase_key(phase: str) -> int:
    return zlib.crc32(phase.encode())


def trial_seed(study_seed: int, phase: str, point: int) -> int:
    """The training seed of a phase's point: a function of the study seed and the trial's identity only."""
    return int(np.random.SeedSequence([study_seed, _phase_key(phase), point]).generate_state(1)[0])


def grid_points(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values; the last parameter varies fastest."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def _steps(param: Param) -> int:
    """How many steps from low stay within high; a quotient a rounding error short of a whole number counts whole."""
    return int(math.floor((param.high - param.low) / param.step * (1 + 1e-9)))


def sample_point(space: Mapping[str, Param], rng: np.random.Generator) -> dict[str, Any]:
    """One configuration drawn from ``space``: uniform, log-uniform where ``log``, on the ``step`` lattice."""
    point: dict[str, Any] = {}
    for name, param in space.items():
        if param.type == "categorical":
            point[name] = param.choices[int(rng.integers(len(param.choices)))]
        elif param.step is not None:  # the last step may round to just past high
            value = min(param.low + param.step * int(rng.integers(_steps(param) + 1)), param.high)
            point[name] = int(round(value)) if param.type == "int" else float(value)
        elif param.log:  # exp(log(x)) may round to just outside the range
            value = min(max(math.exp(rng.uniform(math.log(param.low), math.log(param.high))), param.low), param.high)
            point[name] = min(max(int(round(value)), int(param.low)), int(param.high)) if param.type == "int" else value
        elif param.type == "int":
            point[name] = int(rng.integers(int(param.low), int(param.high) + 1))
        else:
            point[name] = float(rng.uniform(param.low, param.high))
    return point


def random_points(space: Mapping[str, Param], n: int, study_seed: int, phase: str) -> list[dict[str, Any]]:
    """Points 0..n-1 of a random phase; point k never depends on n, so raising n_trials extends the list."""
    return [
        sample_point(space, np.random.default_rng([study_seed, _phase_key(phase), k])) for k in range(n)
    ]


def _tidy(value: float) -> float:
    """Six significant digits, so derived values read like the ones people write."""
    return float(f"{value:.6g}")


def _span(param: Param, values: list[float], points: int) -> list[Any]:
    low, high = min(values), max(values)
    if points == 1 or low == high:
        raw = [low]
    elif param.log:
        raw = list(np.geomspace(low, high, points))
    else:
        raw = list(np.linspace(low, high, points))
    if param.step is not None:
        raw = [param.low + param.step * round((v - param.low) / param.step) for v in raw]
    if param.type == "int":
        spanned = [int(round(v)) for v in raw]
    else:
        # rounded to read like values people write, then kept inside the searched range
        spanned = [min(max(_tidy(v), param.low), param.high) for v in raw]
    return sorted(set(spanned))


def derive_grid(
    space: Mapping[str, Param], best_params: Iterable[Mapping[str, Any]], points: int
) -> dict[str, list[Any]]:
    """A grid spanning the values of the best trials.

    Numeric parameters get ``points`` values from the best trials' minimum to their maximum (log-spaced for log
    parameters; ints rounded and de-duplicated); categoricals get the values the best trials used, in the order of
    the space's choices.
    """
    best = list(best_params)
    if not best:
        raise ValueError("no trials to derive a grid from")
    grid: dict[str, list[Any]] = {}
    for name, param in space.items():
        seen = [p[name] for p in best if name in p]
        if not seen:
            continue
        if param.type == "categorical":
            grid[name] = [choice for choice in param.choices if choice in seen]
        else:
            grid[name] = _span(param, [float(v) for v in seen], points)
    return grid


def with_rungs(phase: Any, grid: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    """The grid a phase enumerates: ``grid`` with a halving schedule's ``first_rung``, and the ``levels`` it lacks,
    among its budget's values, each before the first larger one (each ladder's value there is a trial of its own),
    or ``grid`` as it is."""
    schedule = getattr(phase, "schedule", None)
    if schedule is None or phase.budget not in grid:
        return dict(grid)
    values = list(grid[phase.budget])
    for extra in sorted({schedule.first_rung, *(schedule.levels or [])} - {None}):
        if extra not in values:
            larger = [k for k, v in enumerate(values) if isinstance(v, (int, float)) and v > extra]
            values.insert(larger[0] if larger else len(values), extra)
    return {**grid, phase.budget: values}


def phase_size(phase: Any) -> int | None:
    """How many points (or trials) a phase runs, computed without building them; None for a derived grid."""
    if phase.sampler != "grid":
        schedule = getattr(phase, "schedule", None)
        return phase.n_trials * len(schedule.rungs()) if schedule is not None and phase.n_trials else phase.n_trials
    if isinstance(phase.grid, Mapping):
        return math.prod(len(values) for values in with_rungs(phase, phase.grid).values())
    return None

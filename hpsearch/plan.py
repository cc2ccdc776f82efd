"""``hpsearch plan``: each phase's size and an estimated run time, from the spec alone and a short probe training.

Touches no storage: a derived grid's size is an upper bound until its source phase has run.
"""

from __future__ import annotations

import math
import time
from typing import Any

from hpsearch import grid as grids
from hpsearch.backends import DivergedError, get_backend
from hpsearch.data import Dataset
from hpsearch.errors import SpecError
from hpsearch.spec import DerivedGrid, PhaseSpec, StudySpec
from hpsearch.training import train_once


def _phase_configs(spec: StudySpec, phase: PhaseSpec) -> tuple[list[dict[str, Any]], bool]:
    """The configurations a phase will train (exact), or a stand-in sample of them (estimated=True)."""
    if isinstance(phase.grid, dict):
        return [spec.config(**p) for p in grids.grid_points(phase.grid)], False
    if phase.sampler == "random":
        return [spec.config(**p) for p in grids.random_points(phase.space, phase.n_trials, spec.seed, phase.name)], False
    if phase.sampler == "tpe":
        return [spec.config(**p) for p in grids.random_points(phase.space, phase.n_trials, spec.seed, phase.name)], True
    # a derived grid: at most `points` values per numeric parameter and every choice per categorical
    source = spec.phase(phase.grid.source)
    size = math.prod(len(p.choices) if p.type == "categorical" else phase.grid.points for p in source.space.values())
    stand_in = grids.random_points(source.space, size, spec.seed, source.name)
    return [spec.config(**p) for p in stand_in], True


def plan(spec: StudySpec, data: Dataset) -> dict[str, Any]:
    backend = get_backend(spec.model.backend)
    probe_config = backend.probe(spec.config())
    start = time.perf_counter()
    try:
        train_once(spec, data, probe_config, seed=spec.seed)
    except DivergedError as exc:
        raise SpecError(f"{spec.source}: the probe training with the spec's defaults diverged ({exc}); lower "
                        "defaults.learning_rate.") from None
    probe_seconds = time.perf_counter() - start
    seconds_per_unit = probe_seconds / backend.cost(probe_config, data)
    phases = []
    for phase in spec.phases:
        configs, estimated = _phase_configs(spec, phase)
        phases.append({
            "phase": phase.name,
            "sampler": phase.sampler,
            "trials": len(configs),
            "trials_upper_bound": isinstance(phase.grid, DerivedGrid),
            "estimated_seconds": round(sum(backend.cost(c, data) for c in configs) * seconds_per_unit, 1),
            "estimate_from_sample": estimated,
            "grid": phase.grid if isinstance(phase.grid, dict) else None,
        })
    return {"study": spec.name, "probe_seconds": round(probe_seconds, 3), "phases": phases,
            "estimated_seconds": round(sum(p["estimated_seconds"] for p in phases), 1)}

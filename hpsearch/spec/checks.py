"""What a spec asks of the search algorithms, checked before anything is stored: a phase small enough to enqueue,
and a budget the trainable can train in stages along, with ladders and halving levels that fit its grid.

Each check raises :class:`~hpsearch.errors.SpecError` with one line naming the spec and the phase.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import ValidationError

from hpsearch.errors import SpecError
from hpsearch.search.asha import rung_ladders, rung_points
from hpsearch.search.grid import MAX_POINTS, grid_points, phase_size, with_rungs
from hpsearch.search.ladders import Ladders, ladders

if TYPE_CHECKING:
    from hpsearch.spec.models import PhaseSpec, StudySpec

__all__ = ["check_budget", "check_derived_size", "check_levels", "check_proposals", "check_rungs", "check_sizes",
           "rank_metric"]


def _refuse_size(spec: Any, phase: Any, size: int, what: str, remedy: str) -> None:
    if size > MAX_POINTS:
        raise SpecError(f"{spec.source}: phase {phase.name!r}: {what} {size:,} points; a phase runs at most "
                        f"{MAX_POINTS:,}. {remedy}")


def check_sizes(spec: Any) -> None:
    """Refuse, with one line, a phase too big to enqueue (``n_trials: 1e9``, a grid of 10^7 points)."""
    for phase in spec.phases:
        size = phase_size(phase)
        if size is not None:
            if phase.sampler == "grid":
                what = "the grid has"
            elif size != phase.n_trials:  # an asha phase: each configuration at each rung
                what = f"n_trials ({phase.n_trials:,}) times {size // phase.n_trials} rungs makes"
            else:
                what = "n_trials is"
            _refuse_size(spec, phase, size, what, "Split it into several phases, or search with a random or tpe phase.")


def check_derived_size(spec: Any, phase: Any, grid: Mapping[str, list[Any]]) -> None:
    """Refuse, with one line, a derived ``grid`` too big to enqueue; its size is counted, not enumerated."""
    index = spec.phases.index(phase)
    _refuse_size(spec, phase, math.prod(len(values) for values in grid.values()),
                 f"the grid derived from the top {phase.grid.top_k} trials of {phase.grid.source!r} has",
                 f"Lower phases[{index}].grid.points ({phase.grid.points} values per numeric parameter).")


def check_levels(spec: StudySpec, phase: PhaseSpec, grid: Mapping[str, list[Any]], *, where: str) -> None:
    """SpecError for halving levels above the largest budget value of ``grid`` (the phase's, before they join it)."""
    levels = phase.schedule.levels if phase.schedule is not None else None
    values = grid.get(phase.budget)
    if levels and values and all(type(v) is int for v in values) and levels[-1] > max(values):
        raise SpecError(f"{spec.source}: {where}: schedule.levels must end at or below the grid's largest "
                        f"{phase.budget} ({max(values)}): a ladder trains no further. Got {levels[-1]} instead.")


def rank_metric(spec: StudySpec, phase: PhaseSpec) -> tuple[str | None, bool]:
    """What halving ranks a level's ladders by: a metric of the trials' ``metrics`` (None: the objective, the
    trials' value), and whether higher is better."""
    rank_by = phase.schedule.rank_by if phase.schedule is not None else None
    if rank_by is None or rank_by == spec.objective.metric:
        return None, spec.objective.direction == "maximize"
    return rank_by, (spec.trainable.metrics or {}).get(rank_by) == "maximize"


def check_budget(spec: StudySpec, phase: PhaseSpec, grid: Mapping[str, list[Any]] | None, *,
                 where: str) -> Ladders | None:
    """The ladders of a phase's ``grid`` over its ``budget``; SpecError for a budget the trainable cannot train in
    stages along, for any of the grid's points (for the defaults alone while ``grid`` is None, a grid not derived
    yet), or for a budget value that is not a positive whole number."""
    trainable = spec.trainable
    if trainable.start is None:
        raise SpecError(f"{spec.source}: {where}: budget {phase.budget!r} needs a trainable that trains in stages; "
                        f"{spec.model.backend} declares no 'start' (see hpsearch.trainable).")
    if trainable.budget is not None and phase.budget != trainable.budget:
        raise SpecError(f"{spec.source}: {where}: the budget must be {trainable.budget!r}, the parameter the "
                        f"{spec.model.backend} backend trains in stages along. Got {phase.budget!r} instead.")
    if phase.schedule is not None and grid is not None and phase.budget not in grid:
        raise SpecError(f"{spec.source}: {where}: halving needs {phase.budget!r} in the grid; the derived grid has "
                        f"{', '.join(grid)} (let its source phase search {phase.budget}).")
    rank_by = phase.schedule.rank_by if phase.schedule is not None else None
    declared = trainable.metrics or {}
    if rank_by is not None and rank_by != spec.objective.metric and rank_by not in declared:
        what = f"one of {', '.join(declared)}" if declared else "the objective (it declares no metrics)"
        raise SpecError(f"{spec.source}: {where}: schedule.rank_by must be {what}, a metric the "
                        f"{spec.model.backend} trainable reports with its direction. Got {rank_by!r} instead.")
    if grid is not None:  # a derived grid's levels are checked as it is derived, before they join it
        check_levels(spec, phase, grid, where=where)
    grid = with_rungs(phase, grid) if grid is not None else None
    points = grid_points(grid) if grid is not None else []
    first = phase.schedule.first_rung if phase.schedule is not None else None
    if first is not None and grid is not None and any(isinstance(v, int) and v < first for v in grid[phase.budget]):
        raise SpecError(f"{spec.source}: {where}: schedule.first_rung ({first}) must be below every {phase.budget} "
                        f"of the grid ({', '.join(map(str, grid[phase.budget]))}).")
    found = _stage_along(spec, phase, points, where=where)
    return found if grid is not None else None


def check_rungs(spec: StudySpec, phase: PhaseSpec, points: Sequence[Mapping[str, Any]], *, where: str) -> Ladders:
    """The ladders of an asha phase's ``points`` (:func:`hpsearch.search.asha.rung_points`: each configuration's
    rungs, one ladder); SpecError as :func:`check_budget` says."""
    check_budget(spec, phase, None, where=where)
    rungs = len(phase.schedule.rungs())
    return _stage_along(spec, phase, points, where=where,
                        found=rung_ladders(len(points) // rungs, phase.budget, rungs))


def check_proposals(spec: StudySpec, phase: PhaseSpec, *, where: str) -> Ladders:
    """The ladders of a TPE phase under asha, whose configurations are proposed as it runs; SpecError as
    :func:`check_budget` says for the spec's defaults or any choice of a categorical parameter among them (each
    choice TPE may propose, at the top rung)."""
    check_budget(spec, phase, None, where=where)
    choices = [{}, *({name: choice} for name, p in phase.space.items() if p.type == "categorical"
                     for choice in p.choices)]
    rungs = phase.schedule.rungs()
    _stage_along(spec, phase, rung_points(choices, phase.budget, rungs), where=where,
                 found=rung_ladders(len(choices), phase.budget, len(rungs)))
    return rung_ladders(phase.n_trials, phase.budget, len(rungs))


def _stage_along(spec: StudySpec, phase: PhaseSpec, points: Sequence[Mapping[str, Any]], *, where: str,
                 found: Ladders | None = None) -> Ladders:
    """The ladders of ``points`` over the phase's budget (``found``, or grouped by their other values); SpecError
    for a budget value that is not a positive whole number, or a ladder's top the trainable cannot reach in stages
    (the spec's defaults alone without points)."""
    trainable = spec.trainable
    if found is None:
        try:
            found = ladders([spec.config(**point) for point in points], phase.budget)
        except ValueError as exc:
            raise SpecError(f"{spec.source}: {where}: {exc}.") from None
    if trainable.budget_blocker is not None:
        for top in [points[rungs[-1]] for rungs in found.rungs] or [{}]:
            try:
                blocker = trainable.budget_blocker(trainable.resolve(spec.config(**top)))
            except ValidationError:
                continue  # the point's own values are refused elsewhere, with their own message
            if blocker:
                raise SpecError(f"{spec.source}: {where}: budget {phase.budget!r}: {blocker}.")
    return found

"""Budget ladders: a phase's points that differ only in their training length, trained once to the longest.

A phase that names its ``budget`` parameter (``num_iters``, ``num_epochs``) groups its points by everything else:
each group is a *ladder* and its points are *rungs*, in ascending budget. The run to the top rung passes through
every lower rung, so a ladder trains once and each rung's state becomes that point's own trial, with exactly the
numbers the point gets when trained alone: every rung of a ladder has one seed, derived from the ladder, not from the
budget value. Pure functions of the points, like :mod:`hpsearch.grid`: no storage, no Optuna.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["Ladders", "ladders"]


@dataclass(frozen=True)
class Ladders:
    """The ladders of a phase's points.

    budget: the parameter that counts training. rungs: per ladder, its point indices in ascending budget (ties in
    point order). of_point: per point, the index of its ladder. Ladders are numbered in the order their first point
    appears, so the numbering, and with it every seed, is a function of the points alone.
    """

    budget: str
    rungs: tuple[tuple[int, ...], ...]
    of_point: tuple[int, ...]

    def ladder(self, point: int) -> tuple[int, ...]:
        """The points of ``point``'s ladder, in ascending budget."""
        return self.rungs[self.of_point[point]]


def ladders(points: Sequence[Mapping[str, Any]], budget: str) -> Ladders:
    """Group ``points`` into ladders over ``budget``; a point without that parameter is a ladder of its own.

    Raises ValueError for a budget value that is not a positive whole number.
    """
    by_rest: dict[str, int] = {}
    members: list[list[int]] = []
    of_point = []
    for index, point in enumerate(points):
        if budget in point:
            value = point[budget]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"the budget {budget!r} must be a whole number > 0 in every point. Got {value!r} "
                                 "instead")
            key = json.dumps({name: v for name, v in point.items() if name != budget}, sort_keys=True, default=str)
        else:
            key = f"#{index}"  # nothing to share with
        ladder = by_rest.setdefault(key, len(members))
        if ladder == len(members):
            members.append([])
        members[ladder].append(index)
        of_point.append(ladder)
    rungs = tuple(tuple(sorted(ids, key=lambda i: (points[i].get(budget, 0), i))) for ids in members)
    return Ladders(budget, rungs, tuple(of_point))

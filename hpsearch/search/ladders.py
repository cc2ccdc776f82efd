"""Budget ladders: a phase's points that differ only in their training length, trained once to the longest.

A phase that names its ``budget`` parameter (``num_iters``, ``num_epochs``) groups its points by everything else:
each group is a *ladder* and its points are *rungs*, in ascending budget. The run to the top rung passes through
every lower rung, so a ladder trains once and each rung's state becomes that point's own trial, with exactly the
numbers the point gets when trained alone: every rung of a ladder has one seed, derived from the ladder, not from the
budget value. :func:`ladders` is a pure function of the points, like :mod:`hpsearch.search.grid`;
:func:`hpsearch.spec.checks.check_budget` holds a phase's budget against the spec's trainable as well.

A phase with ``schedule: {type: halving}`` trains every ladder to its first rung, the best 1/reduction_factor of them
to the next, and so on. :func:`halve` decides which rungs run and which end ``not promoted at <budget>`` from the
rungs decided so far alone, so every process that looks decides alike, and a resumed phase goes on where it stood.
No storage, no Optuna.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["Halving", "Ladders", "Work", "halve", "is_not_promoted", "ladders", "not_promoted", "work"]


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


@dataclass(frozen=True)
class Work:
    """What a phase's points cost to train, in budget units, for estimates. of_point: per point, its stretch of
    the budget (a rung: from the rung below, the first from 0; a point without a budget: 1). expected: what the whole
    phase trains, the halving rule's survivors only (every point without halving). trials: how many points it
    trains (halving's not-promoted rungs train nothing)."""

    of_point: tuple[float, ...]
    expected: float
    trials: float


def work(found: Ladders | None, budgets: Sequence[int | None], *, reduction_factor: int | None = None,
         levels: Sequence[int] | None = None) -> Work:
    """The phase's :class:`Work`. ``budgets``: each point's budget value (None without one); ``found``: its ladders
    (None: every point trained on its own); with ``reduction_factor``, halving at ``levels`` (None: each rung a
    level), as :func:`halve` keeps ceil(n / reduction_factor) of a level's n ladders."""
    if found is None:
        return Work(tuple(1.0 for _ in budgets), float(len(budgets)), float(len(budgets)))
    stretch = [1.0] * len(budgets)
    for rungs in found.rungs:
        below = 0
        for point in rungs:
            if budgets[point] is not None:
                stretch[point], below = float(budgets[point] - below), budgets[point]
    if reduction_factor is None:
        return Work(tuple(stretch), sum(stretch), float(len(budgets)))
    by_level = [_by_level(rungs, budgets, levels) for rungs in found.rungs]
    depth = max((max(groups, default=-1) + 1 for groups in by_level), default=0)
    alive, expected, trials = float(len(found.rungs)), 0.0, 0.0
    for level in range(depth):
        groups = [groups[level] for groups in by_level if level in groups]
        if not groups:
            break
        expected += alive * sum(stretch[point] for group in groups for point in group) / len(groups)
        trials += alive * sum(len(group) for group in groups) / len(groups)
        alive = float(math.ceil(alive / reduction_factor))
    return Work(tuple(stretch), expected, trials)


def not_promoted(budget: int) -> str:
    """Why a rung of halving did not run: its ladder was not among the best at ``budget``."""
    return f"not promoted at {budget}"


def is_not_promoted(reason: str | None) -> bool:
    """Whether ``reason`` is :func:`not_promoted`'s: the rung never ran."""
    return bool(reason) and reason.startswith(not_promoted(0).rsplit(" ", 1)[0] + " ")


@dataclass(frozen=True)
class Halving:
    """Where a halving phase stands. admitted: the points whose trials may run now (each ladder's rungs up to the
    level it reached). stopped: the rungs that will never run, each with the budget its ladder stopped at."""

    admitted: frozenset[int]
    stopped: dict[int, int]


def halve(found: Ladders, budgets: Sequence[int], decided: Mapping[int, float | None], *, reduction_factor: int,
          maximize: bool, levels: Sequence[int] | None = None) -> Halving:
    """Successive halving over ``found``'s ladders, level by level (a level: every ladder's k-th rung; with
    ``levels``, budget values in ascending order, a ladder's rungs up to the k-th of them, above the one before).

    budgets: each point's budget value. decided: the points that will not run again, each with the value it is
    ranked by, or None for one without (pruned, diverged, failed for good). A level is decided once each of its
    rungs is; of its n ladders the best ceil(n / reduction_factor) with a value at the level's top rung go on (ties
    by ladder number), the others' rungs above stop. A pure function of its arguments.
    """
    by_level = [_by_level(rungs, budgets, levels) for rungs in found.rungs]
    alive = list(range(len(found.rungs)))
    admitted: set[int] = set()
    stopped: dict[int, int] = {}
    depth = max((max(groups, default=-1) + 1 for groups in by_level), default=0)
    for level in range(depth):
        current = [(ladder, by_level[ladder][level]) for ladder in alive if level in by_level[ladder]]
        admitted.update(point for _, group in current for point in group)
        if any(point not in decided for _, group in current for point in group):
            break  # the level is still running
        scored = sorted(((decided[group[-1]], ladder) for ladder, group in current if decided[group[-1]] is not None),
                        key=lambda pair: (-pair[0] if maximize else pair[0], pair[1]))
        promoted = sorted(ladder for _, ladder in scored[:math.ceil(len(current) / reduction_factor)])
        for ladder, group in current:
            if ladder not in promoted:
                rungs = found.rungs[ladder]
                stopped.update((above, budgets[group[-1]]) for above in rungs[rungs.index(group[-1]) + 1:])
        alive = promoted
    return Halving(frozenset(admitted), stopped)


def _by_level(rungs: Sequence[int], budgets: Sequence[int], levels: Sequence[int] | None) -> dict[int, tuple[int, ...]]:
    """A ladder's rungs by level: each rung a level of its own, or, with ``levels``, the rungs whose budget is above
    the level before and at most the level's (those above the last level: one level more)."""
    if levels is None:
        return {k: (point,) for k, point in enumerate(rungs)}
    grouped: dict[int, tuple[int, ...]] = {}
    for point in rungs:
        level = bisect.bisect_left(levels, budgets[point])
        grouped[level] = (*grouped.get(level, ()), point)
    return grouped

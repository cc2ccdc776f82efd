"""Asynchronous successive halving (ASHA): the rule for phases that sample their configurations (random, TPE).

Such a phase trains each configuration it samples to the lowest rung of a budget first. Rungs are ``min_budget``
times ``reduction_factor`` to the k-th power while below ``max_budget``, then ``max_budget`` itself (:func:`rungs`).
Whenever a process is free it asks :func:`next_step` what to do, from the values the rungs have stored so far (Li et
al., "A System for Massively Parallel Hyperparameter Tuning", 2018): promote a configuration that is among the best
1/reduction_factor of the configurations that ended its rung and that was not promoted yet, the highest rung first;
else start a new configuration at the lowest rung. No process waits for a rung to fill, and a promoted configuration
goes on from the run saved at its rung, so a configuration is one run, paused at each rung it reached.

A phase keeps each configuration's rungs as the points of one budget ladder (:mod:`hpsearch.search.ladders`; a
random phase's configurations are drawn before it starts, a TPE phase's proposed as each starts); :func:`admit` then
says, from the phase's stored trials alone, which rungs to queue now (promotions, highest rung first, then new
configurations) and which rungs will never run, as :func:`hpsearch.search.ladders.halve` does for synchronous
halving.

TPE under ASHA models the values of the highest rung with enough of them (BOHB's rule, :func:`model_rung`).
:func:`work` prices a phase for estimates. Pure functions of their arguments: no storage, no Optuna; every process
that looks at the same stored values decides alike.

Random and TPE phases run it with ``schedule: {type: asha}`` (the engine's point queue asks :func:`admit`; a TPE
phase's configurations are proposed as they start, :mod:`hpsearch.engine.proposals`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Hashable, Mapping, Sequence, TypeVar

from hpsearch.search.ladders import Ladders

__all__ = ["Admission", "Promotion", "admit", "model_rung", "next_step", "rung_ladders", "rung_points", "rungs",
           "work"]

Config = TypeVar("Config", bound=Hashable)


def rungs(min_budget: int, max_budget: int, reduction_factor: int) -> tuple[int, ...]:
    """The rungs' budgets in ascending order: ``rungs(100, 2700, 3)`` is (100, 300, 900, 2700), and
    ``rungs(100, 3000, 3)`` is (100, 300, 900, 2700, 3000): the last rung trains to ``max_budget``.

    Raises ValueError unless 0 < min_budget <= max_budget and reduction_factor >= 2, all whole numbers.
    """
    for name, value in (("min_budget", min_budget), ("max_budget", max_budget),
                        ("reduction_factor", reduction_factor)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number. Got {value!r} instead")
    if min_budget <= 0 or max_budget < min_budget:
        raise ValueError(f"the budgets must be 0 < min_budget <= max_budget. Got {min_budget} and {max_budget} "
                         "instead")
    if reduction_factor < 2:
        raise ValueError(f"reduction_factor must be at least 2. Got {reduction_factor} instead")
    found = []
    budget = min_budget
    while budget < max_budget:
        found.append(budget)
        budget *= reduction_factor
    return (*found, max_budget)


def rung_points(configurations: Sequence[Mapping[str, object]], budget: str,
                budgets: Sequence[int]) -> list[dict[str, object]]:
    """Each configuration at each rung, as a phase's points: point ``c * len(budgets) + r`` is configuration c with
    ``budget`` set to ``budgets[r]``. A configuration's points do not depend on how many follow it, so raising a
    phase's n_trials extends the list."""
    return [{**configuration, budget: value} for configuration in configurations for value in budgets]


def rung_ladders(configurations: int, budget: str, rungs: int) -> Ladders:
    """The ladders of :func:`rung_points`: configuration c's rungs, points ``c * rungs`` to ``c * rungs + rungs - 1``,
    are ladder c, also where two configurations drawn are equal (:func:`hpsearch.search.ladders.ladders` would make
    them one ladder, their seeds and saved runs one)."""
    return Ladders(budget, tuple(tuple(range(c * rungs, (c + 1) * rungs)) for c in range(configurations)),
                   tuple(point // rungs for point in range(configurations * rungs)))


@dataclass(frozen=True)
class Promotion:
    """Train ``config`` on from its saved run at rung ``rung - 1`` to rung ``rung``."""

    config: Hashable
    rung: int


def next_step(values: Sequence[Mapping[Hashable, float | None]], promoted: Sequence[Collection[Hashable]], *,
              reduction_factor: int, maximize: bool) -> Promotion | None:
    """The promotion a free process makes now, or None: it starts a new configuration at the lowest rung.

    values: per rung, every configuration whose trial at that rung has ended, with its value, or None for one that
    ended without (pruned, diverged, failed for good). promoted: per rung, the configurations already sent on from it
    (they have a trial at the rung above, in any state). Of a rung's n ended configurations, the best
    floor(n / reduction_factor) with a value may go on (ties by the configurations' order); the first of them not yet
    promoted goes, from the highest rung that has one. The top rung sends no one on.
    """
    for rung in reversed(range(len(values) - 1)):
        waiting = _promotable(values[rung], promoted[rung], reduction_factor, maximize)
        if waiting:
            return Promotion(waiting[0], rung + 1)
    return None


def _promotable(ended: Mapping[Config, float | None], promoted: Collection[Config], reduction_factor: int,
                maximize: bool) -> list[Config]:
    """The configurations of one rung that may go on and have not, best first: of its n ``ended`` ones, the best
    floor(n / reduction_factor) with a value (ties by the configurations' order), less those ``promoted``."""
    ranked = _ranked(ended, maximize)
    return [config for config in ranked[:len(ended) // reduction_factor] if config not in promoted]


def _ranked(ended: Mapping[Config, float | None], maximize: bool) -> list[Config]:
    """The configurations of ``ended`` that have a value, best first (ties by the configurations' order)."""
    return sorted((config for config, value in ended.items() if value is not None),
                  key=lambda config: (-ended[config] if maximize else ended[config], config))


@dataclass(frozen=True)
class Admission:
    """What a phase of ASHA ladders queues now. promote: the rungs its configurations are promoted to, the highest
    rung first, best first within a rung. start: the lowest rungs of configurations not started yet, in ladder order.
    stopped: the rungs that will never run, each with the budget its configuration stopped at. let_go: the rungs at
    which configurations wait (ended with a value, neither promoted nor stopped) behind the best ``keep_waiting``
    waiting there: their paused runs may go, and one promoted later trains again from its start."""

    promote: tuple[int, ...]
    start: tuple[int, ...]
    stopped: dict[int, int]
    let_go: tuple[int, ...] = ()


def admit(found: Ladders, budgets: Sequence[int], decided: Mapping[int, float | None], queued: Collection[int], *,
          reduction_factor: int, maximize: bool, starts: int, stopped_before: Collection[int] = (),
          keep_waiting: int | None = None) -> Admission:
    """ASHA over ``found``'s ladders (a ladder: one configuration's rungs, ascending in budget), from stored trials.

    budgets: each point's budget value. decided: the points that will not run again, each with its value, or None for
    one without (pruned, diverged, failed for good). queued: the points that have a trial in any state (queued,
    running, ended, failed and to be retried); a rung queued is a promotion made. stopped_before: the rungs that
    already ended without running (an earlier :class:`Admission`'s ``stopped``): their configurations never go on,
    even where more configurations ending the rung below (a phase's n_trials raised) would now rank them among its
    best. At most ``starts`` new configurations start. A configuration that ended a rung without a value stops there
    at once; one with a value stops once no configuration can end that rung any more (every configuration started
    and every one promoted to the rung decided there, or stopped below it) and it is not among the rung's best
    floor(n / reduction_factor). A pure function of its arguments, as :func:`next_step` decides one promotion at a
    time.

    keep_waiting (None: every one): how many of the configurations waiting at a rung keep their paused runs, the
    best ones. The next promotions from a rung go to its best waiting configurations or to ones that end it later,
    so a configuration behind the best ``keep_waiting`` goes on only after that many promotions from its rung, if
    ever; it then trains again from its start. A phase's disk is then bounded by its rungs, not its n_trials.
    """
    depth = max((len(rungs) for rungs in found.rungs), default=0)
    unstarted = [rungs[0] for rungs in found.rungs if rungs and rungs[0] not in queued]
    promote: list[int] = []
    stopped: dict[int, int] = {}
    let_go: list[int] = []
    closed = not unstarted  # whether no configuration can end the rung below any more
    for rung in range(depth - 1):
        climbing = {ladder: rungs for ladder, rungs in enumerate(found.rungs) if len(rungs) > rung + 1}
        ended = {ladder: decided[rungs[rung]] for ladder, rungs in climbing.items() if rungs[rung] in decided}
        on_their_way = {ladder for ladder, rungs in climbing.items()
                        if rungs[rung + 1] in queued or rungs[rung + 1] in stopped_before}
        going = _promotable(ended, on_their_way, reduction_factor, maximize)
        promote[:0] = [climbing[ladder][rung + 1] for ladder in going]  # a higher rung's go before
        closed = closed and all(rungs[rung] in decided for rungs in climbing.values() if rungs[rung] in queued)
        waiting = []
        for ladder, value in ended.items():
            if ladder not in on_their_way and ladder not in going and (value is None or closed):
                rungs = climbing[ladder]
                stopped.update((above, budgets[rungs[rung]]) for above in rungs[rung + 1:])
            elif ladder not in on_their_way and ladder not in going:
                waiting.append(ladder)
        if keep_waiting is not None:
            behind = _ranked({ladder: ended[ladder] for ladder in waiting}, maximize)[keep_waiting:]
            let_go += [climbing[ladder][rung] for ladder in behind]
        closed = closed and not going
    return Admission(tuple(promote), tuple(unstarted[:max(starts, 0)]), stopped, tuple(sorted(let_go)))


def model_rung(ended: Sequence[int], n_params: int) -> int:
    """The rung whose values TPE models when it proposes a configuration: the highest with at least ``n_params`` + 1
    ended configurations (BOHB's rule), else the lowest. ``ended``: per rung, how many configurations ended it."""
    return max((rung for rung, count in enumerate(ended) if count >= n_params + 1), default=0)


def work(n_configs: int, budgets: Sequence[int], reduction_factor: int) -> tuple[float, float]:
    """(training in budget units, rung trials) of a phase that starts ``n_configs`` configurations over ``budgets``
    (:func:`rungs`), as synchronous halving would promote them: floor(n / reduction_factor) of each rung's n, each
    going on from the rung below. ASHA's early promotions add a few: an estimate from below."""
    expected = trials = 0.0
    alive, below = n_configs, 0
    for budget in budgets:
        if alive == 0:
            break
        expected += alive * (budget - below)
        trials += alive
        alive, below = alive // reduction_factor, budget
    return expected, trials

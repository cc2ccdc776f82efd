"""``hpsearch plan``: each phase's size and an estimated run time, from the spec and a short measured probe.

The probe runs a few short trials of the spec's defaults through the real driver, on a throwaway SQLite storage in a
temporary folder with tracking off, so the estimate includes what a trial costs besides training (claiming, storing,
heartbeats) and what a run costs once (opening the storage, loading the data, scoring the winner). The user's
storage is never touched: a derived grid's size is an upper bound until its source phase has run.
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from hpsearch.backends import DivergedError
from hpsearch.data import Dataset
from hpsearch.engine.training import resolved_config, train_once
from hpsearch.errors import SpecError
from hpsearch.files import process_start
from hpsearch.search import asha
from hpsearch.search import grid as grids
from hpsearch.search.ladders import ladders, work
from hpsearch.spec.checks import check_sizes
from hpsearch.spec.models import DerivedGrid, PhaseSpec, StudySpec

__all__ = ["PROBE_TRIALS", "Probe", "measure_probe", "plan", "since_process_start"]

PROBE_TRIALS = 4  # the first pays the process's start-up; the others are timed
WHOLE_PROBE_SECONDS = 1.0  # defaults that train in this long are probed whole, not in the trainable's short version
LONGER_PROBE_SECONDS = 5.0  # a probe this short is timed at twice its length too (longer ones: plan waits enough)
STAND_INS = 1000  # configurations priced for a phase whose points are not known yet (tpe, a derived grid)


@dataclass(frozen=True)
class Probe:
    """What a short version of the spec's defaults cost, measured.

    train_seconds: one training of the probe configuration, alone
    cost: that configuration's relative compute (the backend's ``cost``): seconds per unit = train_seconds / cost
    trial_overhead_seconds: what a trial costs beyond its training (the driver's claim, storage writes, heartbeat)
    fixed_seconds: what a run costs once, beyond its trials (and the winner's retraining, where it is not kept)
    start_seconds: what a training costs whatever its length (setting up, the final scores), of train_seconds:
    seconds per unit = (train_seconds - start_seconds) / cost
    """

    train_seconds: float
    cost: float
    trial_overhead_seconds: float
    fixed_seconds: float
    trials: int = PROBE_TRIALS
    start_seconds: float = 0.0


def _phase_configs(spec: StudySpec, phase: PhaseSpec) -> tuple[list[dict[str, Any]], int, bool]:
    """The configurations a phase will train and how many (exact), or a stand-in sample of at most STAND_INS and the
    most the phase can train (estimated=True)."""
    if isinstance(phase.grid, dict):
        configs = [spec.config(**p) for p in grids.grid_points(grids.with_rungs(phase, phase.grid))]
        return configs, len(configs), False
    if phase.sampler == "random" or phase.samples_under_asha:  # a TPE phase's stand-ins: random ones
        configs = [spec.config(**p) for p in spec.drawn(phase)]
        return configs, len(configs), phase.sampler == "tpe"
    if phase.sampler == "tpe":  # TPE's points are not known in advance: random ones stand in
        source, size = phase, phase.n_trials
    else:  # a derived grid: at most `points` values per numeric parameter and every choice per categorical
        source = spec.phase(phase.grid.source)
        size = math.prod(len(p.choices) if p.type == "categorical" else phase.grid.points
                         for p in source.space.values())
        size = min(size, grids.MAX_POINTS)  # a run refuses a larger one
    stand_in = grids.random_points(source.space, min(size, STAND_INS), spec.seed, source.name)
    return [spec.config(**p) for p in stand_in], size, True


def _probe_spec(spec: StudySpec, probe_config: dict[str, Any]) -> StudySpec:
    """The spec with the probe configuration as its defaults and one grid phase of PROBE_TRIALS equal points."""
    name, value = next(iter(probe_config.items()))
    raw = spec.model_dump(exclude={"phases", "tracking", "storage", "provenance"})
    raw["defaults"] = probe_config
    raw["tracking"] = {"enabled": False}
    raw["phases"] = [{"name": "probe", "sampler": "grid", "grid": {name: [value] * PROBE_TRIALS}}]
    return StudySpec(**raw, source=spec.source, base_dir=spec.base_dir, allow_import=spec.allow_import)


def measure_probe(spec: StudySpec, data: Dataset) -> Probe:
    """Run the probe configuration as PROBE_TRIALS trials of a throwaway study, then train it alone."""
    from hpsearch.engine.driver import Driver

    trainable = spec.trainable
    probe_config = resolved_config(spec, trainable.probe(spec.config()) if trainable.probe else spec.config())
    defaults = resolved_config(spec, spec.config())
    if probe_config != defaults and trainable.cost is not None and _trained_in(spec, data, probe_config) \
            * _cost(spec, defaults, data) / _cost(spec, probe_config, data) <= WHOLE_PROBE_SECONDS:
        # cheap enough to probe whole: the trials' real length, epochs and the pruner's reports on each, priced as
        # they are (a short probe leaves out what a trial costs per epoch beside its training)
        probe_config = defaults
    with tempfile.TemporaryDirectory(prefix="hpsearch-plan-") as folder:
        start = time.perf_counter()
        with Driver(_probe_spec(spec, probe_config), f"sqlite:///{folder}/probe.db", echo=lambda message: None,
                    data=data) as driver:  # loading the data is part of the start-up the caller measured
            driver.run()
            run_seconds = time.perf_counter() - start
            starts = sorted(datetime.datetime.fromisoformat(row["datetime_start"]) for row in driver.trials())
    train_seconds = _trained_in(spec, data, probe_config)
    start_seconds = 0.0
    budget = trainable.budget
    if budget is not None and isinstance(probe_config.get(budget), int) and train_seconds <= LONGER_PROBE_SECONDS:
        # twice as long: what grows with the length, and what a training costs whatever it (a short probe's final
        # scores weigh on it as they do not on a long trial)
        longer = {**probe_config, budget: 2 * probe_config[budget]}
        added = _cost(spec, longer, data) - _cost(spec, probe_config, data)
        extra = _trained_in(spec, data, longer) - train_seconds
        if added > 0 and extra > 0:
            start_seconds = min(max(train_seconds - extra / added * _cost(spec, probe_config, data), 0.0),
                                train_seconds)
    # consecutive trials start one trial (training plus overhead) apart; the first trial, which also pays what
    # happens once per process, is left out
    per_trial = (starts[-1] - starts[1]).total_seconds() / (len(starts) - 2)
    # a trainable that cannot keep its winner's model trained it once more at the run's end
    fixed = run_seconds - len(starts) * per_trial - (0.0 if spec.trainable.keeps_models else train_seconds)
    return Probe(train_seconds=train_seconds, cost=_cost(spec, probe_config, data),
                 trial_overhead_seconds=max(per_trial - train_seconds, 0.0), fixed_seconds=max(fixed, 0.0),
                 trials=len(starts), start_seconds=start_seconds)


def _trained_in(spec: StudySpec, data: Dataset, config: dict[str, Any]) -> float:
    """Seconds one training of ``config`` takes; a SpecError when it diverges."""
    start = time.perf_counter()
    try:
        train_once(spec, data, config, seed=spec.seed)
    except DivergedError as exc:
        raise SpecError(f"{spec.source}: the probe training with the spec's defaults diverged ({exc}); lower "
                        "defaults.learning_rate.") from None
    return time.perf_counter() - start


def _cost(spec: StudySpec, config: dict[str, Any], data: Dataset) -> float:
    """The trainable's relative compute for ``config``; 1 for every configuration of one without a cost model."""
    cost = spec.trainable.cost
    return cost(config, data) if cost is not None else 1.0


def since_process_start() -> float:
    """Wall seconds since this process started (0 where ``/proc`` cannot tell): for a command-line process, the
    start-up every ``hpsearch run`` pays too."""
    ticks = process_start(os.getpid())
    try:
        with open("/proc/uptime") as uptime:
            return max(float(uptime.read().split()[0]) - int(ticks) / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, TypeError, IndexError):
        return 0.0


def plan(spec: StudySpec, data: Dataset, probe: Probe | None = None, startup_seconds: float = 0.0) -> dict[str, Any]:
    """Each phase's trial count and estimated seconds (training by the backend's cost model, priced by the probe,
    plus the probe's overhead per trial), and the run's total with its fixed costs (and the winner's retraining, for
    a trainable that cannot keep its model).
    ``startup_seconds``: what the process took to get here (interpreter, imports, the spec and ``data``), which a
    ``hpsearch run`` pays as well; see :func:`since_process_start`."""
    check_sizes(spec)  # before the probe: a phase too big to enqueue is refused at once
    probe = probe or measure_probe(spec, data)
    seconds_per_unit = (probe.train_seconds - probe.start_seconds) / probe.cost
    phases, all_training = [], []
    for phase in spec.phases:
        configs, trials, estimated = _phase_configs(spec, phase)
        # a ladder trains once, to its top rung (see hpsearch.search.ladders); a derived grid's are known once it is
        # derived; a TPE phase's stand-ins train as the configurations it proposes will
        staged = phase.budget is not None and (not estimated or phase.samples_under_asha)
        found = ladders(configs, phase.budget) if staged else None
        if staged and phase.schedule is not None and phase.schedule.type == "asha":  # a ladder per configuration
            rungs = len(phase.schedule.rungs())
            found = asha.rung_ladders(len(configs) // rungs, phase.budget, rungs)
        trained = [configs[rungs[-1]] for rungs in found.rungs] if found is not None else configs
        training = [_cost(spec, c, data) * seconds_per_unit * trials / len(configs) for c in trained]
        started = trials  # the trials that train: halving's not-promoted rungs only end PRUNED
        if found is not None and phase.schedule is not None and training:  # the ladders' mean, by levels' survivors
            budgets = [c[phase.budget] for c in configs]
            if phase.schedule.type == "asha":
                expected, started = asha.work(len(found.rungs), phase.schedule.rungs(),
                                              phase.schedule.reduction_factor)
                share = expected / sum(work(found, budgets).of_point)
            else:
                halving = work(found, budgets, levels=phase.schedule.levels,
                               reduction_factor=phase.schedule.reduction_factor)
                share, started = halving.expected / sum(halving.of_point), halving.trials
            training = [sum(training) / len(training) * share] * len(training)
        all_training += [probe.start_seconds + _cost(spec, c, data) * seconds_per_unit for c in configs]
        phases.append({
            "phase": phase.name,
            "sampler": phase.sampler,
            "trials": trials,
            "trials_upper_bound": isinstance(phase.grid, DerivedGrid),
            **({"ladders": len(trained)} if staged else {}),
            **({phase.schedule.type: phase.schedule.reduction_factor} if staged and phase.schedule is not None
               else {}),
            "estimated_seconds": round(sum(training) + started * (probe.trial_overhead_seconds
                                                                  + probe.start_seconds), 1),
            "estimate_from_sample": estimated,
            "grid": phase.grid if isinstance(phase.grid, dict) else None,
        })
    # the study's end scores the winner's kept model; a trainable that cannot save one has its winner trained again,
    # unknown in advance: priced as an average trial's training
    trains_winner = not spec.trainable.keeps_models
    once = startup_seconds + probe.fixed_seconds + (
        sum(all_training) / len(all_training) if all_training and trains_winner else 0.0)
    return {"study": spec.name, "probe_seconds": round(probe.train_seconds, 3),
            "probe": {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(probe).items()},
            "startup_seconds": round(startup_seconds, 3), "run_fixed_seconds": round(once, 1),
            "winner_trained_again": trains_winner, "phases": phases,
            "estimated_seconds": round(once + sum(p["estimated_seconds"] for p in phases), 1)}

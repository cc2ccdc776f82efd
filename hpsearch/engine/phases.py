"""Phases as Optuna studies: which study serves each phase, created once and atomically, and its points.

A phase exists when its record is in the study's layout (:mod:`hpsearch.engine.layout`), and the record is written in
one statement after its Optuna study was created: a process killed in between leaves an empty Optuna study that no
record names, which the next run adopts. A grid phase's grid is derived (from its source phase's best trials) before
anything is written, so a failure leaves nothing behind.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping

import optuna

from hpsearch.engine.layout import Layout, definition_of, describe_changes, retired
from hpsearch.errors import UserError
from hpsearch.formatting import format_value, wrap_items
from hpsearch.search import grid as grids
from hpsearch.spec.checks import check_budget, check_derived_size
from hpsearch.spec.models import DerivedGrid, PhaseSpec, StudySpec
from hpsearch.storage.connections import storage_lock
from hpsearch.storage.records import SharedState, StateTable, decode_params, encode_param
from hpsearch.storage.trialstore import TrialStore

__all__ = ["GRID_CHOICES", "PointParams", "Phases", "point_params", "space_distributions"]

GRID_CHOICES = 64  # a grid parameter with more values is stored in constant size per point (_shared_distribution)
BOUNDED = "bounded_params"  # in a phase record: its trials' params are stored that way (records written before not)
SHOWN_VALUES = 12  # of each parameter of a derived grid, when it is printed

PointParams = Callable[[Mapping[str, Any]], dict[str, tuple[Any, optuna.distributions.BaseDistribution]]]


def _shared_distribution(values: list[Any], bounded: bool) -> optuna.distributions.BaseDistribution | None:
    """The distribution every value of a grid parameter is stored with; None: each value with itself as the choice.

    Every value as a choice, as Optuna's GridSampler has it; but each trial stores its own copy, so a parameter of
    more than GRID_CHOICES values (in a record with ``bounded``) gets one whose size does not grow with the grid: the
    values' range when all are ints (exactly representable as the float Optuna stores) or all finite floats, else
    none. Either way a trial's param reads back as the value it trained with, its type included.
    """
    D = optuna.distributions
    if not bounded or len(values) <= GRID_CHOICES:
        return D.CategoricalDistribution([encode_param(v) for v in values])
    if all(type(v) is int and abs(v) <= 2**53 for v in values):
        return D.IntDistribution(min(values), max(values))
    if all(type(v) is float and math.isfinite(v) for v in values):
        return D.FloatDistribution(min(values), max(values))
    return None


def point_params(phase: PhaseSpec, record: dict[str, Any]) -> PointParams:
    """How a point of the phase is stored as a trial's params: each value in Optuna's encoding (lists as JSON text),
    with the distribution Optuna (importances, optuna-dashboard) is told it was drawn from."""
    if phase.sampler == "grid":
        shared = {name: _shared_distribution(values, bool(record.get(BOUNDED)))
                  for name, values in record["grid"].items()}
    else:
        shared = space_distributions(phase)
        if phase.schedule is not None:  # asha's rungs: the budget a trial trained to
            shared[phase.budget] = optuna.distributions.IntDistribution(phase.schedule.min_budget,
                                                                        phase.schedule.max_budget)
    one_choice = optuna.distributions.CategoricalDistribution

    def params(point: Mapping[str, Any]) -> dict[str, tuple[Any, optuna.distributions.BaseDistribution]]:
        encoded = {name: encode_param(value) for name, value in point.items()}
        return {name: (value, shared[name] or one_choice([value])) for name, value in encoded.items()}

    return params


def space_distributions(phase: PhaseSpec) -> dict[str, optuna.distributions.BaseDistribution]:
    """The phase's search space as Optuna's distributions: what a random phase's points are stored with, and what a
    TPE phase's sampler draws from (``study.ask(fixed_distributions=...)``)."""
    D = optuna.distributions
    found: dict[str, D.BaseDistribution] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna adjusts a high that is off the step lattice, and says so
        for name, p in phase.space.items():
            if p.type == "categorical":
                found[name] = D.CategoricalDistribution([encode_param(c) for c in p.choices])
            elif p.type == "int":
                found[name] = D.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
            else:
                found[name] = D.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return found


class Phases:
    """The phases' Optuna studies in one storage, created once each, on the study's :class:`Layout`."""

    def __init__(self, spec: StudySpec, url: str, storage: optuna.storages.RDBStorage, table: StateTable,
                 *, force_new_phase: bool = False, echo: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.url = url
        self.storage = storage
        self.store = TrialStore(storage)
        self.layout = Layout(spec, url, table, self.store, force_new_phase=force_new_phase)
        self.echo = echo

    def shared(self) -> SharedState:
        return SharedState(self.url, self.spec.name)

    def load(self, phase: PhaseSpec, record: dict[str, Any] | None = None) -> optuna.Study | None:
        record = record if record is not None else self.layout.record(phase)
        if record is None:
            return None
        return optuna.load_study(study_name=record["study"], storage=self.storage, sampler=self.sampler(phase, 0))

    def open(self, phase: PhaseSpec) -> tuple[optuna.Study, dict[str, Any]]:
        """The phase's Optuna study and record, created (and its grid derived) exactly once."""
        record = self.layout.record(phase)
        if record is None or describe_changes(record["definition"], definition_of(phase)):
            with storage_lock(self.url, f"{self.spec.name}:phases"):
                self.layout.follow()
                layout = self.layout.read()
                record = layout["phases"].get(phase.name)
                if record is None or describe_changes(record["definition"], definition_of(phase)):
                    record = self._create(phase, layout)
        self.layout.studies[phase.name] = record["study"]
        study = self.load(phase, record)
        study.pruner = self.pruner()
        return study, record

    def _create(self, phase: PhaseSpec, layout: dict[str, Any]) -> dict[str, Any]:
        grid = self.points_grid(phase)  # derived before anything is written, so a failure leaves nothing behind
        name = self._free_name(phase, layout)
        try:
            study = optuna.create_study(study_name=name, storage=self.storage,
                                        direction=self.spec.objective.direction)
        except optuna.exceptions.DuplicatedStudyError:  # an empty study left by a process killed before it wrote
            study = optuna.load_study(study_name=name, storage=self.storage)  # the record: adopted
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental in Optuna; optuna-dashboard shows the name
            study.set_metric_names([self.spec.objective.metric])
        record = {"study": name, "definition": definition_of(phase), "grid": grid, BOUNDED: True}
        # a phase started afresh (--force-new-phase) is a new generation: a process running its old definition stops
        replaced = [phase.name] if phase.name in layout["phases"] else []
        generation = layout["generation"] + bool(replaced)
        self.layout.write({**layout, "generation": generation, "phases": {**layout["phases"], phase.name: record},
                     "retired": retired(layout, replaced)})
        self.layout.generation = generation
        if isinstance(phase.grid, DerivedGrid):
            self.echo(f"[{phase.name}] derived grid from the top {phase.grid.top_k} trials of {phase.grid.source!r}:")
            for name, values in grid.items():
                shown = [format_value(value) for value in values[:SHOWN_VALUES]]
                more = [f"... ({len(values)} values)"] if len(values) > SHOWN_VALUES else []
                for line in wrap_items(f"[{phase.name}]   {name}:", shown + more):
                    self.echo(line)
        return record

    def _free_name(self, phase: PhaseSpec, layout: dict[str, Any]) -> str:
        """``<study>.<phase>``, else ``.v2``, ``.v3``...: the first name with no trials that no record names."""
        # an earlier generation's studies too: a process still running one must not find its study adopted
        taken = {record["study"] for record in layout["phases"].values()} | set(layout.get("retired", []))
        studies = {s.study_name: s for s in self.storage.get_all_studies()}
        version = 1
        while True:
            name = f"{self.spec.name}.{phase.name}" + (f".v{version}" if version > 1 else "")
            existing = studies.get(name)
            if name not in taken and (existing is None or self._adoptable(existing)):
                return name
            version += 1

    def _adoptable(self, study: optuna.study.FrozenStudy) -> bool:
        wanted = optuna.study.StudyDirection.MAXIMIZE if self.spec.objective.direction == "maximize" \
            else optuna.study.StudyDirection.MINIMIZE
        return study.direction == wanted and not self.store.rows(self.store.study_id(study.study_name))

    def points_grid(self, phase: PhaseSpec) -> dict[str, list[Any]] | None:
        """The grid a grid phase enumerates (derived now if the spec asks for it); None for other samplers."""
        if phase.sampler != "grid":
            return None
        if isinstance(phase.grid, dict):
            return grids.with_rungs(phase, phase.grid)
        source_phase = self.spec.phase(phase.grid.source)
        record = self.layout.record(source_phase)
        source = self.load(source_phase, record) if record else None
        trials = source.get_trials(deepcopy=False) if source else []
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            failures = [t.user_attrs["failure"] for t in trials if t.user_attrs.get("failure")]
            why = (f" ({len(failures)} trials failed, the last with {failures[-1]!r}; `hpsearch export` lists them)"
                   if failures else " yet")
            raise UserError(f"phase {phase.name!r}: cannot derive its grid: phase {source_phase.name!r} "
                            f"has no complete trials{why}.")
        reverse = self.spec.objective.direction == "maximize"
        top = sorted(complete, key=lambda t: t.value, reverse=reverse)[: phase.grid.top_k]
        derived = grids.derive_grid(source_phase.space, [decode_params(t.params) for t in top], phase.grid.points)
        if phase.budget is not None:  # every check of the budget (levels, first_rung) before the phase's record
            check_budget(self.spec, phase, derived, where=f"phase {phase.name!r}")
        grid = grids.with_rungs(phase, derived)
        check_derived_size(self.spec, phase, grid)  # before the phase's record: a rerun is refused alike
        return grid

    def points(self, phase: PhaseSpec, record: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The phase's fixed list of points; None for a TPE phase."""
        if phase.sampler == "grid":
            return grids.grid_points(record["grid"])
        if phase.sampler == "random":
            return self.spec.drawn(phase)
        return None

    def sampler(self, phase: PhaseSpec, salt: int) -> optuna.samplers.BaseSampler:
        seed = grids.trial_seed(self.spec.seed, phase.name, salt)
        if phase.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)  # random and grid points are enqueued with fixed params

    def pruner(self) -> optuna.pruners.BasePruner:
        p = self.spec.pruner
        if p.type == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
        if p.type == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource,
                                                          reduction_factor=p.reduction_factor)
        if p.type == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1 if p.min_resource == "auto" else p.min_resource,
                                                  reduction_factor=p.reduction_factor)
        return optuna.pruners.NopPruner()

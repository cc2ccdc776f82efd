"""The study spec's typed objects: each section of the YAML as a strict pydantic model, with its defaults visible.

:func:`hpsearch.spec.build.build_spec` makes them from a mapping; nothing else reads the raw mapping.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, StrictInt, ValidationInfo, field_validator, model_validator

from hpsearch.data import DATASETS
from hpsearch.errors import SpecError
from hpsearch.formatting import seconds
from hpsearch.plugins import is_reference, is_well_formed
from hpsearch.search.asha import rung_points
from hpsearch.search.asha import rungs as asha_rungs
from hpsearch.search.grid import MAX_POINTS, random_points
from hpsearch.validation import UserConfig

if TYPE_CHECKING:
    from hpsearch.backends import Trainable

__all__ = ["DerivedGrid", "ParamSpec", "PhaseSpec", "StudySpec"]


SEED_BOUND = 2**63  # seeds are stored as 64-bit integers


class _Strict(UserConfig):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


def _one_of(value: str, known: Any) -> str:
    """``value`` if it names one of ``known``; else the error in the template every invalid value uses."""
    if value not in known:
        raise ValueError(f"must be one of {', '.join(known)}. Got {value!r} instead")
    return value


class WhiteningSpec(_Strict):
    """``data.whitening``: the settings of ``preprocess: pca`` or ``zca`` (see hpsearch.data.whitening)."""

    components: int | None = Field(None, gt=0)  # pca: the principal components kept (default: every feature)
    epsilon: float = Field(0.1, gt=0, le=1e6)  # added to each eigenvalue, as a fraction of their mean


class DataSpec(_Strict):
    dataset: str = "digits"  # a built-in name, or a loader of the user's: 'package.module:function'
    path: str | None = None  # relative paths are relative to the spec file's folder
    target: str | None = None  # csv: the column to predict
    num_train: int | None = Field(None, gt=0)
    num_val: int | None = Field(None, gt=0)
    num_test: int | None = Field(None, ge=0)
    dtype: Literal["float32", "float64"] = "float32"
    # None: what the backend expects; pca and zca whiten (see hpsearch.data.whitening)
    preprocess: Literal["center", "unit_range", "standardize", "pca", "zca", "none"] | None = None
    whitening: WhiteningSpec | None = None  # preprocess pca or zca only
    seed: int = Field(0, ge=0, lt=SEED_BOUND)  # the shuffle of digits, arrays and csv, the draw of synthetic data
    options: dict[str, Any] = Field(default_factory=dict)  # dataset-specific (synthetic: num_classes, num_features)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if is_reference(value):
            if not is_well_formed(value):
                raise ValueError(f"must be 'package.module:function' with Python names. Got {value!r} instead")
            return value
        return _one_of(value, (*DATASETS, "'package.module:function'"))

    @model_validator(mode="after")
    def _whitening_fits(self) -> DataSpec:
        if self.whitening is not None and self.preprocess not in ("pca", "zca"):
            raise ValueError("whitening is for preprocess pca or zca")
        if self.whitening is not None and self.whitening.components is not None and self.preprocess != "pca":
            raise ValueError("whitening.components is for preprocess pca; zca keeps every feature")
        return self


class ModelSpec(_Strict):
    backend: str = Field("numpy", min_length=1)  # a registered name (numpy, torch, ...) or 'package.module:function'
    path: str | None = None  # the folder a 'module:function' backend is imported from; default: the spec's folder


class ObjectiveSpec(_Strict):
    """The metric a study optimises. Its direction comes from the trainable where it declares the metric."""

    metric: str = Field("val_acc", min_length=1)
    direction: Literal["maximize", "minimize"] | None = None


class TrackingSpec(_Strict):
    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None


class PrunerSpec(_Strict):
    type: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    min_resource: int | Literal["auto"] = "auto"
    reduction_factor: int = Field(3, ge=2)


class ResourcesSpec(_Strict):
    """What each worker of ``run --workers N`` may use (``--gpus`` and ``--threads`` override)."""

    gpus_per_worker: int | None = Field(None, ge=0, le=64)  # default: 1 where --gpus names devices, else none
    threads_per_worker: int | None = Field(None, ge=1, le=1024)  # default: the cores split between the workers


class HeartbeatSpec(_Strict):
    """How often a running trial proves its process alive, and how long silence means it died."""

    interval: int = Field(10, ge=1)
    grace_period: int = Field(30, ge=2)

    @model_validator(mode="after")
    def _grace_exceeds_interval(self) -> HeartbeatSpec:
        if self.grace_period <= self.interval:
            raise ValueError(f"'grace_period' ({self.grace_period}) must exceed 'interval' ({self.interval})")
        return self


class ParamSpec(_Strict):
    """One searched parameter of a random or TPE phase."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"an {self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"'low' ({self.low}) must not exceed 'high' ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled parameter needs 'low' > 0. Got {self.low} instead")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log' cannot be combined")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int parameter needs whole numbers for 'low', 'high' and 'step'")
        if self.type == "int" and max(-self.low, self.high) >= 2**53:  # from there, a float skips whole numbers
            raise ValueError(f"an int parameter needs 'low' and 'high' strictly between -2**53 and 2**53. Got "
                             f"{self.low:g} to {self.high:g} instead")
        if self.high - self.low == float("inf"):  # a draw from the range would be infinite
            raise ValueError(f"'high' - 'low' must be a finite number. Got {self.low:g} to {self.high:g} instead")
        if self.step is not None and (self.high - self.low) / self.step > 2**53:  # the lattice's points are counted
            raise ValueError(f"'step' must be at least ('high' - 'low') / 2**53. Got {self.step:g} instead")
        return self


class DerivedGrid(_Strict):
    """A grid computed once from the best trials of an earlier phase."""

    source: str = Field(alias="from")
    top_k: int = Field(5, ge=1)
    points: int = Field(4, ge=1, le=MAX_POINTS)  # per numeric parameter


# a study or phase name's length: a phase is stored as <study>.<phase>.v<N> in Optuna's study names (512 characters),
# its MLflow run is named <study>/<phase> (250), the study's experiment (256) and database file (255) after the study
MAX_NAME_LENGTH = 100


def _storage_name(value: str) -> str:
    """A study or phase name: phases are stored as ``<study>.<phase>`` (``.v2`` when started afresh), so no '.'."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError(f"must be letters, digits, '_' and '-' only (phases are stored as <study>.<phase>, so no "
                         f"'.'). Got {value!r} instead")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters long (it names the study's storage, files and "
                         f"MLflow runs). Got {len(value)} characters ({value[:20]}...) instead")
    return value


class ScheduleSpec(_Strict):
    """How a phase spends its budget parameter on its points.

    ``halving`` (grid phases): successive halving over the budget ladders: every ladder trains to the first level,
    the best 1/``reduction_factor`` (by ``rank_by``) go on to the next, and so on. Levels: the grid's budget values,
    and ``first_rung`` below them (it joins the grid), or the values ``levels`` names (the grid's values between two
    levels train along, trials of their own without a ranking; a value the grid lacks joins it).

    ``asha`` (random and TPE phases): asynchronous successive halving. Each configuration trains to ``min_budget``
    first; rungs grow by ``reduction_factor`` up to ``max_budget``, and a free process promotes a configuration among
    the best 1/``reduction_factor`` of those that ended its rung (the highest rung first), else starts a new one
    (drawn ahead by a random phase, proposed then by TPE). A promoted configuration trains on from where its rung
    stopped."""

    type: Literal["halving", "asha"]
    reduction_factor: int = Field(3, ge=2)
    first_rung: int | None = Field(None, gt=0)
    levels: list[StrictInt] | None = None
    min_budget: StrictInt | None = Field(None, gt=0)
    max_budget: StrictInt | None = Field(None, gt=0)

    @field_validator("levels")
    @classmethod
    def _levels_ascend(cls, levels: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if levels is not None and info.data.get("first_rung") is not None:
            raise ValueError("and 'first_rung' exclude each other: name that value first in levels instead")
        if levels is None or (levels and levels == sorted(set(levels)) and levels[0] > 0):
            return levels
        raise ValueError(f"must be budget values > 0 in ascending order. Got {levels} instead")
    # the metric a level's ladders are ranked by, one the trainable declares (e.g. val_loss); default: the objective
    rank_by: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> ScheduleSpec:
        if self.type == "asha":
            if self.first_rung is not None or self.levels is not None:
                raise ValueError("'first_rung' and 'levels' are halving's; asha's rungs are min_budget times "
                                 "reduction_factor to the k-th power, up to max_budget")
            if self.min_budget is None or self.max_budget is None:
                raise ValueError("asha needs 'min_budget' and 'max_budget': the budget of its lowest and its top rung")
            if self.min_budget > self.max_budget:
                raise ValueError(f"'min_budget' ({self.min_budget}) must be at most 'max_budget' "
                                 f"({self.max_budget})")
        elif self.min_budget is not None or self.max_budget is not None:
            raise ValueError("'min_budget' and 'max_budget' are asha's; halving's levels are the grid's budget values "
                             "(with 'first_rung' or 'levels')")
        return self

    def rungs(self) -> tuple[int, ...]:
        """An asha schedule's rungs, in ascending budget."""
        return asha_rungs(self.min_budget, self.max_budget, self.reduction_factor)


class PhaseSpec(_Strict):
    name: str
    sampler: Literal["random", "tpe", "grid"]
    n_trials: int | None = Field(None, gt=0)
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    grid: dict[str, list[Any]] | DerivedGrid | None = None
    max_retries: int = Field(2, ge=0)
    # a grid phase's training-length parameter (num_iters, num_epochs): points that differ only in it train once
    budget: str | None = None
    schedule: ScheduleSpec | None = None  # halving over the budget ladders

    _name = field_validator("name")(_storage_name)

    @model_validator(mode="after")
    def _sampler_fits(self) -> PhaseSpec:
        if self.sampler == "grid":
            if self.schedule is not None and self.budget is None:
                raise ValueError("'schedule' halves a grid's budget ladders: name the phase's 'budget' too (num_iters "
                                 "for the numpy backend, num_epochs for torch)")
            if self.grid is None:
                raise ValueError("a grid phase needs 'grid': a mapping of lists or {from: PHASE, top_k, points}")
            if self.space:
                raise ValueError("a grid phase takes 'grid', not 'space'")
            if isinstance(self.grid, dict):
                if not self.grid:
                    raise ValueError("'grid' is empty: give at least one parameter with values")
                empty = [name for name, values in self.grid.items() if not values]
                if empty:
                    raise ValueError(f"'grid.{empty[0]}' is an empty list: give at least one value")
                if self.budget is not None and self.budget not in self.grid:
                    raise ValueError(f"'budget' must be one of the grid's parameters ({', '.join(self.grid)}). Got "
                                     f"{self.budget!r} instead")
                values = self.grid.get(self.budget) or []
                first = self.schedule.first_rung if self.schedule is not None else None
                if first is not None and values and all(type(v) is int for v in values) and first >= min(values):
                    raise ValueError(f"'schedule.first_rung' ({first}) must be below the grid's smallest "
                                     f"{self.budget} ({min(values)}): the grid's values are the levels above it")
            if self.schedule is not None and self.schedule.type != "halving":
                raise ValueError("a grid phase halves its ladders with 'schedule: {type: halving}'; 'asha' is for "
                                 "random and tpe phases, which sample their configurations")
        else:
            if self.schedule is not None and self.schedule.type == "asha":
                if self.budget is None:
                    raise ValueError("'schedule: asha' trains each configuration in rungs of a budget: name the "
                                     "phase's 'budget' too (num_iters for the numpy backend, num_epochs for torch)")
                if self.budget in self.space:
                    raise ValueError(f"'space' must not search the budget {self.budget!r}: asha sets it, rung by rung")
            elif self.schedule is not None:
                raise ValueError(f"'schedule: {{type: {self.schedule.type}}}' does not fit a {self.sampler} phase: "
                                 "halving is for grid phases, asha for random and tpe phases")
            elif self.budget is not None:
                raise ValueError(f"'budget' goes with a schedule: a grid phase's ladders share training, and a "
                                 f"{self.sampler} phase's 'schedule: {{type: asha}}' trains in rungs; without one "
                                 f"this phase trains every point afresh")
            if self.grid is not None:
                raise ValueError(f"a {self.sampler} phase takes 'space', not 'grid'")
            if not self.space:
                raise ValueError(f"a {self.sampler} phase needs a non-empty 'space'")
            if self.n_trials is None:
                raise ValueError(f"a {self.sampler} phase needs 'n_trials'")
        return self

    @property
    def samples_under_asha(self) -> bool:
        """Whether the phase samples its configurations (random, TPE) and trains them under ASHA."""
        return self.sampler != "grid" and self.schedule is not None and self.schedule.type == "asha"

    @property
    def asks_sampler(self) -> bool:
        """Whether each trial is asked of Optuna's sampler as it starts (TPE without a schedule), rather than taken
        from the phase's points (a grid's, a random phase's drawn, a TPE phase's proposed under ASHA)."""
        return self.sampler == "tpe" and self.schedule is None


class StudySpec(_Strict):
    name: str
    seed: int = Field(0, ge=0, lt=SEED_BOUND)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    defaults: dict[str, Any] = Field(default_factory=dict)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    storage: str | None = None
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    phases: list[PhaseSpec] = Field(default_factory=list)
    heartbeat: HeartbeatSpec = Field(default_factory=HeartbeatSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    # seconds within which `hpsearch run` ends with a result (see hpsearch.engine.budget.Budget); None: no box
    time_box: float | None = None
    provenance: dict[str, Any] | None = None  # written by `hpsearch best`: where a configuration came from

    # where the spec came from, and whether it may import code from outside installed packages; not part of the YAML
    source: str = Field("<spec>", exclude=True)
    base_dir: str | None = Field(None, exclude=True)
    allow_import: bool = Field(False, exclude=True)

    _name = field_validator("name")(_storage_name)

    @field_validator("time_box", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else seconds(value)

    @model_validator(mode="after")
    def _phases_consistent(self) -> StudySpec:
        seen: list[str] = []
        for phase in self.phases:
            if phase.name in seen:
                raise ValueError(f"phase name {phase.name!r} is used twice")
            if isinstance(phase.grid, DerivedGrid):
                if phase.grid.source not in seen:
                    raise ValueError(
                        f"phase {phase.name!r} derives its grid from {phase.grid.source!r}, "
                        "which must be an earlier phase"
                    )
                source = self.phase(phase.grid.source).schedule
                if source is not None and source.type == "asha":
                    raise ValueError(f"phase {phase.name!r} derives its grid from {phase.grid.source!r}, whose asha "
                                     "rungs rank configurations at different budgets; derive it from a phase without "
                                     "a schedule")
            seen.append(phase.name)
        return self

    def phase(self, name: str) -> PhaseSpec:
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise SpecError(f"{self.source}: no phase named {name!r}; phases are {', '.join(p.name for p in self.phases)}.")

    @property
    def trainable(self) -> Trainable:
        """What ``model.backend`` names: imported once per process."""
        from hpsearch.backends import load_trainable

        return load_trainable(self.model.backend, where=f"{self.source}: model.backend",
                              base_dir=self.model.path or self.base_dir, allow_import=self.allow_import)

    def config(self, **params: Any) -> dict[str, Any]:
        """The full configuration for a trial: ``defaults`` overridden by ``params``."""
        return {**self.defaults, **params}

    def drawn(self, phase: PhaseSpec) -> list[dict[str, Any]]:
        """A random phase's points: its configurations drawn from the study's seed, each at each rung of an asha
        schedule (:func:`hpsearch.search.asha.rung_points`). A TPE phase's are what a random phase of its space would
        draw: stand-ins for the configurations it will propose, to check and price them ahead."""
        configurations = random_points(phase.space, phase.n_trials, self.seed, phase.name)
        if phase.schedule is None:
            return configurations
        return rung_points(configurations, phase.budget, phase.schedule.rungs())

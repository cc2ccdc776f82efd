"""Phases as Optuna studies: which study serves each phase, created once and atomically, and edits refused.

The study's *layout* is one value in the ``hpsearch_state`` table: the context the study was started with (seed, data,
model, resolved defaults, objective) and, per phase, its Optuna study's name, its definition and its grid. A phase
exists when its record is in the layout, and the record is written in one statement after its Optuna study was
created: a process killed in between leaves an empty Optuna study that no record names, which the next run adopts.
``--force-new-phase`` after a context change writes the new context and an empty phase list in the same statement,
so old trials are never read under a new context.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any, Callable, Mapping

import optuna

from hpsearch import grid as grids
from hpsearch.formatting import format_value, wrap_items
from hpsearch.errors import SpecError, UserError
from hpsearch.ladders import check_budget
from hpsearch.records import SharedState, StateTable, decode_params, encode_param
from hpsearch.spec import DerivedGrid, PhaseSpec, StudySpec
from hpsearch.storage import storage_lock
from hpsearch.training import resolved_config
from hpsearch.trialstore import TrialStore

__all__ = ["GRID_CHOICES", "PointParams", "Phases", "context_of", "describe_changes", "point_params"]

LEGACY = "hpsearch:"  # attribute prefix of the registry study that older versions kept
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


def context_of(spec: StudySpec, fingerprint: str) -> dict[str, Any]:
    """What gives trials their meaning; a change here would make old and new trials incomparable."""
    return json.loads(json.dumps({
        "seed": spec.seed,
        "data": spec.data.model_dump(exclude={"path"}),
        "model": spec.model.model_dump(exclude={"path"}),  # where the code lives is no part of what it means
        "defaults": resolved_config(spec),  # the backend's own values written out or not: the same context
        "objective": spec.objective.model_dump(),
        "data_fingerprint": fingerprint,
    }))


def describe_changes(stored: Any, current: Any, path: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        changes = []
        for key in sorted(set(stored) | set(current), key=str):
            where = f"{path}.{key}" if path else str(key)
            if stored.get(key, current.get(key)) is None and current.get(key, stored.get(key)) is None:
                continue  # an option left unset is the same as one a study's older version did not know
            if key not in current:
                changes.append(f"{where}: removed (was {json.dumps(stored[key])})")
            elif key not in stored:
                changes.append(f"{where}: added {json.dumps(current[key])}")
            else:
                changes.extend(describe_changes(stored[key], current[key], where))
        return changes
    if stored != current:
        return [f"{path}: {json.dumps(stored)} -> {json.dumps(current)}"]
    return []


def _retired(layout: dict[str, Any] | None, phases: list[str] | None = None) -> list[str]:
    """The Optuna studies of earlier generations, with those of ``phases`` (every phase when None) of ``layout``."""
    if layout is None:
        return []
    records = layout["phases"]
    leaving = [records[name]["study"] for name in (records if phases is None else phases)]
    return [*layout.get("retired", []), *leaving]


def definition_of(phase: PhaseSpec) -> dict[str, Any]:
    # max_retries may change between runs, except under halving: when a point has failed for good decides a level
    kept = {"name", "n_trials"} | ({"max_retries"} if phase.schedule is None else set())
    definition = phase.model_dump(mode="json", by_alias=True, exclude=kept)
    return json.loads(json.dumps({key: value for key, value in definition.items() if value not in (None, {}, [])}))


def point_params(phase: PhaseSpec, record: dict[str, Any]) -> PointParams:
    """How a point of the phase is stored as a trial's params: each value in Optuna's encoding (lists as JSON text),
    with the distribution Optuna (importances, optuna-dashboard) is told it was drawn from."""
    if phase.sampler == "grid":
        shared = {name: _shared_distribution(values, bool(record.get(BOUNDED)))
                  for name, values in record["grid"].items()}
    else:
        shared = _space_distributions(phase)
    one_choice = optuna.distributions.CategoricalDistribution

    def params(point: Mapping[str, Any]) -> dict[str, tuple[Any, optuna.distributions.BaseDistribution]]:
        encoded = {name: encode_param(value) for name, value in point.items()}
        return {name: (value, shared[name] or one_choice([value])) for name, value in encoded.items()}

    return params


def _space_distributions(phase: PhaseSpec) -> dict[str, optuna.distributions.BaseDistribution]:
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
    """The layout of one study in one storage, and the phases' Optuna studies."""

    def __init__(self, spec: StudySpec, url: str, storage: optuna.storages.RDBStorage, table: StateTable,
                 *, force_new_phase: bool = False, echo: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.url = url
        self.storage = storage
        self.table = table
        self.store = TrialStore(storage)
        self.force_new_phase = force_new_phase
        self.echo = echo
        self.generation: int | None = None  # the layout's generation this process works in (see :meth:`follow`)
        self._context: dict[str, Any] | None = None  # the context of this process's spec
        self._studies: dict[str, str] = {}  # phase: the Optuna study this process knows serves it in its generation

    # ---- the layout ------------------------------------------------------------------------------------------

    def layout(self) -> dict[str, Any] | None:
        layout = self.table.get(self.spec.name, "layout")
        if layout is None:
            layout = self._migrate()
        return layout

    def _write(self, layout: dict[str, Any]) -> None:
        # the generation beside the layout, in the same statement: a process checks it before each claim (follow),
        # and reads the whole layout only when it moved
        self.table.put_many(self.spec.name, {"layout": layout, "generation": layout["generation"]})

    def _migrate(self) -> dict[str, Any] | None:
        """Adopt the registry study of earlier versions (context and phase attributes) into one layout value."""
        try:
            registry = optuna.load_study(study_name=self.spec.name, storage=self.storage)
        except KeyError:
            return None
        attrs = registry.user_attrs
        if LEGACY + "context" not in attrs:
            return None
        with storage_lock(self.url, f"{self.spec.name}:phases"):
            layout = self.table.get(self.spec.name, "layout")
            if layout is not None:
                return layout
            phases = {}
            names = attrs.get(LEGACY + "phases") or {}
            for phase in self.spec.phases:
                name = names.get(phase.name, f"{self.spec.name}.{phase.name}")
                try:
                    study = optuna.load_study(study_name=name, storage=self.storage)
                except KeyError:
                    continue
                if LEGACY + "definition" in study.user_attrs:
                    phases[phase.name] = {"study": name, "definition": study.user_attrs[LEGACY + "definition"],
                                          "grid": study.user_attrs.get(LEGACY + "grid")}
            context = attrs[LEGACY + "context"]
            context["defaults"] = resolved_config(self.spec.model_copy(update={"defaults": context["defaults"]}))
            layout = {"generation": 1, "context": context, "phases": phases}
            for key, value in attrs.items():
                if key.startswith(LEGACY + "shared:"):
                    self.table.put(self.spec.name, key[len(LEGACY):], value)
            result = attrs.get(LEGACY + "result")
            if result:
                self.table.put(self.spec.name, "result", {**result, "generation": 1})
            self._write(layout)
            return layout

    def check_context(self, fingerprint: str, *, write: bool = True) -> dict[str, Any]:
        """The stored layout, created with this context on the first run; a changed context is refused, or with
        --force-new-phase starts every phase afresh (one write: new context, no phases). The layout returned is the
        generation this process then works in (see :meth:`follow`)."""
        current = context_of(self.spec, fingerprint)
        layout = self.layout()
        if layout is not None:
            changes = describe_changes(layout["context"], self._as_stored(layout["context"], current))
            if not changes:
                return self._working_in(layout, current)
            if not self.force_new_phase:
                raise SpecError(
                    f"{self.spec.source}: the spec changed since study {self.spec.name!r} started: "
                    f"{'; '.join(changes)}. Restore it, or rerun with --force-new-phase to start every phase afresh "
                    "(stored trials are kept)."
                )
        if not write:
            return layout or {"generation": 0, "context": current, "phases": {}}
        with storage_lock(self.url, f"{self.spec.name}:phases"):
            stored = self.table.get(self.spec.name, "layout")
            if stored is not None and not describe_changes(stored["context"],
                                                           self._as_stored(stored["context"], current)):
                return self._working_in(stored, current)  # another process wrote the same change first
            generation = (stored or {}).get("generation", 0) + 1
            layout = {"generation": generation, "context": current, "phases": {}, "retired": _retired(stored)}
            self._write(layout)
            return self._working_in(layout, current)

    def _working_in(self, layout: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        self.generation, self._context = layout["generation"], context
        self._studies = {name: record["study"] for name, record in layout["phases"].items()}
        return layout

    def check_stored(self, phases: list[PhaseSpec]) -> dict[str, Any] | None:
        """For the commands that only read a study (status, best, export, report, sync): the stored layout, refused
        when the spec differs from the one the study ran with (its context, but the data's fingerprint, which would
        need the data loaded; or a phase's definition). Without this, a changed ``--set`` or a spec left behind by
        another process's --force-new-phase would present the stored winner under values it never trained with."""
        layout = self.layout()
        if layout is None:
            return None
        stored = layout["context"]
        current = {**context_of(self.spec, stored.get("data_fingerprint")), "data_fingerprint": stored.get(
            "data_fingerprint")}
        changes = describe_changes(stored, self._as_stored(stored, current))
        for phase in phases:
            record = layout["phases"].get(phase.name)
            if record is not None:
                changes += [f"phase {phase.name!r}: {change}"
                            for change in describe_changes(record["definition"], definition_of(phase))]
        if changes:
            raise SpecError(
                f"{self.spec.source}: the spec differs from the one study {self.spec.name!r} was run with: "
                f"{'; '.join(changes)}. A stored study is read with the spec it ran with: restore it (or leave out "
                "the --set)."
            )
        return layout

    def follow(self) -> None:
        """Check, before this process writes on its generation's behalf (claims a trial, creates a phase, stores the
        result), that the study is still that generation: one small read while it is.

        Another process's --force-new-phase moves the generation. When the new generation is this process's spec,
        and every phase this process worked in is still served by the same Optuna study (two processes restarting a
        study alike), this process goes on in it; otherwise it stops with one line, its finished trials kept, so
        that trials of two specs never mix in one study.
        """
        generation = self.table.get(self.spec.name, "generation")
        if generation is not None and generation == self.generation:
            return
        layout = self.layout()
        if layout is not None and layout["generation"] == self.generation:
            return  # a layout written before the generation was kept beside it
        changes = ["its records were removed"] if layout is None else describe_changes(
            self._as_stored(layout["context"], self._context or {}), layout["context"])
        for mine in self.spec.phases if layout is not None else []:
            record = layout["phases"].get(mine.name)
            if record is not None:
                changes += [f"phase {mine.name!r}: {change}"
                            for change in describe_changes(definition_of(mine), record["definition"])]
            if mine.name in self._studies and (record or {}).get("study") != self._studies[mine.name]:
                changes.append(f"phase {mine.name!r} was started afresh")
        if changes:
            raise SpecError(
                f"{self.spec.source}: study {self.spec.name!r} changed under this run: another process started it "
                f"afresh (--force-new-phase), {'; '.join(dict.fromkeys(changes))}. This run stops here and keeps its "
                "finished trials; rerun with the study's spec as it is now, or with --force-new-phase to start afresh "
                "with this one."
            )
        self.generation = layout["generation"]
        self._studies = {name: record["study"] for name, record in layout["phases"].items()}

    def _as_stored(self, stored: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        """``current`` without the trainable's settings that the stored context predates and that are at their
        defaults: an option added to a backend later, left at the value that trains as before, is no change."""
        model = self.spec.trainable.config_model
        old, new = stored.get("defaults"), current.get("defaults")
        if model is None or not isinstance(old, dict) or not isinstance(new, dict):
            return current
        fields = model.model_fields
        kept = {key: value for key, value in new.items()
                if key in old or key not in fields or value != fields[key].get_default(call_default_factory=True)}
        return {**current, "defaults": kept}

    def retire_changed(self) -> None:
        """--force-new-phase: drop the records of phases whose definition changed, so they are created afresh."""
        with storage_lock(self.url, f"{self.spec.name}:phases"):
            layout = self.layout()
            if layout is None:
                return
            changed = [p.name for p in self.spec.phases if p.name in layout["phases"]
                       and describe_changes(layout["phases"][p.name]["definition"], definition_of(p))]
            if changed:  # a new generation: a process still running the old definitions stops (see follow)
                layout = {**layout, "generation": layout["generation"] + 1,
                          "phases": {k: v for k, v in layout["phases"].items() if k not in changed},
                          "retired": _retired(layout, changed)}
                self._write(layout)
            self._working_in(layout, self._context or {})

    def refuse_changes(self, phases: list[PhaseSpec]) -> list[str]:
        """Names of ``phases`` whose definition changed; raises unless --force-new-phase was given."""
        layout = self.layout() or {"phases": {}}
        changed = []
        for phase in phases:
            record = layout["phases"].get(phase.name)
            if record is None:
                continue
            changes = describe_changes(record["definition"], definition_of(phase))
            if changes and not self.force_new_phase:
                study_id = self.storage.get_study_id_from_name(record["study"])
                finished = sum(r.state in ("COMPLETE", "PRUNED") for r in self.store.rows(study_id))
                raise SpecError(
                    f"{self.spec.source}: phase {phase.name!r} changed since it started: {'; '.join(changes)}. "
                    f"Restore it, or rerun with --force-new-phase to start the phase afresh "
                    f"(its {finished} finished trials stay in the storage)."
                )
            if changes:
                changed.append(phase.name)
        return changed

    def shared(self) -> SharedState:
        return SharedState(self.url, self.spec.name)

    # ---- the phases' studies ---------------------------------------------------------------------------------

    def record(self, phase: PhaseSpec, layout: dict[str, Any] | None = None) -> dict[str, Any] | None:
        layout = layout if layout is not None else self.layout()
        return (layout or {"phases": {}})["phases"].get(phase.name)

    def load(self, phase: PhaseSpec, record: dict[str, Any] | None = None) -> optuna.Study | None:
        record = record if record is not None else self.record(phase)
        if record is None:
            return None
        return optuna.load_study(study_name=record["study"], storage=self.storage, sampler=self.sampler(phase, 0))

    def open(self, phase: PhaseSpec) -> tuple[optuna.Study, dict[str, Any]]:
        """The phase's Optuna study and record, created (and its grid derived) exactly once."""
        record = self.record(phase)
        if record is None or describe_changes(record["definition"], definition_of(phase)):
            with storage_lock(self.url, f"{self.spec.name}:phases"):
                self.follow()
                layout = self.layout()
                record = layout["phases"].get(phase.name)
                if record is None or describe_changes(record["definition"], definition_of(phase)):
                    record = self._create(phase, layout)
        self._studies[phase.name] = record["study"]
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
        self._write({**layout, "generation": generation, "phases": {**layout["phases"], phase.name: record},
                     "retired": _retired(layout, replaced)})
        self.generation = generation
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
        return study.direction == wanted and not self.store.rows(study._study_id)

    def points_grid(self, phase: PhaseSpec) -> dict[str, list[Any]] | None:
        """The grid a grid phase enumerates (derived now if the spec asks for it); None for other samplers."""
        if phase.sampler != "grid":
            return None
        if isinstance(phase.grid, dict):
            return grids.with_rungs(phase, phase.grid)
        source_phase = self.spec.phase(phase.grid.source)
        record = self.record(source_phase)
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
        grids.check_derived_size(self.spec, phase, grid)  # before the phase's record: a rerun is refused alike
        return grid

    def points(self, phase: PhaseSpec, record: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The phase's fixed list of points; None for a TPE phase."""
        if phase.sampler == "grid":
            return grids.grid_points(record["grid"])
        if phase.sampler == "random":
            return grids.random_points(phase.space, phase.n_trials, self.spec.seed, phase.name)
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

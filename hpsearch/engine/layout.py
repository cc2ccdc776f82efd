"""The study's layout: one value in the ``hpsearch_state`` table that says what the study was started with and which
Optuna study serves each phase.

The layout holds the context the study was started with (seed, data, model, resolved defaults, objective), its
*generation*, and per phase its Optuna study's name, its definition and its grid. A phase exists when its record is in
the layout (:class:`~hpsearch.engine.phases.Phases` writes it in one statement after its Optuna study was created).
``--force-new-phase`` after a context change writes the new context and an empty phase list in the same statement,
and moves the generation, so old trials are never read under a new context and a process still running the old
definitions stops (:meth:`Layout.follow`).
"""

from __future__ import annotations

import json
from typing import Any

from hpsearch.engine.training import resolved_config
from hpsearch.errors import SpecError
from hpsearch.spec.models import PhaseSpec, StudySpec
from hpsearch.storage.connections import storage_lock
from hpsearch.storage.records import StateTable
from hpsearch.storage.trialstore import TrialStore

__all__ = ["Layout", "context_of", "definition_of", "describe_changes", "retired"]


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


def retired(layout: dict[str, Any] | None, phases: list[str] | None = None) -> list[str]:
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


class Layout:
    """The layout of one study in one storage, as this process works in it: the generation it read last."""

    def __init__(self, spec: StudySpec, url: str, table: StateTable, store: TrialStore, *,
                 force_new_phase: bool = False) -> None:
        self.spec = spec
        self.url = url
        self.table = table
        self.store = store
        self.force_new_phase = force_new_phase
        self.generation: int | None = None  # the layout's generation this process works in (see :meth:`follow`)
        self._context: dict[str, Any] | None = None  # the context of this process's spec
        self.studies: dict[str, str] = {}  # phase: the Optuna study this process knows serves it in its generation

    def read(self) -> dict[str, Any] | None:
        """The stored layout; None before a study's first run."""
        return self.table.get(self.spec.name, "layout")

    def write(self, layout: dict[str, Any]) -> None:
        # the generation beside the layout, in the same statement: a process checks it before each claim (follow),
        # and reads the whole layout only when it moved
        self.table.put_many(self.spec.name, {"layout": layout, "generation": layout["generation"]})

    def check_context(self, fingerprint: str, *, write: bool = True) -> dict[str, Any]:
        """The stored layout, created with this context on the first run; a changed context is refused, or with
        --force-new-phase starts every phase afresh (one write: new context, no phases). The layout returned is the
        generation this process then works in (see :meth:`follow`)."""
        current = context_of(self.spec, fingerprint)
        layout = self.read()
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
            layout = {"generation": generation, "context": current, "phases": {}, "retired": retired(stored)}
            self.write(layout)
            return self._working_in(layout, current)

    def _working_in(self, layout: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        self.generation, self._context = layout["generation"], context
        self.studies = {name: record["study"] for name, record in layout["phases"].items()}
        return layout

    def check_stored(self, phases: list[PhaseSpec]) -> dict[str, Any] | None:
        """For the commands that only read a study (status, best, export, report, sync): the stored layout, refused
        when the spec differs from the one the study ran with (its context, but the data's fingerprint, which would
        need the data loaded; or a phase's definition). Without this, a changed ``--set`` or a spec left behind by
        another process's --force-new-phase would present the stored winner under values it never trained with."""
        layout = self.read()
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
        layout = self.read()
        if layout is not None and layout["generation"] == self.generation:
            return  # a layout written before the generation was kept beside it
        changes = ["its records were removed"] if layout is None else describe_changes(
            self._as_stored(layout["context"], self._context or {}), layout["context"])
        for mine in self.spec.phases if layout is not None else []:
            record = layout["phases"].get(mine.name)
            if record is not None:
                changes += [f"phase {mine.name!r}: {change}"
                            for change in describe_changes(definition_of(mine), record["definition"])]
            if mine.name in self.studies and (record or {}).get("study") != self.studies[mine.name]:
                changes.append(f"phase {mine.name!r} was started afresh")
        if changes:
            raise SpecError(
                f"{self.spec.source}: study {self.spec.name!r} changed under this run: another process started it "
                f"afresh (--force-new-phase), {'; '.join(dict.fromkeys(changes))}. This run stops here and keeps its "
                "finished trials; rerun with the study's spec as it is now, or with --force-new-phase to start afresh "
                "with this one."
            )
        self.generation = layout["generation"]
        self.studies = {name: record["study"] for name, record in layout["phases"].items()}

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
            layout = self.read()
            if layout is None:
                return
            changed = [p.name for p in self.spec.phases if p.name in layout["phases"]
                       and describe_changes(layout["phases"][p.name]["definition"], definition_of(p))]
            if changed:  # a new generation: a process still running the old definitions stops (see follow)
                layout = {**layout, "generation": layout["generation"] + 1,
                          "phases": {k: v for k, v in layout["phases"].items() if k not in changed},
                          "retired": retired(layout, changed)}
                self.write(layout)
            self._working_in(layout, self._context or {})

    def refuse_changes(self, phases: list[PhaseSpec]) -> list[str]:
        """Names of ``phases`` whose definition changed; raises unless --force-new-phase was given."""
        layout = self.read() or {"phases": {}}
        changed = []
        for phase in phases:
            record = layout["phases"].get(phase.name)
            if record is None:
                continue
            changes = describe_changes(record["definition"], definition_of(phase))
            if changes and not self.force_new_phase:
                study_id = self.store.study_id(record["study"])
                finished = sum(r.state in ("COMPLETE", "PRUNED") for r in self.store.rows(study_id))
                raise SpecError(
                    f"{self.spec.source}: phase {phase.name!r} changed since it started: {'; '.join(changes)}. "
                    f"Restore it, or rerun with --force-new-phase to start the phase afresh "
                    f"(its {finished} finished trials stay in the storage)."
                )
            if changes:
                changed.append(phase.name)
        return changed

    def record(self, phase: PhaseSpec, layout: dict[str, Any] | None = None) -> dict[str, Any] | None:
        layout = layout if layout is not None else self.read()
        return (layout or {"phases": {}})["phases"].get(phase.name)

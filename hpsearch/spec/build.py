"""A study spec built from its YAML or a mapping: validated into :class:`~hpsearch.spec.models.StudySpec`, held
against its trainable's configuration model, its data and the search algorithms' limits; and the best trial written
back as a spec that ``hpsearch train`` runs again.

Errors name the file and the YAML path of the offending value, in one line:

    studies/x.yaml: defaults.learning_rate must be greater than 0. Got -1 instead.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hpsearch.data import FILE_DATASETS
from hpsearch.errors import SpecError
from hpsearch.files import SPEC, FileTooLarge, NotRegularFile, read_bounded
from hpsearch.plugins import allow_import_from_env, is_reference
from hpsearch.search.grid import phase_size
from hpsearch.spec.checks import check_budget, check_proposals, check_rungs
from hpsearch.spec.document import apply_override, parse_override, yaml_load
from hpsearch.spec.models import StudySpec
from hpsearch.validation import format_error, validation_message

__all__ = ["best_fragment", "build_spec", "load_spec"]

# an asha phase of at most this many points has each configuration it will draw checked against the trainable as the
# spec loads; a larger one, when the phase opens (drawing them on every command would cost seconds)
DRAWN_AT_LOAD = 10_000


def _validate_backend_params(spec: StudySpec) -> None:
    """Check defaults, searched names and grid values against the backend's own configuration model."""
    config_model = spec.trainable.config_model
    if config_model is None:
        return  # a function without a config model takes its values as the YAML gives them
    fields = set(config_model.model_fields)

    def check(config: dict[str, Any], where: str) -> None:
        try:
            config_model(**config)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = ".".join(str(p) for p in error["loc"])
            if error["type"] == "extra_forbidden":
                raise SpecError(
                    f"{spec.source}: {where}.{name} is not a parameter of the {spec.model.backend} backend; "
                    f"it takes {', '.join(sorted(fields))}."
                ) from None
            detail = format_error({**error, "loc": ()})
            raise SpecError(f"{spec.source}: {where}.{name} {detail}") from None

    check(spec.defaults, "defaults")
    for index, phase in enumerate(spec.phases):
        names = list(phase.space) + (list(phase.grid) if isinstance(phase.grid, dict) else [])
        unknown = [name for name in names if name not in fields]
        if unknown:
            raise SpecError(
                f"{spec.source}: phases[{index}] ({phase.name}) searches unknown parameter {unknown[0]!r}; "
                f"the {spec.model.backend} backend takes {', '.join(sorted(fields))}."
            )
        if isinstance(phase.grid, dict):
            for name, values in phase.grid.items():
                for value in values:
                    check(spec.config(**{name: value}), f"phases[{index}].grid")
        for name, param in phase.space.items():
            probes = param.choices if param.type == "categorical" else [param.low, param.high]
            for value in probes:
                if param.type == "int" and value is not None:
                    value = int(value)
                check(spec.config(**{name: value}), f"phases[{index}].space")


def build_spec(raw: Any, source: str, base_dir: Path, allow_import: bool = False,
               modules_from_base_dir: bool = True) -> StudySpec:
    """Validate a spec mapping. ``base_dir`` is its folder: relative data paths, and (unless
    ``modules_from_base_dir`` is False) the user's modules, are there."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a study spec must be a YAML mapping with at least 'name'.")
    raw = copy.deepcopy(raw)
    for key in ("source", "base_dir", "allow_import"):  # fields that record where the spec came from, not YAML
        if key in raw:
            raise SpecError(f"{source}: unknown key {key!r}.")
    try:  # keys need not be strings (YAML's '1: x')
        spec = StudySpec.model_validate({
            **raw, "source": source, "allow_import": allow_import,
            "base_dir": str(Path(base_dir).resolve()) if modules_from_base_dir else None})
    except ValidationError as exc:
        raise SpecError(validation_message(source, exc)) from None
    if spec.data.path is not None and not _expand_user(spec.data.path, source).is_absolute():
        spec.data.path = str((base_dir / spec.data.path).resolve())
    if spec.model.path is not None:
        spec.model.path = str((base_dir / _expand_user(spec.model.path, source)).resolve())
    _validate_data(spec)
    _validate_objective(spec)
    _validate_backend_params(spec)
    for index, phase in enumerate(spec.phases):
        where = f"phases[{index}] ({phase.name})"
        if phase.sampler == "tpe" and phase.samples_under_asha:
            check_proposals(spec, phase, where=where)  # each choice TPE may propose, at the top rung
        elif phase.samples_under_asha and phase_size(phase) <= DRAWN_AT_LOAD:
            check_rungs(spec, phase, spec.drawn(phase), where=where)  # every configuration drawn, at its top rung
        elif phase.budget is not None:  # a derived grid's points are checked when it is derived
            check_budget(spec, phase, phase.grid if isinstance(phase.grid, dict) else None, where=where)
    return spec


def _validate_objective(spec: StudySpec) -> None:
    """The objective against the metrics the trainable declares; fills in the direction that improves the metric."""
    objective, declared = spec.objective, spec.trainable.metrics
    if declared is None:
        if objective.direction is None:
            raise SpecError(f"{spec.source}: objective.direction is required ('maximize' or 'minimize'): the "
                            f"trainable {spec.model.backend} does not declare which way {objective.metric!r} improves.")
        return
    if objective.metric not in declared:
        raise SpecError(f"{spec.source}: objective.metric must be one of {', '.join(declared)} (what the "
                        f"{spec.model.backend} trainable reports). Got {objective.metric!r} instead.")
    wanted = declared[objective.metric]
    if objective.direction is not None and objective.direction != wanted:
        better = "higher" if wanted == "maximize" else "lower"
        raise SpecError(f"{spec.source}: objective.direction must be {wanted!r} for the metric {objective.metric!r} "
                        f"({better} is better), or left out. Got {objective.direction!r} instead.")
    objective.direction = wanted


def _expand_user(path: str, source: str) -> Path:
    try:
        return Path(path).expanduser()
    except RuntimeError:  # '~someone' for a user this machine does not know
        raise SpecError(f"{source}: data.path {path!r} names a user's home folder that does not exist.") from None


def _validate_data(spec: StudySpec) -> None:
    """What one field of ``data`` cannot check alone: ``path`` and ``target`` for the user's files, ``options``
    against the dataset's own options (digits and cifar10 take none; a loader's are its own, but ``task``)."""
    from hpsearch.data import options_model

    data, source = spec.data, spec.source
    if data.dataset in FILE_DATASETS and data.path is None:
        what = "an .npz file" if data.dataset == "arrays" else "a .csv file with a header row"
        raise SpecError(f"{source}: data.path is required for the {data.dataset} dataset ({what}).")
    if data.dataset == "csv" and data.target is None:
        raise SpecError(f"{source}: data.target is required for the csv dataset (the name of the column to predict).")
    if data.dataset != "csv" and data.target is not None:
        raise SpecError(f"{source}: data.target names the column to predict of a csv table; the {data.dataset} "
                        "dataset takes none.")
    if is_reference(data.dataset):
        passed = [key for key in ("seed", "path") if key in data.options]
        if passed:
            raise SpecError(f"{source}: data.options.{passed[0]} is passed to the loader from data.{passed[0]}; set "
                            "that instead.")
    model = options_model(data.dataset)
    try:
        model(**data.options)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            takes = ", ".join(model.model_fields) or "none"
            raise SpecError(f"{source}: data.options.{name} is not an option of the {data.dataset} "
                            f"dataset; it takes {takes}.") from None
        raise SpecError(f"{source}: data.options.{name} {format_error({**error, 'loc': ()})}") from None


def load_spec(path: str | Path, overrides: list[str] | None = None, allow_import: bool | None = None) -> StudySpec:
    """Read, override and validate a study spec. ``--set data.path=...`` is relative to the working directory.

    allow_import: whether ``model.backend`` or ``data.dataset`` may import modules from outside the installed packages
    and the spec's folder (None: ``$HPSEARCH_ALLOW_IMPORT``).
    """
    spec_path = Path(path)
    source = str(path)
    try:
        text = read_bounded(spec_path, SPEC).decode()
    except FileNotFoundError:
        raise SpecError(f"{source}: spec file not found.") from None
    except NotRegularFile as exc:  # /dev/zero, a FIFO, a folder
        raise SpecError(f"{source}: {exc}; a spec is a YAML file.") from None
    except FileTooLarge as exc:
        raise SpecError(f"{source}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{source}: cannot read the spec ({exc.__class__.__name__}).") from None
    raw = yaml_load(text, source)
    if raw is None:
        raise SpecError(f"{source}: the spec is empty.")
    for item in overrides or []:
        key_path, value = parse_override(item)
        if key_path == ["data", "path"] and isinstance(value, str):
            value = str(_expand_user(value, f"--set {item!r}").resolve())
        if not isinstance(raw, dict):
            break
        apply_override(raw, key_path, value, item)
    if allow_import is None:
        allow_import = allow_import_from_env()
    return build_spec(raw, source, spec_path.parent, allow_import)


def best_fragment(spec: StudySpec, best: dict[str, Any]) -> dict[str, Any]:
    """The best trial as a spec that ``hpsearch train`` runs again: its full config, its seed, where it came from."""
    import hpsearch
    from hpsearch.backends.base import scores_on_test

    return {
        "name": f"{spec.name}-best",
        "seed": best["seed"],
        "data": spec.data.model_dump(exclude_none=True),
        # the trainable's code stays where it is, wherever the fragment is written
        "model": {**spec.model.model_dump(exclude_none=True),
                  **({"path": spec.base_dir} if is_reference(spec.model.backend) and spec.base_dir
                     and not spec.model.path else {})},
        "defaults": best["config"],
        "objective": spec.objective.model_dump(),
        "provenance": {
            "study": spec.name, "phase": best["phase"], "trial": best["trial"],
            best["metric"]: best["value"], "seed": best["seed"],
            **scores_on_test(best),
            "data_fingerprint": best["data_fingerprint"], "hpsearch_version": hpsearch.__version__,
        },
    }

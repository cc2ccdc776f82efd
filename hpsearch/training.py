"""One training run from a spec: load its data, resolve its configuration, call its backend.

Shared by ``hpsearch train`` and the study driver; knows neither Optuna nor MLflow.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import ValidationError

from hpsearch.backends import TrainResult, get_backend
from hpsearch.data import Dataset, load_dataset
from hpsearch.errors import SpecError
from hpsearch.spec import StudySpec, validation_message


def load_data(spec: StudySpec) -> Dataset:
    """The spec's dataset, split and preprocessed."""
    d = spec.data
    backend = get_backend(spec.model.backend)
    if hasattr(backend, "require"):
        backend.require()  # e.g. torch: one clear line when it is not installed
    data = load_dataset(
        d.dataset, path=d.path, num_train=d.num_train, num_val=d.num_val, num_test=d.num_test,
        dtype=d.dtype, seed=d.seed, preprocess=d.preprocess or backend.PREPROCESS, target=d.target,
        base_dir=getattr(spec, "base_dir", None), allow_import=getattr(spec, "allow_import", False), **d.options,
    )
    if data.task not in getattr(backend, "TASKS", ("classification",)):  # the built-in backends are classifiers
        raise SpecError(f"{spec.source}: the {spec.model.backend} backend does not train on {data.task} targets, "
                        f"which {data.name} holds; if they are class labels, set data.options.task: classification.")
    return data


def resolved_config(spec: StudySpec, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every setting the backend trains with: its own defaults, the spec's ``defaults``, then ``params``."""
    config = spec.config(**(params or {}))
    try:
        return get_backend(spec.model.backend).CONFIG_MODEL(**config).model_dump()
    except ValidationError as exc:
        raise SpecError(validation_message(spec.source, exc)) from None


def train_once(
    spec: StudySpec,
    data: Dataset,
    params: dict[str, Any] | None = None,
    *,
    seed: int | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train the spec's backend with ``defaults`` overridden by ``params``."""
    backend = get_backend(spec.model.backend)
    config = resolved_config(spec, params)
    batch_size = config.get("batch_size")
    if isinstance(batch_size, int) and batch_size > len(data.y_train):
        raise SpecError(
            f"{spec.source}: batch_size {batch_size} is larger than the training split ({len(data.y_train)} samples)."
        )
    return backend.train(config, data, seed=spec.seed if seed is None else seed, on_epoch=on_epoch)

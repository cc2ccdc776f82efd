"""One training run from a spec: load its data, resolve its configuration, call its trainable.

Shared by ``hpsearch train`` and the study driver; knows neither Optuna nor MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from hpsearch.backends import TrainResult
from hpsearch.backends.base import Training, scores_on_test
from hpsearch.data import Dataset, load_dataset
from hpsearch.errors import SpecError
from hpsearch.spec.models import StudySpec
from hpsearch.validation import validation_message


def load_data(spec: StudySpec) -> Dataset:
    """The spec's dataset, split and preprocessed; its test split kept for the end (see :func:`without_test`)."""
    d = spec.data
    trainable = spec.trainable
    if trainable.require is not None:
        trainable.require()  # e.g. torch: one clear line when it is not installed
    data = load_dataset(
        d.dataset, path=d.path, num_train=d.num_train, num_val=d.num_val, num_test=d.num_test,
        dtype=d.dtype, seed=d.seed, preprocess=d.preprocess or trainable.preprocess, target=d.target,
        base_dir=spec.base_dir, allow_import=spec.allow_import,
        whitening=d.whitening.model_dump() if d.whitening else None, **d.options,
    )
    if data.task not in trainable.tasks:
        hint = "; if they are class labels, set data.options.task: classification" if data.task == "regression" else ""
        raise SpecError(f"{spec.source}: the {spec.model.backend} trainable learns {' and '.join(trainable.tasks)} "
                        f"targets; the dataset {data.name} holds {data.task} targets{hint}.")
    return data


def without_test(data: Dataset) -> Dataset:
    """The dataset as a trial sees it: no test split, which only the study's winner is scored on."""
    import dataclasses

    if data.X_test is None:
        return data
    return dataclasses.replace(data, X_test=None, y_test=None)


def resolved_config(spec: StudySpec, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every setting the trainable trains with: its own defaults, the spec's ``defaults``, then ``params``."""
    config = spec.config(**(params or {}))
    try:
        return spec.trainable.resolve(config)
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
    """Train the spec's trainable with ``defaults`` overridden by ``params``, on ``data`` without its test split."""
    return spec.trainable.run(_trainable_config(spec, data, params), without_test(data),
                              seed=spec.seed if seed is None else seed, on_epoch=on_epoch)


def start_training(spec: StudySpec, data: Dataset, params: dict[str, Any], *, seed: int,
                   resume_from: str | Path | None = None) -> Training:
    """The spec's trainable started for ``params`` on ``data`` without its test split, to be advanced along its
    budget (see :class:`hpsearch.backends.base.Training`), or taken up where the run saved at ``resume_from`` stood;
    the trainable must have ``start``."""
    config, data = _trainable_config(spec, data, params), without_test(data)
    if resume_from is None:
        return spec.trainable.start(config, data, seed=seed)
    return spec.trainable.start(config, data, seed=seed, resume_from=resume_from)


def _trainable_config(spec: StudySpec, data: Dataset, params: dict[str, Any] | None) -> dict[str, Any]:
    config = resolved_config(spec, params)
    batch_size = config.get("batch_size")
    if isinstance(batch_size, int) and batch_size > len(data.y_train):
        raise SpecError(
            f"{spec.source}: batch_size {batch_size} is larger than the training split ({len(data.y_train)} samples)."
        )
    return config


def score_test_split(spec: StudySpec, data: Dataset, result: TrainResult) -> dict[str, float] | None:
    """The trained model's scores on the test split, ``test_``-prefixed (``test_acc``); None without a test split,
    a model, or a trainable that can evaluate one."""
    evaluate = spec.trainable.evaluate
    if data.X_test is None or result.model is None or evaluate is None:
        return None
    scores = evaluate(result.model, data.X_test, data.y_test)
    return scores_on_test({f"test_{name}": value for name, value in dict(scores).items() if name != "metric"})

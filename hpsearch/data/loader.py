"""A user's own loader: ``data: {dataset: "package.module:function", options: {...}}``.

The function is imported under the rules of :func:`hpsearch.plugins.load_reference` (an installed package or the
spec's folder; elsewhere only with ``--allow-import``) and called with keyword arguments only:

- ``seed``: ``data.seed``, for a loader that draws its data;
- ``path``: ``data.path`` made absolute against the spec's folder, passed only when the spec gives one;
- every key of ``data.options`` but ``task``, which is hpsearch's own (as for ``dataset: arrays``).

It returns one of:

- a mapping of arrays under the keys of an ``.npz`` (``X_train``, ``y_train``, optional ``X_val``/``y_val`` and
  ``X_test``/``y_test``; or ``X``/``y``). It then goes through what ``dataset: arrays`` does: the same checks, task
  detection, label remapping, shuffling with ``data.seed``, splits and preprocessing (see
  :mod:`hpsearch.data.arrays`);
- a finished :class:`~hpsearch.data.Dataset`, already split and preprocessed. It is checked (2-D X with the same
  columns in every split, finite values, targets that fit its task: labels in 0..num_classes-1, or floats with
  num_classes 0), its X cast to ``data.dtype`` and its fingerprint computed afresh from its arrays. hpsearch neither
  splits nor preprocesses it, so ``data.num_train``, ``num_val`` and ``num_test`` are refused with it.

Anything the function raises becomes one line naming the reference.
"""

from __future__ import annotations

import dataclasses
import reprlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hpsearch.data.arrays import Split, check_arrays, from_arrays
from hpsearch.data.dataset import TASKS, Dataset, fingerprint
from hpsearch.errors import DataError, UserError, one_line
from hpsearch.plugins import load_reference

__all__ = ["load"]


def load(reference: str, split: Split, *, path: str | Path | None, base_dir: str | Path | None, allow_import: bool,
         options: Mapping[str, Any]) -> Dataset:
    """The Dataset that the function ``reference`` names returns, or makes of the arrays it returns."""
    source = f"data.dataset {reference!r}"
    function = load_reference(reference, where="data.dataset", base_dir=base_dir, allow_import=allow_import)
    if not callable(function):
        raise DataError(f"{source} names {reprlib.repr(function)}, not a function.")
    arguments = {key: value for key, value in options.items() if key != "task"}
    arguments["seed"] = split.seed
    if path is not None:
        arguments["path"] = str(path)
    try:
        result = function(**arguments)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's loader may raise anything; its traceback stays chained
        raise DataError(f"{source} raised {one_line(exc)}") from exc
    if isinstance(result, Dataset):
        return _checked_dataset(result, source, split)
    if isinstance(result, Mapping):
        return from_arrays(result, split, name=reference, source=source, task=options.get("task"))
    raise DataError(f"{source} returned a {type(result).__name__}; a loader returns a Dataset, or a mapping of arrays "
                    "(X_train, y_train, ... or X, y).")


def _checked_dataset(data: Dataset, source: str, split: Split) -> Dataset:
    """``data`` once it passes the checks the module lists, X cast to ``split.dtype``, its fingerprint made here."""
    given = [name for name in ("num_train", "num_val", "num_test") if getattr(split, name) is not None]
    if given:
        raise DataError(f"{source} returned a finished Dataset, so data.{given[0]} does not apply: leave it out, or "
                        "return arrays for hpsearch to split.")
    if data.X_val is None or data.y_val is None:
        raise DataError(f"{source} returned a Dataset without a validation split (X_val, y_val): trials are scored "
                        "on it.")
    if (data.X_test is None) != (data.y_test is None):
        raise DataError(f"{source} returned a Dataset with {'y_test' if data.X_test is None else 'X_test'} but "
                        f"no {'X_test' if data.X_test is None else 'y_test'}.")
    arrays = {key: getattr(data, key) for key in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")
              if getattr(data, key) is not None}
    _, arrays = check_arrays(arrays, source)
    for key in ("X_train", "X_val", "X_test"):
        if key in arrays and arrays[key].ndim != 2:
            raise DataError(f"{source}: a Dataset's {key} holds flattened rows, shape (N, D); sample_shape keeps a "
                            f"sample's shape. Got shape {arrays[key].shape} instead.")
    if data.task not in TASKS:
        raise DataError(f"{source}: a Dataset's task must be one of {', '.join(TASKS)}. Got {data.task!r} instead.")
    targets = {key: y for key, y in arrays.items() if key.startswith("y")}
    for key, y in targets.items():
        _check_fits_task(key, y, data, source)
    y_dtype = np.int64 if data.task == "classification" else np.float64
    arrays = {key: array.astype(y_dtype if key in targets else split.dtype, copy=False)
              for key, array in arrays.items()}
    return dataclasses.replace(
        data, **arrays, num_classes=data.num_classes if data.task == "classification" else 0,
        fingerprint=fingerprint(*arrays.values()),
    )


def _check_fits_task(key: str, y: np.ndarray, data: Dataset, source: str) -> None:
    if data.task == "regression":
        if y.dtype.kind not in "iuf":
            raise DataError(f"{source}: a regression Dataset's {key} must hold numbers. Got dtype {y.dtype} instead.")
        return
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: a classification Dataset's {key} must hold integer labels. Got dtype {y.dtype} "
                        "instead.")
    if y.min() < 0 or y.max() >= data.num_classes:
        raise DataError(f"{source}: {key} holds labels {y.min()}..{y.max()}; with num_classes {data.num_classes} "
                        f"they must lie in 0..{data.num_classes - 1}.")

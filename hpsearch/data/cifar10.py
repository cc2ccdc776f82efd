"""CIFAR-10 in the official "python version" layout: ``data_batch_1..5``, ``batches.meta``, optionally ``test_batch``.

The batches are pickles, and unpickling runs whatever code a pickle names. They are therefore read with a
restricted unpickler that resolves only the globals genuine batches contain (NumPy array reconstruction, dtypes,
``_codecs.encode`` for bytes written by Python 3 at protocol 2); a batch naming anything else is rejected before
any of it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.data import Dataset, split_and_preprocess
from hpsearch.errors import DataError

NUM_TRAIN, NUM_VAL, NUM_TEST = 49000, 1000, 1000
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
IMAGE_SIZE = 32 * 32 * 3
NUM_CLASSES = 10

# (module, name) pairs that genuine CIFAR-10 batches reference, across the NumPy versions that wrote them.
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise _ForbiddenGlobal(f"it references {module}.{name}, which CIFAR-10 batches never contain")
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; build the batches with make_cifar10.py or point data.path at them.")
    except _ForbiddenGlobal as exc:
        raise DataError(f"{path}: rejected as unsafe: {exc}.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 batch (truncated or corrupt: {exc or type(exc).__name__}).") from None


def _key(batch: dict, name: str) -> Any:
    return batch.get(name.encode(), batch.get(name))


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch as images (N, 32, 32, 3) uint8 and labels (N,) int64, checked for shape and label range."""
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', got {type(batch).__name__}.")
    data, labels = _key(batch, "data"), _key(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_SIZE:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {IMAGE_SIZE}); got {shape}.")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' must be a list of integers.") from None
    if y.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but labels of shape {y.shape}.")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}; found {y.min()}..{y.max()}.")
    # channel-major rows (1024 red, 1024 green, 1024 blue) -> (N, H, W, C) images, as the assignment's loader does
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, y


def load(
    path: str | Path | None,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    dtype: str = "float32",
    preprocess: str = "center",
) -> Dataset:
    """Training and validation splits from ``data_batch_1..5``; the test split from ``test_batch`` if present."""
    if path is None:
        raise DataError("cifar10: data.path is required (the folder holding data_batch_1..5).")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: CIFAR-10 folder not found (expected data_batch_1..5 inside).")
    num_train = NUM_TRAIN if num_train is None else num_train
    num_val = NUM_VAL if num_val is None else num_val
    num_test = NUM_TEST if num_test is None else num_test

    images, labels = [], []
    for name in TRAIN_BATCHES:
        X, y = load_batch(folder / name)
        images.append(X)
        labels.append(y)
        if sum(len(part) for part in labels) >= num_train + num_val:
            break  # later batches are not needed for the requested split
    X_test = y_test = None
    if (folder / "test_batch").exists() and num_test > 0:
        X_test, y_test = load_batch(folder / "test_batch")
    return split_and_preprocess(
        "cifar10", np.concatenate(images), np.concatenate(labels), num_train, num_val,
        X_test, y_test, num_test, num_classes=NUM_CLASSES, dtype=dtype, source=str(folder),
        preprocess=preprocess, value_range=(0.0, 255.0),
    )

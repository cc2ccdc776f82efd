"""Datasets: the only package that reads dataset files.

Every loader returns a :class:`Dataset` with the same splits and preprocessing interface:
``load_dataset(name, path=..., num_train=..., num_val=..., num_test=..., dtype=..., seed=...)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.errors import DataError

__all__ = ["DATASETS", "Dataset", "load_dataset", "split_and_center"]

DATASETS = ("cifar10", "digits", "synthetic")


@dataclass(frozen=True)
class Dataset:
    """Preprocessed splits, rows are samples: X_* of shape (N, D), y_* integer labels of shape (N,).

    X_test and y_test are None when the source has no test split.
    fingerprint: a short hash of the raw arrays, so a result can name the data it came from.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    fingerprint: str

    @property
    def input_size(self) -> int:
        return int(self.X_train.shape[1])


def fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def split_and_center(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    num_train: int,
    num_val: int,
    X_test: np.ndarray | None,
    y_test: np.ndarray | None,
    num_test: int,
    num_classes: int,
    dtype: str,
    source: str,
) -> Dataset:
    """The assignment's split and preprocessing.

    The first ``num_train`` rows train, the next ``num_val`` validate; the test split is the first ``num_test``
    rows of the separate test set. Every split is flattened to (N, D), cast to ``dtype`` and has the training
    split's mean image subtracted.
    """
    if num_train < 1 or num_val < 1:
        raise DataError(f"{source}: num_train and num_val must be at least 1. Got {num_train} and {num_val} instead.")
    if num_train + num_val > len(X):
        raise DataError(
            f"{source}: num_train + num_val = {num_train + num_val} exceeds the {len(X)} labelled examples available."
        )
    X = X.reshape(len(X), -1)
    X_train = X[:num_train].astype(dtype)
    mean_image = X_train.mean(axis=0)  # (D,)
    X_train -= mean_image
    X_val = X[num_train:num_train + num_val].astype(dtype) - mean_image
    X_te = y_te = None
    if X_test is not None and y_test is not None and num_test > 0:
        X_te = X_test[:num_test].reshape(min(num_test, len(X_test)), -1).astype(dtype) - mean_image
        y_te = np.asarray(y_test[:num_test], dtype=np.int64)
    return Dataset(
        name=name,
        X_train=X_train,
        y_train=np.asarray(y[:num_train], dtype=np.int64),
        X_val=X_val,
        y_val=np.asarray(y[num_train:num_train + num_val], dtype=np.int64),
        X_test=X_te,
        y_test=y_te,
        num_classes=num_classes,
        fingerprint=fingerprint(X, y) if X_test is None else fingerprint(X, y, X_test, y_test),
    )


def load_dataset(
    name: str,
    *,
    path: str | Path | None = None,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """Load dataset ``name`` with the given split sizes (None: the dataset's own default)."""
    if name == "cifar10":
        from hpsearch.data import cifar10

        return cifar10.load(path, num_train=num_train, num_val=num_val, num_test=num_test, dtype=dtype)
    if name == "digits":
        from hpsearch.data import digits

        return digits.load(num_train=num_train, num_val=num_val, num_test=num_test, dtype=dtype, seed=seed)
    if name == "synthetic":
        from hpsearch.data import synthetic

        return synthetic.load(num_train=num_train, num_val=num_val, num_test=num_test, dtype=dtype, seed=seed,
                              **options)
    raise DataError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASETS)}.")

"""What every loader returns: a :class:`Dataset` of splits, its options' models, and the one way rows are split
and preprocessing is fitted on the training split."""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
from pydantic import Field

from hpsearch.errors import DataError
from hpsearch.validation import UserConfig

DATASETS = ("cifar10", "digits", "synthetic", "arrays", "csv")
FILE_DATASETS = ("arrays", "csv")  # the user's own data in a file: data.path is required
TASKS = ("classification", "regression")


class NoOptions(UserConfig):
    """``data.options`` of a dataset that takes none: any key is an error rather than silently ignored."""


class SyntheticOptions(NoOptions):
    """``data.options`` of the synthetic blobs."""

    num_classes: int = Field(3, ge=2, le=1000)
    num_features: int = Field(20, ge=1, le=100_000)
    spread: float = Field(1.0, ge=0, le=1e6)


class Cifar10Options(NoOptions):
    """``data.options`` of CIFAR-10: ``holdout`` test images, for a folder without ``test_batch``; ``mirror``: the
    training split doubled with its images mirrored."""

    holdout: int = Field(0, ge=0, le=50_000)
    mirror: bool = False


class FileOptions(NoOptions):
    """``data.options`` of the user's own data (``arrays``, ``csv``): the task, when the targets do not tell."""

    task: Literal["classification", "regression"] | None = None


class LoaderOptions(FileOptions, extra="allow"):
    """``data.options`` of a user loader: ``task`` is hpsearch's; every other key is passed on to the loader."""


DATASET_OPTIONS: dict[str, type[NoOptions]] = {"cifar10": Cifar10Options, "digits": NoOptions,
                                                "synthetic": SyntheticOptions, "arrays": FileOptions,
                                                "csv": FileOptions}


def options_model(dataset: str) -> type[NoOptions]:
    """The model that ``data.options`` of ``dataset`` (a built-in name or a loader reference) must fit."""
    return DATASET_OPTIONS.get(dataset, LoaderOptions)


@dataclass(frozen=True)
class Dataset:
    """Preprocessed splits, rows are samples: X_* of shape (N, D), y_* targets of shape (N,).

    X_test and y_test are None when the source has no test split.
    num_classes: C, the labels' range, for classification; 0 for regression.
    fingerprint: a short hash of the raw arrays, so a result can name the data it came from.
    task: ``classification`` (y_* int64 labels 0..C-1) or ``regression`` (y_* float64). The built-in backends
        train classifiers only; a trainable that takes regression targets says so.
    sample_shape: one sample before it was flattened into a row, in the row's own order: D = prod(sample_shape).
        A trainable that wants images does ``X.reshape(-1, *data.sample_shape)``. Left out: (D,).
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
    task: str = "classification"
    sample_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.sample_shape:  # frozen: the default is filled in once, here
            object.__setattr__(self, "sample_shape", (self.input_size,))
        if math.prod(self.sample_shape) != self.input_size:
            raise ValueError(f"sample_shape {self.sample_shape} does not hold the {self.input_size} values of a row")

    @property
    def input_size(self) -> int:
        return int(self.X_train.shape[1])


def fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


PREPROCESSING = ("center", "unit_range", "standardize", "none")


def split_and_preprocess(
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
    preprocess: str = "center",
    value_range: tuple[float, float] | None = None,
    task: str = "classification",
    sample_shape: tuple[int, ...] = (),
) -> Dataset:
    """The assignment's split, then one of the preprocessings.

    The first ``num_train`` rows train, the next ``num_val`` validate; the test split is the first ``num_test``
    rows of the separate test set. Every split is flattened to (N, D) and cast to ``dtype``; then
    ``center`` subtracts the training split's mean image (the NumPy assignment), ``unit_range`` maps the data's
    value range (0..255 for CIFAR-10 pixels; the training split's min..max without one) onto [-1, 1] (the PyTorch
    template's ``Normalize(0.5, 0.5)``), ``standardize`` gives every feature the training split's mean 0 and
    standard deviation 1 (a constant feature is only centred), ``none`` leaves the values as they are.
    Labels become int64 for classification, targets float64 for regression (``num_classes`` 0).
    sample_shape: one sample's shape; left out, that of ``X``'s rows (``X.shape[1:]``) before flattening.
    """
    if preprocess not in PREPROCESSING:
        raise DataError(f"{source}: preprocess must be one of {', '.join(PREPROCESSING)}. Got {preprocess!r} instead.")
    if num_train < 1 or num_val < 1:
        raise DataError(f"{source}: num_train and num_val must be at least 1. Got {num_train} and {num_val} instead.")
    if num_train + num_val > len(X):
        raise DataError(
            f"{source}: num_train + num_val = {num_train + num_val} exceeds the {len(X)} labelled examples available."
        )
    sample_shape = sample_shape or tuple(X.shape[1:])
    X = X.reshape(len(X), -1)
    X_train = X[:num_train].astype(dtype)
    if preprocess == "none":
        shift, scale = 0.0, 1.0
    elif preprocess == "center":
        shift, scale = X_train.mean(axis=0), 1.0  # (D,)
    elif preprocess == "standardize":
        spread = X_train.std(axis=0)  # (D,)
        shift, scale = X_train.mean(axis=0), 1.0 / np.where(spread > 0, spread, 1.0)
    else:
        low, high = value_range if value_range is not None else (float(X_train.min()), float(X_train.max()))
        shift, scale = (low + high) / 2, 2.0 / max(high - low, 1e-12)

    def prepare(rows: np.ndarray) -> np.ndarray:
        out = rows if rows is X_train else rows.reshape(len(rows), -1).astype(dtype)  # X_train is a copy already
        if preprocess != "none":
            out -= np.asarray(shift, dtype=dtype)
        if np.any(scale != 1.0):
            out *= np.asarray(scale, dtype=dtype)
        return out

    y_dtype = np.int64 if task == "classification" else np.float64
    X_te = y_te = None
    if X_test is not None and y_test is not None and num_test > 0:
        X_te = prepare(X_test[:num_test])
        y_te = np.asarray(y_test[:num_test], dtype=y_dtype)
    return Dataset(
        name=name,
        X_train=prepare(X_train),
        y_train=np.asarray(y[:num_train], dtype=y_dtype),
        X_val=prepare(X[num_train:num_train + num_val]),
        y_val=np.asarray(y[num_train:num_train + num_val], dtype=y_dtype),
        X_test=X_te,
        y_test=y_te,
        num_classes=num_classes if task == "classification" else 0,
        fingerprint=fingerprint(X, y) if X_test is None else fingerprint(X, y, X_test, y_test),
        task=task,
        sample_shape=sample_shape,
    )


@contextlib.contextmanager
def within_memory(source: str) -> Iterator[None]:
    """A MemoryError while the data are loaded, split or preprocessed becomes one line naming ``source``."""
    try:
        yield
    except MemoryError:
        raise DataError(f"{source}: the data do not fit in this machine's memory; ask for fewer rows (data.num_train, "
                        "data.num_val, data.num_test) or give a smaller file.") from None

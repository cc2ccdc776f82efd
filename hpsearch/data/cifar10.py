"""CIFAR-10 in the official "python version" layout: ``data_batch_1..5``, ``batches.meta``, optionally ``test_batch``.

The batches are pickles, and unpickling runs whatever code a pickle names. They are therefore read with a
restricted unpickler that resolves only the globals genuine batches contain (NumPy array reconstruction, dtypes,
``_codecs.encode`` for bytes written by Python 3 at protocol 2); a batch naming anything else is rejected before
any of it runs.

Decoded batches are cached as ``.npy`` files in ``<folder>/.hpsearch-cache/``, one pair (images, labels) per batch
file, named by the SHA-256 of the batch file's bytes: a changed batch gets a new name, so a stale entry is never
read. Later loads memory-map the cache (no pickle) instead of unpickling. Each cache file is written to a temporary
name and moved into place with ``os.replace``, so a crash leaves either no entry or a whole one; an entry that is
not a regular file, whose header declares other data than the file holds (truncated, absurd sizes) or that fails
the checks of a fresh batch (dtype, shape, label range) is ignored and rewritten. A folder that cannot be written
to simply goes without a cache.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.data.cache import load_entry, save_atomically
from hpsearch.data.dataset import Dataset, split_and_preprocess
from hpsearch.errors import DataError
from hpsearch.files import FileTooLarge, NotRegularFile, data_bound, open_regular

NUM_TRAIN, NUM_VAL, NUM_TEST = 49000, 1000, 1000
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
IMAGE_SIZE = 32 * 32 * 3
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
CACHE_DIR = ".hpsearch-cache"
CACHE_VERSION = 1  # bump when the cached layout changes: old entries then stop matching

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


def _missing(path: Path) -> DataError:
    return DataError(f"{path}: file not found; build the batches with make_cifar10.py or point data.path at them.")


def _not_readable(path: Path, exc: OSError) -> DataError:
    if isinstance(exc, FileTooLarge):
        return DataError(f"{path}: {exc}")
    what = str(exc) if isinstance(exc, NotRegularFile) else f"unreadable ({exc.strerror})"
    return DataError(f"{path}: {what}; the CIFAR-10 folder holds the files data_batch_1..5.")


def _open_batch(path: Path) -> Any:
    """The batch file opened for reading, if it is a regular file of at most what a data file may hold."""
    return open_regular(path, data_bound("a CIFAR-10 batch"))


def _unpickle(path: Path) -> Any:
    try:
        with _open_batch(path) as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as exc:
        raise _not_readable(path, exc) from None
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
        y = np.asarray(labels)
    except (TypeError, ValueError, OverflowError):
        y = None
    if y is None or (y.size and y.dtype.kind not in "iu"):  # object arrays hold integers too large for int64
        raise DataError(f"{path}: 'labels' must be a list of integers.")
    problem = _labels_problem(y, data.shape[0])
    if problem:
        raise DataError(f"{path}: {problem}.")
    # channel-major rows (1024 red, 1024 green, 1024 blue) -> (N, H, W, C) images, as the assignment's loader does
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, y.astype(np.int64)


def _labels_problem(labels: np.ndarray, num_images: int) -> str | None:
    """What is wrong with integer labels for ``num_images`` images, fresh from a batch or read from the cache."""
    if labels.shape != (num_images,):
        return f"{num_images} images but labels of shape {labels.shape}"
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        return f"labels must lie in 0..{NUM_CLASSES - 1}; found {labels.min()}..{labels.max()}"
    return None


def _content_key(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the file's bytes (about 0.1 s for CIFAR-10's five batches)."""
    try:
        with _open_batch(path) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as exc:
        raise _not_readable(path, exc) from None


def _read_cache(images_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached images (memory-mapped) and labels, or None when the entry is not one to trust (see
    :func:`~hpsearch.data.cache.load_entry`) or fails the checks a fresh batch must pass (dtype, shape, label
    range): the caller then rebuilds it from the batch."""
    images = load_entry(images_file, mmap=True)
    labels = load_entry(labels_file)
    if images is None or labels is None:
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or labels.dtype != np.int64 \
            or _labels_problem(labels, images.shape[0]):
        return None
    return images, labels


def _write_cache(cache: Path, batch_name: str, arrays: dict[Path, np.ndarray], mode: int) -> None:
    """Write each array to its file atomically and drop the batch's stale entries; give up quietly on OSError.

    mode: the files' permission bits (the batch's own, so whoever may read the batch may read its cache).
    """
    try:
        cache.mkdir(exist_ok=True)
        for stale in cache.glob(f"{batch_name}-*.npy"):
            if stale not in arrays:
                stale.unlink(missing_ok=True)
        for target, array in arrays.items():
            save_atomically(target, array, mode)
    except OSError:
        pass  # a read-only folder or a full disk: this load and later ones decode the pickles instead


def _load_batch_cached(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``load_batch(path)`` with the images C-contiguous, through the cache next to the batch."""
    key = _content_key(path)
    cache = path.parent / CACHE_DIR
    stem = f"{path.name}-v{CACHE_VERSION}-{key}"
    images_file, labels_file = cache / f"{stem}.images.npy", cache / f"{stem}.labels.npy"
    cached = _read_cache(images_file, labels_file)
    if cached is not None:
        return cached
    images, labels = load_batch(path)
    images = np.ascontiguousarray(images)  # (N, 32, 32, 3)
    _write_cache(cache, path.name, {images_file: images, labels_file: labels}, mode=path.stat().st_mode & 0o666)
    return images, labels


def load(
    path: str | Path | None,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    dtype: str = "float32",
    preprocess: str = "center",
    holdout: int = 0,
    mirror: bool = False,
) -> Dataset:
    """Training and validation splits from ``data_batch_1..5``; the test split from ``test_batch`` if present.

    holdout: for a folder without ``test_batch`` (``../shared/data`` holds only the training images), the last
    ``holdout`` of the 50,000 training images become the test split (``num_test`` is then ``holdout``): no training
    or validation row is one of them, whatever ``num_train`` and ``num_val`` are.

    mirror: the training split doubled, each image's mirror image (left and right swapped) added: twice the
    examples for a network that cannot learn that a mirrored object is the same object. The validation and test
    splits are left as they are; the training split has ``2 * num_train`` rows.

    Rows hold each image pixel by pixel (height, width, channel), so ``sample_shape`` is (32, 32, 3); a network
    that wants channels first does ``X.reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2)``.
    """
    if path is None:
        raise DataError("cifar10: data.path is required (the folder holding data_batch_1..5).")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: CIFAR-10 folder not found (expected data_batch_1..5 inside).")
    if not any(os.path.lexists(folder / name) for name in TRAIN_BATCHES):
        raise DataError(f"{folder}: no CIFAR-10 batches in this folder (expected data_batch_1..5 inside); build "
                        "them with make_cifar10.py or point data.path at them.")
    num_train = NUM_TRAIN if num_train is None else num_train
    num_val = NUM_VAL if num_val is None else num_val
    has_test_batch = (folder / "test_batch").exists()
    if holdout and has_test_batch:
        raise DataError(f"{folder}: data.options.holdout is for a folder without test_batch; this one has it, and "
                        "gives the test split.")
    num_test = holdout or (NUM_TEST if num_test is None else num_test)

    images, labels = [], []
    for name in TRAIN_BATCHES:
        X, y = _load_batch_cached(folder / name)
        images.append(X)
        labels.append(y)
        if not holdout and sum(len(part) for part in labels) >= num_train + num_val:
            break  # later batches are not needed for the requested split
    X, y = np.concatenate(images), np.concatenate(labels)
    X_test = y_test = None
    if holdout:
        if num_train + num_val + holdout > len(X):
            raise DataError(f"{folder}: num_train + num_val + holdout = {num_train + num_val + holdout} exceeds the "
                            f"{len(X)} training images the test split is held out of.")
        X, y, X_test, y_test = X[:-holdout], y[:-holdout], X[-holdout:], y[-holdout:]
    elif has_test_batch and num_test > 0:
        X_test, y_test = _load_batch_cached(folder / "test_batch")
    if mirror and num_train + num_val <= len(X):  # (a split too large is refused below, as without mirror)
        train = X[:num_train]
        X = np.concatenate([train, train[:, :, ::-1, :], X[num_train:]])  # (N, height, width, channel)
        y = np.concatenate([y[:num_train], y[:num_train], y[num_train:]])
        num_train *= 2
    return split_and_preprocess(
        "cifar10", X, y, num_train, num_val,
        X_test, y_test, num_test, num_classes=NUM_CLASSES, dtype=dtype, source=str(folder),
        preprocess=preprocess, value_range=(0.0, 255.0),
    )

"""The user's own arrays: an ``.npz`` file (``data: {dataset: arrays, path: data.npz}``), and the checks and splits
that every source of the user's own data goes through (a csv table, what a loader returns).

Keys: ``X_train`` and ``y_train``, with optional ``X_val``/``y_val`` and ``X_test``/``y_test``; or one ``X``/``y``
alone. An X is numeric (bool, integer or float), has a row per sample (shape (N, D), or (N, ...) for images: the
sample's shape becomes ``Dataset.sample_shape``) and holds finite values; its y is 1-D with a target per row, numbers
or text labels. Any other key is refused: a misspelt ``x_val`` would otherwise silently let a validation split be
carved from the training rows. The file is read with ``allow_pickle=False``: an object array is refused, not run.

Splits. The training rows (``X_train``/``y_train``, or ``X``/``y``) are shuffled with ``data.seed``. A split the
source does not hold is carved off the end of the shuffled rows: first the test split (``data.num_test`` rows,
default 0: none), then the validation split (``data.num_val`` rows, default a fifth of the rows left, at least 1).
Training takes the first ``data.num_train`` of the rest (default: all of them). A split the source holds is used in
its own order: its first ``num_val`` / ``num_test`` rows (default: all).

Task. ``data.options.task`` (``classification`` | ``regression``) says it outright. Otherwise the targets decide,
as scikit-learn's ``type_of_target`` does: text, bool or integer labels, and floats that are all whole numbers, are
classification; floats with any fractional value are regression. Classification labels become 0..C-1 in the order
of the sorted distinct values of all splits together, so a label means the same class in every split.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hpsearch.data.dataset import TASKS, Dataset, split_and_preprocess
from hpsearch.errors import DataError
from hpsearch.files import FileTooLarge, NotRegularFile, NpyHeader, data_bound, open_regular, read_npy_header
from hpsearch.formatting import format_bytes

__all__ = ["KEYS", "Split", "check_arrays", "file_problem", "from_arrays", "load", "read_npz"]

PAIRS = {"X_train": "y_train", "X_val": "y_val", "X_test": "y_test", "X": "y"}
KEYS = tuple(key for pair in PAIRS.items() for key in pair)
KEYS_TEXT = "X_train, y_train, X_val, y_val, X_test, y_test, or X, y"
VAL_FRACTION = 5  # without X_val, a fifth of the rows left after the test split validate


@dataclass(frozen=True)
class Split:
    """What the spec asks of the user's data: the split sizes (None: the module's defaults), the seed of the
    shuffle, the dtype of X and the preprocessing (one of ``PREPROCESSING``)."""

    seed: int = 0
    num_train: int | None = None
    num_val: int | None = None
    num_test: int | None = None
    dtype: str = "float32"
    preprocess: str = "center"


def load(path: str | Path | None, split: Split, *, task: str | None = None) -> Dataset:
    """The arrays of the ``.npz`` file at ``path``, checked, split and preprocessed as the module says."""
    if path is None:
        raise DataError("arrays: data.path is required (an .npz file written by numpy.savez).")
    path = Path(path)
    return from_arrays(read_npz(path), split, name=path.name, source=str(path), task=task)


def file_problem(path: Path, exc: OSError, what: str) -> DataError:
    """One line for a data file that cannot be opened or is refused (see :mod:`hpsearch.files`); ``what``: the file
    data.path should name."""
    if isinstance(exc, FileTooLarge):
        return DataError(f"{path}: {exc}")
    if isinstance(exc, FileNotFoundError):
        problem = "file not found"
    elif isinstance(exc, NotRegularFile):
        problem = str(exc)
    else:
        problem = f"unreadable ({exc.strerror or exc})"
    return DataError(f"{path}: {problem}; data.path names {what}.")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive, by key, read without pickle; the keys, and the sizes the arrays' headers declare,
    are checked before any array is read."""
    try:
        with open_regular(path, data_bound("a data file")) as f:
            return _read_archive(f, path)
    except OSError as exc:
        raise file_problem(path, exc, "an .npz file written by numpy.savez") from None


def _read_archive(f: Any, path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(f, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile):  # NumPy says "pickled" for any file it does not recognise
        raise DataError(f"{path}: not an .npz archive; write one with numpy.savez(path, X_train=..., "
                        "y_train=...).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array; dataset arrays reads an .npz archive of named arrays, written "
                        "by numpy.savez(path, X_train=..., y_train=...).")
    with archive:
        pool = _check_keys(archive.files, str(path))
        headers = _check_declared(archive, path)
        # what the headers declare, as arrays that take no memory: a wrong shape or dtype is refused before any read
        declared = {key: np.broadcast_to(np.zeros((), header.dtype), header.shape) for key, header in headers.items()}
        _check_layout(declared, str(path), pool, _names(None))
        arrays = {}
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                raise DataError(f"{path}: {key} is not a readable array ({exc}).") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise DataError(f"{path}: {key} is truncated or corrupt ({exc or type(exc).__name__}).") from None
            except MemoryError:
                raise DataError(f"{path}: {key} does not fit in memory.") from None
    return arrays


def _check_declared(archive: Any, path: Path) -> dict[str, NpyHeader]:
    """Each member's array header, read before any data: a member that is no array, an object array, a header
    declaring more data than its member holds, or arrays declaring more than a data file may hold (decompressed)
    are refused before anything is allocated for them."""
    bound = data_bound("the arrays of a data file, decompressed,")
    names = set(archive.zip.namelist())
    headers = {}
    for key in archive.files:
        info = archive.zip.getinfo(f"{key}.npy" if f"{key}.npy" in names else key)  # NpzFile's own lookup
        try:
            with archive.zip.open(info) as member:
                if not member.peek(len(np.lib.format.MAGIC_PREFIX)).startswith(np.lib.format.MAGIC_PREFIX):
                    raise DataError(f"{path}: {key} is not a NumPy array.")
                header = read_npy_header(member)
        except ValueError as exc:
            raise DataError(f"{path}: {key} is not a readable array ({exc}).") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{path}: {key} is truncated or corrupt ({exc or type(exc).__name__}).") from None
        if header.dtype.hasobject:
            raise DataError(f"{path}: {key} is an object array, which loads through pickle and can run code; save "
                            "numeric arrays (or text labels) instead.")
        if header.nbytes > info.file_size - header.offset:
            raise DataError(f"{path}: {key} is truncated or corrupt (its header declares {header.shape} "
                            f"{header.dtype} values, more than the {format_bytes(info.file_size)} stored for it).")
        headers[key] = header
        try:
            bound.check(sum(header.nbytes for header in headers.values()))
        except FileTooLarge as exc:
            raise DataError(f"{path}: {exc}") from None
    return headers


def _check_keys(keys: Any, source: str) -> str:
    """The key of the training rows (``X_train`` or ``X``) once the keys form one of the two layouts."""
    keys = list(keys)
    unknown = [key for key in keys if key not in KEYS]
    if unknown:
        raise DataError(f"{source}: unknown key {unknown[0]!r}; the keys are {KEYS_TEXT}.")
    present = set(keys)
    if present & {"X", "y"}:
        others = sorted(present - {"X", "y"})
        if others:
            raise DataError(f"{source}: X and y stand alone, so {others[0]} cannot join them; name the training "
                            "arrays X_train and y_train instead.")
    elif not present & {"X_train", "y_train"}:
        raise DataError(f"{source}: no training arrays; the keys are {KEYS_TEXT}. "
                        f"Got {', '.join(sorted(present)) or 'none'} instead.")
    for x_key, y_key in PAIRS.items():
        if (x_key in present) != (y_key in present):
            given, missing = (x_key, y_key) if x_key in present else (y_key, x_key)
            raise DataError(f"{source}: {given} without {missing}; give both or neither.")
    return "X" if "X" in present else "X_train"


def _as_array(key: str, value: Any, source: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged lists, objects that are not arrays
        raise DataError(f"{source}: {key} is not an array ({exc}).") from None


def check_arrays(arrays: Mapping[str, Any], source: str, names: Mapping[str, str] | None = None
                 ) -> tuple[str, dict[str, np.ndarray]]:
    """The key of the training rows and the arrays, once the keys, dtypes, shapes and values pass the module's checks
    (the values last: every layout problem is found without them).

    names: how messages call a key (a csv table's ``y`` is ``column 'label'``); the key itself otherwise.
    """
    pool = _check_keys(arrays, source)
    name = _names(names)
    checked = {key: _as_array(key, value, source) for key, value in arrays.items()}
    _check_layout(checked, source, pool, name)
    for key, array in checked.items():
        _check_finite(name[key], array.reshape(len(array), -1), source)
    return pool, checked


def _check_layout(arrays: dict[str, np.ndarray], source: str, pool: str, name: Mapping[str, str]) -> None:
    """The dtypes and shapes of the arrays under the keys of a layout, ``pool`` the key of the training rows; not
    their values, so that what a file's headers declare can be checked before it is read."""
    for x_key, y_key in PAIRS.items():
        if x_key in arrays:
            _check_features(name[x_key], arrays[x_key], source)
            _check_targets(name[y_key], arrays[y_key], arrays[x_key], name[x_key], source)
            _check_sample_shape(name[x_key], arrays[x_key], name[pool], arrays[pool], source)
    text = [key for key in arrays if key.startswith("y") and arrays[key].dtype.kind == "U"]
    numbers = [key for key in arrays if key.startswith("y") and key not in text]
    if text and numbers:
        raise DataError(f"{source}: {name[text[0]]} holds text labels, {name[numbers[0]]} numbers; give every split "
                        "the same kind.")


def _names(names: Mapping[str, str] | None) -> dict[str, str]:
    return {key: (names or {}).get(key, key) for key in KEYS}


def _check_features(key: str, X: np.ndarray, source: str) -> None:
    if X.dtype.kind not in "biuf":
        raise DataError(f"{source}: {key} must hold numbers (bool, integer or float). Got dtype {X.dtype} instead.")
    if X.ndim < 2:
        raise DataError(f"{source}: {key} must hold a row per sample, shape (N, D) or (N, ...). Got shape {X.shape} "
                        "instead.")
    if len(X) == 0 or X.size == 0:
        raise DataError(f"{source}: {key} is empty (shape {X.shape}).")


def _check_targets(key: str, y: np.ndarray, X: np.ndarray, x_key: str, source: str) -> None:
    if y.dtype.kind not in "biufU":
        raise DataError(f"{source}: {key} must hold numbers or text labels. Got dtype {y.dtype} instead.")
    if y.ndim != 1:
        raise DataError(f"{source}: {key} must be 1-D, a target per row of {x_key}. Got shape {y.shape} instead.")
    if len(y) != len(X):
        raise DataError(f"{source}: {key} has {len(y)} rows, {x_key} has {len(X)}.")


def _check_finite(key: str, rows: np.ndarray, source: str) -> None:
    """rows: (N, D); the first row holding NaN or an infinity is named."""
    if rows.dtype.kind != "f":
        return
    finite = np.isfinite(rows)
    if finite.all():
        return
    row = int(np.argmin(finite.all(axis=1)))
    value = rows[row][~finite[row]][0]
    raise DataError(f"{source}: {key}[{row}] holds {value}; every value must be finite.")


def _check_sample_shape(key: str, X: np.ndarray, pool_key: str, pool: np.ndarray, source: str) -> None:
    if X.shape[1:] == pool.shape[1:]:
        return
    if X.ndim == pool.ndim == 2:
        raise DataError(f"{source}: {key} has {X.shape[1]} columns, {pool_key} has {pool.shape[1]}.")
    raise DataError(f"{source}: {key} has samples of shape {X.shape[1:]}, {pool_key} of shape {pool.shape[1:]}.")


def _task(targets: dict[str, np.ndarray], forced: str | None, source: str, name: Mapping[str, str]) -> str:
    if forced not in (None, *TASKS):
        raise DataError(f"{source}: data.options.task must be one of {', '.join(TASKS)}. Got {forced!r} instead.")
    if forced == "regression":
        for key, y in targets.items():
            if y.dtype.kind == "U":
                raise DataError(f"{source}: data.options.task is regression, but {name[key]} holds text "
                                f"labels ({y[0].item()!r}).")
    if forced is not None:
        return forced
    fractional = any(y.dtype.kind == "f" and bool(np.any(y != np.round(y))) for y in targets.values())
    return "regression" if fractional else "classification"


def _encode(targets: dict[str, np.ndarray], task: str, source: str, label: str) -> tuple[dict[str, np.ndarray], int]:
    """Labels 0..C-1 (int64) and C for classification; float64 targets and 0 for regression.

    label: what messages call the training targets.
    """
    if task == "regression":
        return {key: y.astype(np.float64) for key, y in targets.items()}, 0
    classes = np.unique(np.concatenate(list(targets.values())))  # sorted
    if len(classes) < 2:
        raise DataError(f"{source}: {label} has one class only ({classes[0].item()!r}); classification needs at "
                        "least two.")
    return {key: np.searchsorted(classes, y).astype(np.int64) for key, y in targets.items()}, len(classes)


def _carve(num_rows: int, split: Split, *, carve_val: bool, carve_test: bool, source: str, pool: str
           ) -> dict[str, np.ndarray]:
    """Indices into the training rows: ``train``, and ``val`` / ``test`` when they are carved off (see the module)."""
    order = np.random.default_rng(split.seed).permutation(num_rows)
    end = num_rows
    indices: dict[str, np.ndarray] = {}
    taken: list[str] = []
    for part, carve, size in (("test", carve_test, split.num_test), ("val", carve_val, split.num_val)):
        if not carve:
            continue
        if size is None:
            size = 0 if part == "test" else max(1, max(end, 0) // VAL_FRACTION)
        indices[part] = order[max(end - size, 0):max(end, 0)]
        if size:
            taken.append(f"data.num_{part} {size}")
        end -= size
    train = end if split.num_train is None else split.num_train
    if end < 1 or train > end:
        if not taken:
            raise DataError(f"{source}: {pool} has {_rows(num_rows)}, fewer than data.num_train {train}.")
        left = _rows(end) if end > 0 else "no rows"
        short = f", fewer than data.num_train {train}" if end > 0 else ""
        raise DataError(f"{source}: {pool} has {_rows(num_rows)}; taking {' + '.join(taken)} from them leaves {left} "
                        f"to train on{short}.")
    indices["train"] = order[:train]
    return indices


def _given(key: str, rows: int, size: int | None, source: str) -> np.ndarray:
    """Indices of the first ``size`` rows (default all) of a split the source holds."""
    size = rows if size is None else size
    if size > rows:
        raise DataError(f"{source}: {key} has {_rows(rows)}, fewer than data.num_{key[2:]} {size}.")
    return np.arange(size)


def _rows(count: int) -> str:
    return f"{count} row{'' if count == 1 else 's'}"


def from_arrays(arrays: Mapping[str, Any], split: Split, *, name: str, source: str, task: str | None,
                names: Mapping[str, str] | None = None) -> Dataset:
    """A Dataset from arrays under the keys of an ``.npz``: checked, labelled, shuffled, split and preprocessed.

    source: what messages begin with (the file); names: how messages call a key, as in :func:`check_arrays`.
    """
    pool, checked = check_arrays(arrays, source, names)
    name_of = _names(names)
    targets = {key: y for key, y in checked.items() if key.startswith("y")}
    task = _task(targets, task, source, name_of)
    targets, num_classes = _encode(targets, task, source, name_of[PAIRS[pool]])
    indices = _carve(len(checked[pool]), split, carve_val="X_val" not in checked, carve_test="X_test" not in checked,
                     source=source, pool=name_of[pool])
    # each part: (X, y, row indices) from the training rows, or from the split the source holds
    parts = {"train": (checked[pool], targets[PAIRS[pool]], indices["train"])}
    for part, size in (("val", split.num_val), ("test", split.num_test)):
        x_key = f"X_{part}"
        if x_key in checked:
            parts[part] = (checked[x_key], targets[PAIRS[x_key]], _given(x_key, len(checked[x_key]), size, source))
        else:
            parts[part] = (checked[pool], targets[PAIRS[pool]], indices[part])
    X_train, y_train, train = parts["train"]
    X_val, y_val, val = parts["val"]
    X_test, y_test, test = parts["test"]
    X = np.concatenate([X_train[train], X_val[val]])  # (num_train + num_val, ...)
    y = np.concatenate([y_train[train], y_val[val]])
    has_test = len(test) > 0
    return split_and_preprocess(
        name, X, y, len(train), len(val), X_test[test] if has_test else None, y_test[test] if has_test else None,
        len(test), num_classes=num_classes, dtype=split.dtype, source=source, preprocess=split.preprocess, task=task,
    )

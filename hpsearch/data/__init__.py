"""Datasets: the only package that reads dataset files.

Every loader returns a :class:`Dataset` with the same splits and preprocessing interface:
``load_dataset(name, path=..., num_train=..., num_val=..., num_test=..., dtype=..., seed=...)``.

Built in: ``digits``, ``synthetic``, ``cifar10``. A user's own data: ``arrays`` (an ``.npz`` file), ``csv`` (a
table with a header row) and ``package.module:function`` (a loader of the user's); see :mod:`hpsearch.data.arrays`,
:mod:`hpsearch.data.table` and :mod:`hpsearch.data.loader` for their contracts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpsearch.data.dataset import (
    DATASET_OPTIONS, DATASETS, FILE_DATASETS, PREPROCESSING, TASKS, Dataset, options_model,
    split_and_preprocess, within_memory,
)
from hpsearch.errors import DataError
from hpsearch.plugins import is_reference

__all__ = ["DATASETS", "DATASET_OPTIONS", "FILE_DATASETS", "PREPROCESSING", "TASKS", "Dataset", "load_dataset", "options_model",
           "split_and_preprocess"]


def load_dataset(
    name: str,
    *,
    path: str | Path | None = None,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    preprocess: str = "center",
    target: str | None = None,
    base_dir: str | Path | None = None,
    allow_import: bool = False,
    whitening: dict[str, Any] | None = None,
    **options: Any,
) -> Dataset:
    """Load dataset ``name`` with the given split sizes (None: the dataset's own default).

    preprocess: one of ``PREPROCESSING`` or ``WHITENING`` (``pca``, ``zca``: the training split centred, then
        whitened as :mod:`hpsearch.data.whitening` says, with the ``whitening`` settings ``components``, ``epsilon``).
    target: the label column of a ``csv`` dataset.
    base_dir, allow_import: where a loader reference (``package.module:function``) may be imported from; see
        :func:`hpsearch.plugins.load_reference`.
    """
    with within_memory(str(path) if path is not None else f"{name} data"):
        from hpsearch.data.whitening import WHITENING, whiten

        if preprocess in WHITENING:
            data = load_dataset(name, path=path, num_train=num_train, num_val=num_val, num_test=num_test, dtype=dtype,
                                seed=seed, preprocess="center", target=target, base_dir=base_dir,
                                allow_import=allow_import, **options)
            return whiten(data, preprocess, **(whitening or {}), source=f"{name} data")
        if whitening:
            raise DataError(f"{name} data: data.whitening is for preprocess pca or zca, not {preprocess!r}.")
        sizes = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "dtype": dtype,
                 "preprocess": preprocess}
        if name == "cifar10":
            from hpsearch.data import cifar10

            return cifar10.load(path, **sizes, **options)
        if name == "digits":
            from hpsearch.data import digits

            return digits.load(seed=seed, **sizes)
        if name == "synthetic":
            from hpsearch.data import synthetic

            return synthetic.load(seed=seed, **sizes, **options)
        if name in FILE_DATASETS or is_reference(name):  # the user's own data
            from hpsearch.data import arrays, loader, table

            split = arrays.Split(seed=seed, **sizes)
            if name == "arrays":
                return arrays.load(path, split, **options)
            if name == "csv":
                return table.load(path, target, split, **options)
            return loader.load(name, split, path=path, base_dir=base_dir, allow_import=allow_import, options=options)
        raise DataError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASETS)}, or "
                        "'package.module:function'.")

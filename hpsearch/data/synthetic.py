"""Seeded Gaussian blobs that a linear model can separate: small, instant data for tests."""

from __future__ import annotations

import numpy as np

from hpsearch.data.dataset import Dataset, split_and_preprocess
from hpsearch.errors import DataError

MAX_VALUES = 50_000_000  # 400 MB of float64: the largest synthetic dataset made


def load(
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    dtype: str = "float32",
    preprocess: str = "center",
    seed: int = 0,
    num_classes: int = 3,
    num_features: int = 20,
    spread: float = 1.0,
) -> Dataset:
    """``num_classes`` blobs in ``num_features`` dimensions, class centres 4 apart, noise ``spread``."""
    num_train = 500 if num_train is None else num_train
    num_val = 100 if num_val is None else num_val
    num_test = 100 if num_test is None else num_test
    total = num_train + num_val + num_test
    if total * num_features > MAX_VALUES:
        raise DataError(f"synthetic: {total:,} samples of {num_features:,} features are {total * num_features:,} "
                        f"values, more than the {MAX_VALUES:,} this test dataset makes; lower data.num_train, "
                        "num_val, num_test or data.options.num_features.")
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.standard_normal((num_classes, num_features))  # (C, D)
    y = rng.integers(0, num_classes, size=total)  # (N,)
    X = centres[y] + spread * rng.standard_normal((total, num_features))  # (N, D)
    labelled = num_train + num_val
    return split_and_preprocess(
        "synthetic", X[:labelled], y[:labelled], num_train, num_val,
        X[labelled:], y[labelled:], num_test, num_classes=num_classes, dtype=dtype, source="synthetic",
        preprocess=preprocess,
    )

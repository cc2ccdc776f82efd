"""scikit-learn's bundled 8x8 handwritten digits: 1,797 images, no download. The embedded default dataset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from hpsearch.data.dataset import Dataset, split_and_preprocess

NUM_TRAIN, NUM_VAL, NUM_TEST = 1197, 300, 300
SAMPLE_SHAPE = (1, 8, 8)  # one grey channel of 8x8 pixels; the rows hold them row by row


def load(
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    dtype: str = "float32",
    preprocess: str = "center",
    seed: int = 0,
) -> Dataset:
    """Shuffle once with ``seed`` (the images come grouped by writer), then split train / val / test in order."""
    X, y = _images()
    order = np.random.default_rng(seed).permutation(len(y))
    X, y = X[order], y[order]  # (1797, 64) pixel values 0..16, (1797,)
    num_train = NUM_TRAIN if num_train is None else num_train
    num_val = NUM_VAL if num_val is None else num_val
    num_test = NUM_TEST if num_test is None else num_test
    labelled = num_train + num_val
    return split_and_preprocess(
        "digits", X[:labelled], y[:labelled], num_train, num_val,
        X[labelled:], y[labelled:], num_test, num_classes=10, dtype=dtype, source="digits",
        preprocess=preprocess, value_range=(0.0, 16.0), sample_shape=SAMPLE_SHAPE,
    )


def _images() -> tuple[np.ndarray, np.ndarray]:
    """The images and labels ``sklearn.datasets.load_digits`` returns, read from the file it reads: importing
    scikit-learn costs a process about two seconds, reading the file a few hundredths."""
    found = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = found.submodule_search_locations if found is not None else None
    path = Path(next(iter(folders)), "datasets", "data", "digits.csv.gz") if folders else None
    if path is None or not path.is_file():  # a layout of scikit-learn's other than the one this reads
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data, bunch.target
    rows = np.loadtxt(path, delimiter=",")  # 64 pixel values, then the label
    return rows[:, :-1], rows[:, -1].astype(int)

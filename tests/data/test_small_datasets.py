import numpy as np
import pytest

from hpsearch.data import load_dataset
from hpsearch.errors import DataError


def test_digits_defaults_and_interface():
    data = load_dataset("digits")
    assert data.X_train.shape == (1197, 64) and data.X_val.shape == (300, 64) and data.X_test.shape == (300, 64)
    assert data.num_classes == 10 and data.X_train.dtype == np.float32
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0, atol=1e-4)


def test_digits_split_sizes_and_determinism():
    a = load_dataset("digits", num_train=500, num_val=100, num_test=50, dtype="float64")
    b = load_dataset("digits", num_train=500, num_val=100, num_test=50, dtype="float64")
    assert a.X_test.shape == (50, 64) and a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert load_dataset("digits", seed=1).fingerprint != load_dataset("digits").fingerprint


def test_synthetic_is_seeded_and_configurable():
    a = load_dataset("synthetic", seed=5, num_classes=4, num_features=7)
    b = load_dataset("synthetic", seed=5, num_classes=4, num_features=7)
    assert a.X_train.shape == (500, 7) and a.num_classes == 4
    np.testing.assert_array_equal(a.X_train, b.X_train)


def test_unknown_dataset():
    with pytest.raises(DataError, match="Unknown dataset 'mnist'"):
        load_dataset("mnist")

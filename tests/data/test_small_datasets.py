import numpy as np
import pytest

from hpsearch.data import Dataset, load_dataset
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


def test_digits_read_from_scikit_learn_s_file_are_what_its_loader_returns(monkeypatch):
    from sklearn.datasets import load_digits

    from hpsearch.data import digits

    bunch = load_digits()
    X, y = digits._images()
    np.testing.assert_array_equal(X, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)
    assert X.dtype == bunch.data.dtype and y.dtype == bunch.target.dtype
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)  # no file where it is read from
    X, y = digits._images()
    np.testing.assert_array_equal(X, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)


def test_loading_the_digits_imports_no_scikit_learn():
    """Importing scikit-learn costs a process about two seconds; the digits come without it. In a fresh process:
    this one has imported scikit-learn for other tests."""
    import subprocess
    import sys

    code = ("import sys; from hpsearch.data import load_dataset; load_dataset('digits'); "
            "print(sorted(name for name in sys.modules if name.split('.')[0] == 'sklearn'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_synthetic_is_seeded_and_configurable():
    a = load_dataset("synthetic", seed=5, num_classes=4, num_features=7)
    b = load_dataset("synthetic", seed=5, num_classes=4, num_features=7)
    assert a.X_train.shape == (500, 7) and a.num_classes == 4
    np.testing.assert_array_equal(a.X_train, b.X_train)


def test_unknown_dataset():
    with pytest.raises(DataError, match="Unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_sample_shapes_say_how_a_row_unflattens():
    digits = load_dataset("digits", num_train=10, num_val=5, num_test=0, preprocess="none")
    assert digits.sample_shape == (1, 8, 8) and digits.task == "classification"
    from sklearn.datasets import load_digits

    images = load_digits().images[np.random.default_rng(0).permutation(1797)[:10]]  # (10, 8, 8)
    np.testing.assert_array_equal(digits.X_train.reshape(-1, *digits.sample_shape)[:, 0], images)
    assert load_dataset("synthetic", num_features=7).sample_shape == (7,)


def test_preprocess_none_only_casts():
    data = load_dataset("digits", num_train=10, num_val=5, num_test=5, dtype="float64", preprocess="none")
    from sklearn.datasets import load_digits

    pixels = load_digits().data[np.random.default_rng(0).permutation(1797)]  # (1797, 64) values 0..16
    np.testing.assert_array_equal(data.X_train, pixels[:10])
    np.testing.assert_array_equal(data.X_val, pixels[10:15])
    np.testing.assert_array_equal(data.X_test, pixels[15:20])


def test_standardize_uses_the_training_split_s_mean_and_spread_per_feature():
    raw = load_dataset("digits", num_train=300, num_val=50, num_test=50, dtype="float64", preprocess="none")
    data = load_dataset("digits", num_train=300, num_val=50, num_test=50, dtype="float64", preprocess="standardize")
    mean, spread = raw.X_train.mean(axis=0), raw.X_train.std(axis=0)
    varying = spread > 0  # a digit's corner pixels are 0 in every training image: centred, not divided
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(data.X_train.std(axis=0)[varying], 1)
    np.testing.assert_allclose(data.X_val[:, varying], ((raw.X_val - mean) / np.where(varying, spread, 1))[:, varying])
    np.testing.assert_array_equal(data.X_test[:, ~varying], raw.X_test[:, ~varying] - mean[~varying])


def test_a_dataset_made_by_hand_gets_flat_samples_and_classification_by_default():
    X, y = np.zeros((4, 6)), np.zeros(4, dtype=np.int64)
    data = Dataset("hand", X, y, X, y, None, None, num_classes=2, fingerprint="-")
    assert (data.sample_shape, data.task) == ((6,), "classification")
    assert Dataset("hand", X, y, X, y, None, None, 2, "-", sample_shape=(2, 3)).sample_shape == (2, 3)
    with pytest.raises(ValueError, match=r"^sample_shape \(4, 3\) does not hold the 6 values of a row$"):
        Dataset("hand", X, y, X, y, None, None, 2, "-", sample_shape=(4, 3))

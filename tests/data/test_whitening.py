import dataclasses
import os

import numpy as np
import pytest

import hpsearch
from hpsearch.data import cache, load_dataset, whitening
from hpsearch.errors import DataError, SpecError
from hpsearch.spec.build import load_spec
from tests.conftest import TINY_STUDY, write_spec


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "whitening"


def blobs(**changes):
    # 12 correlated features of full rank: every direction has variance, so a tiny epsilon whitens exactly
    return load_dataset("synthetic", num_train=400, num_val=50, num_test=50, dtype="float64", num_features=12,
                        preprocess=changes.pop("preprocess", "zca"), **changes)


def covariance(X):
    return X.T @ X / len(X)


def test_zca_whitens_the_training_split_and_keeps_the_sample_shape():
    data = blobs(whitening={"epsilon": 1e-9})
    np.testing.assert_allclose(covariance(data.X_train), np.eye(12), atol=1e-6)
    assert data.X_val.shape == (50, 12) and data.X_test.shape == (50, 12) and data.sample_shape == (12,)
    # ZCA is the whitening closest to the inputs: each whitened feature correlates most with its own original
    centred = load_dataset("synthetic", num_train=400, num_val=50, num_test=50, dtype="float64", num_features=12)
    correlation = np.corrcoef(centred.X_train.T, data.X_train.T)[:12, 12:]
    assert (np.argmax(np.abs(correlation), axis=1) == np.arange(12)).all()


def test_pca_keeps_the_components_of_largest_variance():
    data = blobs(preprocess="pca", whitening={"components": 5, "epsilon": 1e-9})
    assert data.X_train.shape == (400, 5) and data.X_val.shape == (50, 5) and data.X_test.shape == (50, 5)
    assert data.sample_shape == (5,) and data.input_size == 5
    np.testing.assert_allclose(covariance(data.X_train), np.eye(5), atol=1e-6)
    centred = load_dataset("synthetic", num_train=400, num_val=50, num_test=50, dtype="float64", num_features=12)
    values = np.linalg.eigvalsh(covariance(centred.X_train))[::-1]
    # the kept directions carry the 5 largest variances: projecting the centred data on them recovers those
    projection = np.linalg.lstsq(centred.X_train, data.X_train, rcond=None)[0]
    unscaled = centred.X_train @ (projection / np.linalg.norm(projection, axis=0))
    np.testing.assert_allclose(np.var(unscaled, axis=0), values[:5], rtol=1e-6)


def test_epsilon_damps_the_directions_of_small_variance():
    sharp, damped = blobs(preprocess="pca", whitening={"epsilon": 1e-9}), blobs(preprocess="pca")
    variances = np.diag(covariance(damped.X_train))
    assert (variances < 1).all() and variances[-1] < variances[0]  # s / (s + 0.1 * mean(s)): smallest damped most
    np.testing.assert_allclose(np.diag(covariance(sharp.X_train)), 1, atol=1e-6)


def test_the_fit_sees_the_training_split_only():
    data = load_dataset("digits", num_train=600, num_val=200, num_test=100, dtype="float64", preprocess="center")
    noisy = dataclasses.replace(data, X_val=data.X_val + 5.0, X_test=data.X_test * 3.0)
    a, b = whitening.whiten(data, "zca"), whitening.whiten(noisy, "zca")
    mean = data.X_train.mean(axis=0)
    projection = whitening.fit(data.X_train - mean, "zca", 64, whitening.DEFAULT_EPSILON)
    np.testing.assert_array_equal(a.X_train, (data.X_train - mean) @ projection)
    np.testing.assert_array_equal(b.X_train, a.X_train)
    np.testing.assert_array_equal(b.X_val, (noisy.X_val - mean) @ projection)
    np.testing.assert_array_equal(b.X_test, (noisy.X_test - mean) @ projection)


def test_rows_that_were_not_centred_are_centred_first():
    raw = load_dataset("digits", num_train=600, num_val=200, num_test=100, dtype="float64", preprocess="none")
    centred = load_dataset("digits", num_train=600, num_val=200, num_test=100, dtype="float64", preprocess="center")
    for split in ("X_train", "X_val", "X_test"):
        np.testing.assert_allclose(getattr(whitening.whiten(raw, "pca", components=10), split),
                                   getattr(whitening.whiten(centred, "pca", components=10), split), atol=1e-8)


def test_the_matrix_is_cached_and_a_broken_entry_is_fitted_again(_cache, monkeypatch):
    first = blobs(preprocess="pca", whitening={"components": 4})
    (entry,) = _cache.glob("*.npy")
    fits = []
    fit = whitening.fit
    monkeypatch.setattr(whitening, "fit", lambda *a: fits.append(a) or fit(*a))
    again = blobs(preprocess="pca", whitening={"components": 4})
    np.testing.assert_array_equal(first.X_train, again.X_train)
    assert fits == []  # read from the cache
    blobs(preprocess="pca", whitening={"components": 3})  # other settings: another entry
    assert len(fits) == 1 and len(list(_cache.glob("*.npy"))) == 2
    entry.write_bytes(entry.read_bytes()[:50])  # truncated, as by a crash of an older writer
    np.testing.assert_array_equal(blobs(preprocess="pca", whitening={"components": 4}).X_train, first.X_train)
    assert len(fits) == 2


def test_the_cache_key_comes_from_the_loader_s_fingerprint_not_a_hash_of_the_whole_split(monkeypatch):
    """Every worker loads the data: keyed by the fingerprint the loader made, a load hashes a few rows only."""
    data = load_dataset("digits", num_train=1197, num_val=300, num_test=300, dtype="float64", preprocess="center")
    hashed, blake2b = [], whitening.hashlib.blake2b

    class Counting:
        def __init__(self, **kwargs):
            self.digest = blake2b(**kwargs)

        def update(self, data):
            hashed.append(memoryview(data).nbytes)
            self.digest.update(data)

        def hexdigest(self):
            return self.digest.hexdigest()

    monkeypatch.setattr(whitening, "hashlib", type("hashlib", (), {"blake2b": Counting}))
    whitened = whitening.whiten(data, "zca")
    assert 0 < sum(hashed) <= data.X_train.nbytes / 10
    scaled = dataclasses.replace(data, X_train=data.X_train * 2.0)  # same fingerprint, other rows: another entry
    np.testing.assert_allclose(whitening.whiten(scaled, "zca").X_train, whitened.X_train, atol=1e-6)
    assert len(list((whitening.cache_dir() / "whitening").glob("*.npy"))) == 2


def test_a_damaged_entry_is_fitted_again_not_a_crash(_cache, monkeypatch, damage_entry):
    first = blobs(preprocess="pca", whitening={"components": 4})
    (entry,) = _cache.glob("*.npy")
    damage_entry(entry)
    fits = []
    fit = whitening.fit
    monkeypatch.setattr(whitening, "fit", lambda *a: fits.append(a) or fit(*a))
    np.testing.assert_array_equal(blobs(preprocess="pca", whitening={"components": 4}).X_train, first.X_train)
    assert len(fits) == 1
    if not entry.is_dir():  # a folder in its place stays: each load fits again
        assert cache.load_entry(entry).shape == (12, 4)  # rewritten whole


def test_an_unwritable_cache_only_costs_a_fit(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the cache's folder cannot be made: OSError on every write, as on a read-only disk
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(blocked))
    data = blobs(preprocess="pca", whitening={"components": 4})
    assert data.X_train.shape == (400, 4) and blocked.read_text() == ""


def test_bad_whitening_settings_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"components must be between 1 and the 12 features. Got 13 instead.$"):
        blobs(preprocess="pca", whitening={"components": 13})
    spec = write_spec(tmp_path)
    with pytest.raises(SpecError, match=r"tiny.yaml: data whitening is for preprocess pca or zca"):
        load_spec(spec, ["data.preprocess=standardize", "data.whitening.epsilon=0.5"])
    with pytest.raises(SpecError, match=r"whitening.components is for preprocess pca; zca keeps every feature"):
        load_spec(spec, ["data.preprocess=zca", "data.whitening.components=4"])
    with pytest.raises(SpecError, match=r"data.whitening.epsilon must be greater than 0"):
        load_spec(spec, ["data.preprocess=zca", "data.whitening.epsilon=0"])


def test_a_study_trains_on_whitened_features_and_scores_the_test_split_alike(tmp_path):
    spec = {**TINY_STUDY, "storage": f"sqlite:///{tmp_path / 'pca.db'}", "tracking": {"enabled": False},
            "data": {**TINY_STUDY["data"], "preprocess": "pca", "whitening": {"components": 6}}}
    result = hpsearch.run(spec, echo=lambda line: None)
    assert result.complete and result.test_value is not None
    assert result.best_config["hidden_size"] in (4, 8, 12, 16)


def test_the_fit_runs_under_a_lock_that_other_processes_wait_on(_cache, monkeypatch):
    import fcntl

    held = []
    fit = whitening.fit

    def fit_and_probe(*args):
        (lock,) = _cache.glob("*.lock")
        with lock.open("a") as other:  # another open file, as another worker's: it cannot take the lock now
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(lock.name)
        return fit(*args)

    monkeypatch.setattr(whitening, "fit", fit_and_probe)
    blobs(preprocess="pca", whitening={"components": 4})
    assert len(held) == 1


def test_a_fifo_in_the_lock_s_place_is_worked_around_not_waited_on(_cache, monkeypatch):
    first = blobs(preprocess="pca", whitening={"components": 4})
    (lock,) = _cache.glob("*.lock")
    (entry,) = _cache.glob("*.npy")
    lock.unlink()
    os.mkfifo(lock)
    entry.unlink()  # so the fit runs where the lock would be held
    np.testing.assert_array_equal(blobs(preprocess="pca", whitening={"components": 4}).X_train, first.X_train)

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from hpsearch.data import cache, cifar10, load_dataset
from hpsearch.errors import DataError


def _write_batch(path: Path, data, labels) -> None:
    with path.open("wb") as f:
        pickle.dump({b"batch_label": b"test", b"labels": labels, b"data": data, b"filenames": []}, f, protocol=2)


@pytest.fixture
def small_cifar(tmp_path: Path) -> Path:
    """Five tiny batches of 20 random images each, plus a 10-image test batch, in the official layout."""
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}", rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                     [int(v) for v in rng.integers(0, 10, 20)])
    _write_batch(tmp_path / "test_batch", rng.integers(0, 256, (10, 3072), dtype=np.uint8), list(range(10)))
    return tmp_path


def test_split_mean_subtraction_and_layout(small_cifar):
    data = load_dataset("cifar10", path=small_cifar, num_train=60, num_val=30, num_test=5, dtype="float64")
    assert data.X_train.shape == (60, 3072) and data.X_val.shape == (30, 3072) and data.X_test.shape == (5, 3072)
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0, atol=1e-9)
    # first rows train, next rows validate, in file order; HWC flattening like the assignment's loader
    with (small_cifar / "data_batch_1").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    images, _ = cifar10.load_batch(small_cifar / "data_batch_1")
    assert images.shape == (20, 32, 32, 3)
    assert images[0, 0, 0, 1] == raw[b"data"][0, 1024]  # green channel of the first pixel
    assert list(data.y_train[:20]) == raw[b"labels"]
    assert data.X_train.dtype == np.float64
    assert data.sample_shape == (32, 32, 3)  # the rows' own order: height, width, channel


def test_directory_without_test_batch_serves_train_and_val(small_cifar):
    (small_cifar / "test_batch").unlink()
    data = load_dataset("cifar10", path=small_cifar, num_train=50, num_val=10)
    assert data.X_test is None and data.X_train.dtype == np.float32


def test_without_test_batch_holdout_takes_the_last_training_images_as_the_test_split(small_cifar):
    with pytest.raises(DataError, match=r"data.options.holdout is for a folder without test_batch"):
        load_dataset("cifar10", path=small_cifar, num_train=50, num_val=20, holdout=30)
    (small_cifar / "test_batch").unlink()
    data = load_dataset("cifar10", path=small_cifar, num_train=50, num_val=20, num_test=1000, holdout=30,
                        dtype="float64", preprocess="none")
    last, labels = cifar10.load_batch(small_cifar / "data_batch_5")
    held, held_labels = cifar10.load_batch(small_cifar / "data_batch_4")
    # the test split is the last 30 of the 100 images: batch 4's last 10, then all of batch 5
    np.testing.assert_array_equal(data.X_test[10:], last.reshape(20, -1))
    np.testing.assert_array_equal(data.X_test[:10], held[10:].reshape(10, -1))
    assert list(data.y_test) == [*held_labels[10:], *labels]
    assert data.X_train.shape == (50, 3072) and data.X_val.shape == (20, 3072)
    # a smaller training split changes no test image, and none of the 70 rows trials see is one of them
    smaller = load_dataset("cifar10", path=small_cifar, num_train=10, num_val=20, holdout=30, preprocess="none")
    np.testing.assert_array_equal(smaller.X_test, data.X_test.astype(np.float32))
    with pytest.raises(DataError, match=r"num_train \+ num_val \+ holdout = 101 exceeds the 100 training images"):
        load_dataset("cifar10", path=small_cifar, num_train=50, num_val=21, holdout=30)
    # without holdout, as before: no test split, whatever num_test says
    assert load_dataset("cifar10", path=small_cifar, num_train=50, num_val=20, num_test=1000).X_test is None


def test_reduce_gadget_is_rejected_before_it_runs(small_cifar, tmp_path):
    marker = tmp_path / "pwned"

    class Gadget:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with (small_cifar / "data_batch_2").open("wb") as f:
        pickle.dump({b"data": Gadget(), b"labels": []}, f)
    with pytest.raises(DataError, match=r"data_batch_2: rejected as unsafe.*pathlib"):
        load_dataset("cifar10", path=small_cifar, num_train=60, num_val=10)
    assert not marker.exists()


def test_os_system_gadget_is_rejected(small_cifar, tmp_path):
    payload = b"cos\nsystem\n(S'touch " + str(tmp_path / "x").encode() + b"'\ntR."
    (small_cifar / "data_batch_1").write_bytes(payload)
    with pytest.raises(DataError, match="os.system"):
        load_dataset("cifar10", path=small_cifar, num_train=10, num_val=5)
    assert not (tmp_path / "x").exists()


def test_truncated_batch(small_cifar):
    path = small_cifar / "data_batch_1"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_1: not a readable CIFAR-10 batch"):
        load_dataset("cifar10", path=small_cifar, num_train=10, num_val=5)


def test_wrong_shape_and_labels_out_of_range(small_cifar):
    _write_batch(small_cifar / "data_batch_1", np.zeros((4, 100), dtype=np.uint8), [0, 1, 2, 3])
    with pytest.raises(DataError, match=r"data_batch_1: 'data' must be a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", path=small_cifar, num_train=10, num_val=5)
    _write_batch(small_cifar / "data_batch_1", np.zeros((2, 3072), dtype=np.uint8), [0, 10])
    with pytest.raises(DataError, match="labels must lie in 0..9"):
        load_dataset("cifar10", path=small_cifar, num_train=10, num_val=5)


def test_missing_folder_and_file(tmp_path, small_cifar):
    with pytest.raises(DataError, match="CIFAR-10 folder not found"):
        load_dataset("cifar10", path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()  # a folder, without a batch: the folder is named, not its first batch
    with pytest.raises(DataError, match=r"empty: no CIFAR-10 batches in this folder \(expected data_batch_1..5"):
        load_dataset("cifar10", path=tmp_path / "empty")
    (small_cifar / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: file not found"):
        load_dataset("cifar10", path=small_cifar, num_train=60, num_val=10)


def test_split_larger_than_the_data(small_cifar):
    with pytest.raises(DataError, match="exceeds the 100 labelled examples"):
        load_dataset("cifar10", path=small_cifar, num_train=95, num_val=10)


@pytest.mark.cifar10
def test_genuine_batches_load(cifar10_dir):
    data = load_dataset("cifar10", path=cifar10_dir)
    assert data.X_train.shape == (49000, 3072) and data.X_val.shape == (1000, 3072)
    assert set(np.unique(data.y_train)) == set(range(10))


def _cache_files(folder: Path) -> list[Path]:
    return sorted((folder / cifar10.CACHE_DIR).glob("*"))


def _same(a, b) -> None:
    for split in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, split), getattr(b, split))
    assert a.fingerprint == b.fingerprint


def test_second_load_reads_the_cache_and_returns_identical_arrays(small_cifar, monkeypatch):
    first = load_dataset("cifar10", path=small_cifar, num_train=60, num_val=30, num_test=5)
    assert len(_cache_files(small_cifar)) == 2 * 6  # images and labels of data_batch_1..5 and test_batch

    def no_unpickling(path):
        raise AssertionError(f"{path} was unpickled although its cache entry exists")

    monkeypatch.setattr(cifar10, "load_batch", no_unpickling)
    _same(load_dataset("cifar10", path=small_cifar, num_train=60, num_val=30, num_test=5), first)


def test_changed_batch_invalidates_its_cache_entry(small_cifar):
    before = load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5)
    _write_batch(small_cifar / "data_batch_1", np.full((20, 3072), 7, dtype=np.uint8), [3] * 20)
    after = load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5)
    assert list(after.y_train) == [3] * 15 and after.fingerprint != before.fingerprint
    assert len(list((small_cifar / cifar10.CACHE_DIR).glob("data_batch_1-*"))) == 2  # the stale pair is gone


@pytest.mark.parametrize("damage", [b"", b"\x93NUMPY garbage", None])
def test_corrupt_cache_file_is_ignored_and_rebuilt(small_cifar, damage):
    first = load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5, num_test=5)
    images = next((small_cifar / cifar10.CACHE_DIR).glob("data_batch_1-*.images.npy"))
    if damage is None:  # a valid .npy of the wrong shape
        np.save(images, np.zeros((3, 5), dtype=np.uint8))
    else:
        images.write_bytes(damage)
    _same(load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5, num_test=5), first)
    assert np.load(images).shape == (20, 32, 32, 3)  # rewritten


@pytest.mark.parametrize("entry", ["images", "labels"])
def test_a_damaged_cache_entry_is_rebuilt_not_a_crash(small_cifar, entry, damage_entry):
    first = load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5, num_test=5)
    (cached,) = (small_cifar / cifar10.CACHE_DIR).glob(f"data_batch_1-*.{entry}.npy")
    damage_entry(cached)
    _same(load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5, num_test=5), first)
    if not cached.is_dir():  # a folder in its place stays: the batch is decoded on every load instead
        assert cache.load_entry(cached) is not None  # rewritten whole


def test_failed_cache_write_leaves_no_entry_and_unwritable_folder_loads(small_cifar, monkeypatch):
    def crash_midway(file, array, allow_pickle=True):
        file.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(cifar10.np, "save", crash_midway)
    first = load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5, num_test=5)
    assert _cache_files(small_cifar) == []  # neither a half-written entry nor a temporary file

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(cache.tempfile, "mkstemp", read_only)
    _same(load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5, num_test=5), first)


def test_mirror_adds_each_training_image_mirrored_and_leaves_validation_and_test_alone(small_cifar):
    plain = load_dataset("cifar10", path=small_cifar, num_train=30, num_val=20, num_test=10, preprocess="none")
    mirrored = load_dataset("cifar10", path=small_cifar, num_train=30, num_val=20, num_test=10, preprocess="none",
                            mirror=True)
    assert mirrored.X_train.shape == (60, 3072) and mirrored.sample_shape == (32, 32, 3)
    images = plain.X_train.reshape(30, 32, 32, 3)
    np.testing.assert_array_equal(mirrored.X_train[:30], plain.X_train)
    np.testing.assert_array_equal(mirrored.X_train[30:].reshape(30, 32, 32, 3), images[:, :, ::-1, :])
    assert mirrored.X_train[30, :3].tolist() == images[0, 0, 31].tolist()  # the first pixel is the row's last one
    np.testing.assert_array_equal(mirrored.y_train, np.concatenate([plain.y_train, plain.y_train]))
    for split in ("X_val", "y_val", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(mirrored, split), getattr(plain, split))
    with pytest.raises(DataError, match=r"num_train \+ num_val = 101 exceeds the 100 labelled examples"):
        load_dataset("cifar10", path=small_cifar, num_train=81, num_val=20, mirror=True)


@pytest.mark.parametrize("labels", [np.full(20, 200, dtype=np.int64), np.full(20, -1, dtype=np.int64),
                                    np.zeros(20, dtype=np.int32), np.zeros(7, dtype=np.int64)])
def test_cached_labels_that_a_fresh_batch_could_not_have_are_rebuilt(small_cifar, labels):
    first = load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5, num_test=5)
    cached = next((small_cifar / cifar10.CACHE_DIR).glob("data_batch_1-*.labels.npy"))
    np.save(cached, labels)
    _same(load_dataset("cifar10", path=small_cifar, num_train=15, num_val=5, num_test=5), first)
    np.testing.assert_array_equal(np.load(cached), first.y_train[:15].tolist() + first.y_val.tolist())  # rewritten


@pytest.mark.parametrize("labels, message", [
    ([2**70] * 20, "'labels' must be a list of integers"),
    ([-(2**63)] * 20, r"labels must lie in 0..9; found -9223372036854775808..-9223372036854775808"),
    ([2**64 - 1] * 20, "labels must lie in 0..9"),
    ([1.5] * 20, "'labels' must be a list of integers"),
    (["a"] * 20, "'labels' must be a list of integers"),
])
def test_extreme_label_values_are_a_data_error(small_cifar, labels, message):
    _write_batch(small_cifar / "data_batch_1", np.zeros((20, 3072), dtype=np.uint8), labels)
    with pytest.raises(DataError, match=message):
        load_dataset("cifar10", path=small_cifar, num_train=10, num_val=5)


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch"])
@pytest.mark.parametrize("make, message", [(Path.mkdir, "a folder, not a file"),
                                           (os.mkfifo, r"a FIFO \(named pipe\), not a regular file")])
def test_a_batch_name_that_is_a_folder_or_a_fifo_is_a_data_error(small_cifar, name, make, message):
    (small_cifar / name).unlink()
    make(small_cifar / name)  # a FIFO is refused, not waited on
    with pytest.raises(DataError, match=f"{name}: {message}; the CIFAR-10 folder holds the files data_batch_1..5"):
        load_dataset("cifar10", path=small_cifar, num_train=30, num_val=5, num_test=5)

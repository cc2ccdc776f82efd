"""``dataset: arrays``: an .npz file of the user's, read without pickle, checked, labelled and split."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hpsearch import files
from hpsearch.data import load_dataset
from hpsearch.errors import DataError


def save(tmp_path: Path, name: str = "data.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def load(path: Path, **kwargs):
    """The arrays as stored: float64, no preprocessing."""
    return load_dataset("arrays", path=path, dtype="float64", preprocess="none", **kwargs)


def grid(rows: int, columns: int = 3) -> np.ndarray:
    """(rows, columns): row i holds i*10, i*10+1, ...: each row says which it is."""
    return np.arange(rows)[:, None] * 10.0 + np.arange(columns)  # (N, D)


# ---- splits -----------------------------------------------------------------------------------------------------


def test_given_splits_are_used_in_order_and_the_training_rows_shuffled(tmp_path):
    path = save(tmp_path, X_train=grid(10), y_train=np.arange(10) % 2, X_val=grid(4) + 1000, y_val=[0, 1, 1, 0],
                X_test=grid(3) + 2000, y_test=[1, 1, 0])
    data = load(path, seed=3)
    order = np.random.default_rng(3).permutation(10)
    np.testing.assert_array_equal(data.X_train, grid(10)[order])
    np.testing.assert_array_equal(data.y_train, (np.arange(10) % 2)[order])
    np.testing.assert_array_equal(data.X_val, grid(4) + 1000)
    np.testing.assert_array_equal(data.y_val, [0, 1, 1, 0])
    np.testing.assert_array_equal(data.X_test, grid(3) + 2000)
    np.testing.assert_array_equal(data.y_test, [1, 1, 0])
    assert (data.name, data.task, data.num_classes, data.sample_shape) == ("data.npz", "classification", 2, (3,))
    assert data.y_train.dtype == np.int64 and data.X_train.dtype == np.float64


def test_split_sizes_take_the_first_rows_of_given_splits(tmp_path):
    path = save(tmp_path, X_train=grid(10), y_train=np.arange(10) % 2, X_val=grid(4) + 1000, y_val=[0, 1, 1, 0],
                X_test=grid(3) + 2000, y_test=[1, 1, 0])
    data = load(path, num_train=6, num_val=2, num_test=1)
    np.testing.assert_array_equal(data.X_train, grid(10)[np.random.default_rng(0).permutation(10)[:6]])
    np.testing.assert_array_equal(data.X_val, grid(2) + 1000)
    np.testing.assert_array_equal(data.X_test, grid(1) + 2000)
    assert load(path, num_test=0).X_test is None


def test_without_X_val_a_fifth_of_the_shuffled_training_rows_validate(tmp_path):
    path = save(tmp_path, X_train=grid(12), y_train=np.arange(12) % 3)
    order = np.random.default_rng(0).permutation(12)
    data = load(path)
    np.testing.assert_array_equal(data.X_train, grid(12)[order[:10]])
    np.testing.assert_array_equal(data.X_val, grid(12)[order[10:]])  # 12 // 5 = 2 rows off the end
    assert data.X_test is None
    fewer = load(path, num_train=4, num_val=3)
    np.testing.assert_array_equal(fewer.X_train, grid(12)[order[:4]])
    np.testing.assert_array_equal(fewer.X_val, grid(12)[order[9:]])  # still the end: num_train leaves val alone


def test_one_X_y_is_split_into_train_val_and_test_from_the_end(tmp_path):
    path = save(tmp_path, X=grid(20), y=np.arange(20) % 4)
    order = np.random.default_rng(7).permutation(20)
    data = load(path, seed=7, num_test=4)
    np.testing.assert_array_equal(data.X_test, grid(20)[order[16:]])
    np.testing.assert_array_equal(data.X_val, grid(20)[order[13:16]])  # a fifth of the 16 rows left: 3
    np.testing.assert_array_equal(data.X_train, grid(20)[order[:13]])
    np.testing.assert_array_equal(data.y_train, (np.arange(20) % 4)[order[:13]])
    assert load(path, seed=7).X_test is None  # num_test defaults to 0
    assert (len(load(path).y_train), len(load(path).y_val)) == (16, 4)


def test_the_shuffle_follows_the_seed_and_so_does_the_fingerprint(tmp_path):
    path = save(tmp_path, X=grid(20), y=np.arange(20) % 2)
    assert load(path, seed=1).fingerprint == load(path, seed=1).fingerprint
    assert load(path, seed=1).fingerprint != load(path, seed=2).fingerprint
    np.testing.assert_array_equal(load(path, seed=1).X_train, load(path, seed=1).X_train)


def test_images_keep_their_sample_shape_and_become_rows(tmp_path):
    images = np.arange(10 * 2 * 3 * 4).reshape(10, 2, 3, 4).astype(np.uint8)
    data = load(save(tmp_path, X=images, y=np.arange(10) % 2))
    assert data.sample_shape == (2, 3, 4) and data.X_train.shape == (8, 24) and data.X_val.shape == (2, 24)
    order = np.random.default_rng(0).permutation(10)
    np.testing.assert_array_equal(data.X_train.reshape(-1, *data.sample_shape), images[order[:8]])


def test_preprocessing_applies_to_the_user_arrays(tmp_path):
    path = save(tmp_path, X_train=grid(4), y_train=[0, 1, 0, 1], X_val=grid(2), y_val=[0, 1])
    centred = load_dataset("arrays", path=path, dtype="float64", preprocess="center")
    np.testing.assert_array_equal(centred.X_val, grid(2) - grid(4).mean(axis=0))
    as_stored = load_dataset("arrays", path=path, dtype="float32", preprocess="none")
    assert as_stored.X_val.dtype == np.float32
    np.testing.assert_array_equal(as_stored.X_val, grid(2))


# ---- task and labels --------------------------------------------------------------------------------------------


def test_labels_become_0_to_C_minus_1_by_sorted_value_across_splits(tmp_path):
    path = save(tmp_path, X_train=grid(4), y_train=[7, 3, 9, 3], X_val=grid(2), y_val=[9, 9],
                X_test=grid(2), y_test=[5, 7])
    data = load(path)
    order = np.random.default_rng(0).permutation(4)
    np.testing.assert_array_equal(data.y_train, np.array([2, 0, 3, 0])[order])  # classes 3, 5, 7, 9
    np.testing.assert_array_equal(data.y_val, [3, 3])
    np.testing.assert_array_equal(data.y_test, [1, 2])
    assert data.num_classes == 4


def test_text_labels_are_classes_in_sorted_order(tmp_path):
    data = load(save(tmp_path, X_train=grid(3), y_train=np.array(["dog", "cat", "emu"]), X_val=grid(2),
                     y_val=np.array(["emu", "cat"])))
    assert data.task == "classification" and data.num_classes == 3
    np.testing.assert_array_equal(data.y_val, [2, 0])


@pytest.mark.parametrize(
    "y, task, num_classes, y_val",
    [
        ([0.5, 1.5, 2.0, 3.25, 4.0], "regression", 0, [3.25, 4.0]),  # a fraction anywhere: regression
        ([1.0, 2.0, 1.0, 2.0, 2.0], "classification", 2, [1, 1]),  # whole floats are labels
        ([True, False, True, False, False], "classification", 2, [0, 0]),
        ([-4, 10, -4, 10, 10], "classification", 2, [1, 1]),
    ],
)
def test_the_targets_decide_the_task(tmp_path, y, task, num_classes, y_val):
    data = load(save(tmp_path, X_train=grid(3), y_train=y[:3], X_val=grid(2), y_val=y[3:]))
    assert (data.task, data.num_classes) == (task, num_classes)
    np.testing.assert_array_equal(data.y_val, y_val)
    assert data.y_val.dtype == (np.float64 if task == "regression" else np.int64)


def test_the_task_option_overrides_the_targets(tmp_path):
    path = save(tmp_path, X_train=grid(3), y_train=[1, 2, 4], X_val=grid(2), y_val=[2, 8])
    regression = load(path, task="regression")
    assert (regression.task, regression.num_classes, regression.y_val.dtype) == ("regression", 0, np.float64)
    np.testing.assert_array_equal(regression.y_val, [2.0, 8.0])
    fractions = save(tmp_path, "fractions.npz", X_train=grid(3), y_train=[0.5, 0.25, 0.5], X_val=grid(2),
                     y_val=[0.25, 0.25])
    classes = load(fractions, task="classification")
    assert (classes.task, classes.num_classes) == ("classification", 2)
    np.testing.assert_array_equal(classes.y_val, [0, 0])


# ---- refusals: one line, naming the file and the key ---------------------------------------------------------------

X4, Y4 = grid(4, 4), np.array([0, 1, 0, 1])
NAN_ROW = grid(4, 4)
NAN_ROW[2, 1] = np.nan
INF_Y = np.array([0.5, np.inf, 1.5, 2.0])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"X_train": np.arange(4.0), "y_train": Y4},
         "X_train must hold a row per sample, shape (N, D) or (N, ...). Got shape (4,) instead."),
        ({"X_train": X4, "y_train": Y4[:, None]},
         "y_train must be 1-D, a target per row of X_train. Got shape (4, 1) instead."),
        ({"X_train": X4, "y_train": Y4[:3]}, "y_train has 3 rows, X_train has 4."),
        ({"X_train": X4, "y_train": Y4, "X_val": grid(2, 3), "y_val": [0, 1]}, "X_val has 3 columns, X_train has 4."),
        ({"X_train": X4.reshape(4, 2, 2), "y_train": Y4, "X_val": grid(2, 4), "y_val": [0, 1]},
         "X_val has samples of shape (4,), X_train of shape (2, 2)."),
        ({"X_train": NAN_ROW, "y_train": Y4}, "X_train[2] holds nan; every value must be finite."),
        ({"X_train": X4, "y_train": Y4, "X_val": X4, "y_val": INF_Y},
         "y_val[1] holds inf; every value must be finite."),
        ({"X_train": X4 + 1j, "y_train": Y4},
         "X_train must hold numbers (bool, integer or float). Got dtype complex128 instead."),
        ({"X_train": X4.astype(str), "y_train": Y4},
         "X_train must hold numbers (bool, integer or float). Got dtype <U32 instead."),
        ({"X_train": np.zeros((0, 4)), "y_train": np.zeros(0)}, "X_train is empty (shape (0, 4))."),
        ({"X_train": X4, "y_train": Y4.astype("datetime64[s]")},
         "y_train must hold numbers or text labels. Got dtype datetime64[s] instead."),
        ({"X_train": X4, "y_train": Y4, "X_val": X4}, "X_val without y_val; give both or neither."),
        ({"y_train": Y4}, "y_train without X_train; give both or neither."),
        ({"X_val": X4, "y_val": Y4}, "no training arrays; the keys are X_train, y_train, X_val, y_val, X_test, y_test, "
                                     "or X, y. Got X_val, y_val instead."),
        ({"X": X4, "y": Y4, "X_val": X4, "y_val": Y4},
         "X and y stand alone, so X_val cannot join them; name the training arrays X_train and y_train instead."),
        ({"X_train": X4, "y_train": Y4, "x_val": X4},
         "unknown key 'x_val'; the keys are X_train, y_train, X_val, y_val, X_test, y_test, or X, y."),
        ({"X": X4, "y": [3, 3, 3, 3]}, "y has one class only (3); classification needs at least two."),
        ({"X_train": X4, "y_train": np.array(["a", "b", "a", "b"]), "X_val": X4, "y_val": Y4},
         "y_train holds text labels, y_val numbers; give every split the same kind."),
    ],
)
def test_bad_arrays_are_one_line_naming_the_file_and_the_key(tmp_path, arrays, message):
    path = save(tmp_path, **arrays)
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    "arrays, sizes, message",
    [
        ({"X": X4, "y": Y4}, {"num_val": 4},
         "X has 4 rows; taking data.num_val 4 from them leaves no rows to train on."),
        ({"X": X4, "y": Y4}, {"num_test": 2, "num_val": 1, "num_train": 2},
         "X has 4 rows; taking data.num_test 2 + data.num_val 1 from them leaves 1 row to train on, fewer than "
         "data.num_train 2."),
        ({"X": X4[:1], "y": Y4[:1]}, {"task": "regression"},
         "X has 1 row; taking data.num_val 1 from them leaves no rows to train on."),
        ({"X_train": X4, "y_train": Y4, "X_val": X4, "y_val": Y4}, {"num_train": 5},
         "X_train has 4 rows, fewer than data.num_train 5."),
        ({"X_train": X4, "y_train": Y4, "X_val": X4, "y_val": Y4}, {"num_val": 5},
         "X_val has 4 rows, fewer than data.num_val 5."),
        ({"X_train": X4, "y_train": Y4, "X_val": X4, "y_val": Y4, "X_test": X4, "y_test": Y4}, {"num_test": 9},
         "X_test has 4 rows, fewer than data.num_test 9."),
    ],
)
def test_split_sizes_the_arrays_cannot_serve_are_one_line(tmp_path, arrays, sizes, message):
    path = save(tmp_path, **arrays)
    with pytest.raises(DataError) as caught:
        load(path, **sizes)
    assert str(caught.value) == f"{path}: {message}"


def test_text_labels_cannot_be_forced_into_regression(tmp_path):
    path = save(tmp_path, X=X4, y=np.array(["a", "b", "a", "b"]))
    with pytest.raises(DataError) as caught:
        load(path, task="regression")
    assert str(caught.value) == f"{path}: data.options.task is regression, but y holds text labels ('a')."


def test_an_unknown_task_is_one_line(tmp_path):
    path = save(tmp_path, X=X4, y=Y4)
    with pytest.raises(DataError) as caught:
        load(path, task="ranking")
    assert str(caught.value) == f"{path}: data.options.task must be one of classification, regression. Got 'ranking' " \
                                "instead."


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"

    class Gadget:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "hostile.npz"
    np.savez(path, X_train=X4, y_train=np.array([Gadget()] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == (f"{path}: y_train is an object array, which loads through pickle and can run code; "
                                 "save numeric arrays (or text labels) instead.")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found; data.path names an .npz file written by numpy.savez."),
        ("folder", "a folder, not a file; data.path names an .npz file written by numpy.savez."),
        (b"X_train,y_train\n1,2\n", "not an .npz archive; write one with numpy.savez(path, X_train=..., y_train=...)."),
        (b"PK\x03\x04 truncated", "not an .npz archive; write one with numpy.savez(path, X_train=..., y_train=...)."),
        ("npy", "a single .npy array; dataset arrays reads an .npz archive of named arrays, written by "
                "numpy.savez(path, X_train=..., y_train=...)."),
        ("fifo", "a FIFO (named pipe), not a regular file; data.path names an .npz file written by numpy.savez."),
        ("/dev/zero", "a character device, not a regular file; data.path names an .npz file written by numpy.savez."),
    ],
)
def test_files_that_are_not_npz_archives_are_one_line(tmp_path, content, message):
    path = tmp_path / "data.npz"
    if content == "folder":
        path.mkdir()
    elif content == "fifo":  # refused, not waited on
        os.mkfifo(path)
    elif content == "/dev/zero":
        path.symlink_to(content)
    elif content == "npy":
        with path.open("wb") as f:
            np.save(f, X4)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_corrupt_member_is_one_line(tmp_path):
    path = save(tmp_path, X_train=grid(100), y_train=np.arange(100) % 2)
    raw = bytearray(path.read_bytes())
    start = raw.index(b"\x93NUMPY")  # the first member's .npy header
    raw[start + 20:start + 30] = b"@" * 10
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: X_train is truncated or corrupt (Bad CRC-32 for file 'X_train.npy')."


def test_a_member_with_a_bad_header_is_one_line(tmp_path):
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X_train.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n")
        archive.writestr("y_train.npy", b"")
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: X_train is not a readable array (")
    assert "\n" not in str(caught.value)


def test_arrays_declaring_more_than_a_data_file_may_hold_are_refused_before_they_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "machine_memory", lambda: 4 * 2**20)  # a data file may hold 1 MiB
    read = []
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda archive, key: read.append(key))
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, X_train=np.zeros((2**17, 2)), y_train=np.zeros(2**17))  # 3 MiB in a few KiB
    assert path.stat().st_size < 2**15
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == (f"{path}: the arrays of a data file, decompressed, must be at most 1 MiB (a quarter "
                                 "of this machine's memory). Got 2 MiB instead.")
    assert read == []


def test_arrays_whose_headers_declare_a_wrong_layout_are_refused_before_they_are_read(tmp_path, monkeypatch):
    read = []
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda archive, key: read.append(key))
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, X_train=np.zeros((2**16, 8)), y_train=np.zeros(2**16 - 1))  # 4 MiB, a target short
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: y_train has 65535 rows, X_train has 65536."
    assert read == []


def test_a_header_declaring_more_than_its_member_holds_is_one_line_and_allocates_nothing(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2**40, 3)})
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X_train.npy", header.getvalue() + bytes(48))  # 24 TiB declared, two rows stored
        archive.writestr("y_train.npy", b"")
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == (f"{path}: X_train is truncated or corrupt (its header declares (1099511627776, 3) "
                                 "float64 values, more than the 176 bytes stored for it).")


def test_data_that_do_not_fit_in_memory_are_one_line(tmp_path, monkeypatch):
    path = save(tmp_path, X_train=grid(100), y_train=np.arange(100) % 2)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 9.31 GiB for an array with shape (50000, 50000) and data type float32")

    monkeypatch.setattr("hpsearch.data.arrays.split_and_preprocess", out_of_memory)  # the float copy of a large X
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == (f"{path}: the data do not fit in this machine's memory; ask for fewer rows "
                                 "(data.num_train, data.num_val, data.num_test) or give a smaller file.")


def test_path_is_required(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset("arrays")
    assert str(caught.value) == "arrays: data.path is required (an .npz file written by numpy.savez)."

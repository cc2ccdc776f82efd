"""``dataset: csv``: a table with a header row, one column the target, the others numeric features."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hpsearch import files
from hpsearch.data import load_dataset
from hpsearch.errors import DataError


def write(tmp_path: Path, text: str | bytes, name: str = "table.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, target: str = "label", **kwargs):
    """The table as written: float64, no preprocessing."""
    return load_dataset("csv", path=path, target=target, dtype="float64", preprocess="none", **kwargs)


ROWS = [(i, 10 * i, ["cat", "dog", "emu"][i % 3]) for i in range(10)]  # (a, b, label)
TABLE = "a, b ,label\n" + "".join(f"{a},{b},{label}\n" for a, b, label in ROWS)


def test_text_labels_are_classes_and_the_rows_are_shuffled_and_split(tmp_path):
    data = load(write(tmp_path, TABLE), seed=4, num_test=2)
    order = np.random.default_rng(4).permutation(10)
    features = np.array([(a, b) for a, b, _ in ROWS], dtype=np.float64)
    labels = np.array([i % 3 for i in range(10)])  # cat, dog, emu sorted: 0, 1, 2
    np.testing.assert_array_equal(data.X_test, features[order[8:]])
    np.testing.assert_array_equal(data.X_val, features[order[7:8]])  # a fifth of the 8 rows left: 1
    np.testing.assert_array_equal(data.X_train, features[order[:7]])
    np.testing.assert_array_equal(data.y_train, labels[order[:7]])
    assert (data.name, data.task, data.num_classes, data.sample_shape) == ("table.csv", "classification", 3, (2,))


def test_the_target_column_may_stand_anywhere_and_number_targets_follow_the_arrays_rule(tmp_path):
    whole = load(write(tmp_path, "price,x\n3,1\n5,2\n3,3\n5,4\n5,5\n"), target="price", num_val=1)
    assert (whole.task, whole.num_classes) == ("classification", 2)
    fractions = load(write(tmp_path, "price,x\n3.5,1\n5,2\n3,3\n5,4\n5.25,5\n"), target="price", num_val=1)
    assert (fractions.task, fractions.num_classes, fractions.y_train.dtype) == ("regression", 0, np.float64)
    order = np.random.default_rng(0).permutation(5)
    np.testing.assert_array_equal(fractions.y_train, np.array([3.5, 5, 3, 5, 5.25])[order[:4]])
    np.testing.assert_array_equal(fractions.X_train[:, 0], np.array([1.0, 2, 3, 4, 5])[order[:4]])
    forced = load(write(tmp_path, "price,x\n3,1\n5,2\n3,3\n5,4\n5,5\n"), target="price", task="regression")
    assert forced.task == "regression"


def test_blank_lines_spaces_and_a_byte_order_mark_are_tolerated(tmp_path):
    path = write(tmp_path, "\ufeffx , label\n1, a\n\n2 ,b\r\n3,a\n\n")
    data = load(path, num_val=1)
    assert len(data.y_train) + len(data.y_val) == 3 and data.num_classes == 2


@pytest.mark.parametrize(
    "text, target, message",
    [
        ("a,b,label\n1,2,x\n3,four,y\n", "label", "column 'b' must hold numbers; line 3 holds 'four'."),
        ("a,b,label\n1,2,x\n3,,y\n", "label", "column 'b' must hold numbers; line 3 holds ''."),
        ("a,b,label\n1,nan,x\n3,4,y\n", "label", "column 'b' holds 'nan' on line 2; every value must be finite."),
        ("a,b,label\n1,2,3\n3,4,inf\n", "label", "column 'label' holds 'inf' on line 3; every value must be finite."),
        ("a,b,label\n1,2,x\n3,4,\n", "label", "column 'label' is empty on line 3."),
        (",".join(f"c{i}" for i in range(12)) + "\n" + ",".join("1" * 12) + "\n", "label",
         "no column 'label' (data.target); the columns are c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, ...."),
        ("1,2,3\n4,5,6\n", "label", "the first line must name the columns. Got numbers (1, 2, 3) instead."),
        ("a,a,label\n1,2,x\n", "label", "column 'a' appears twice in the header."),
        ("a,,label\n1,2,x\n", "label", "column 2 of the header has no name."),
        ("a,b,label\n1,2,x\n3,4\n", "label", "line 3 has 2 fields, the header has 3."),
        ("a,b,label\n1,2,x\n\n3,4,y,5\n", "label", "line 4 has 4 fields, the header has 3."),
        ("", "label", "empty; its first line must name the columns."),
        ("a,b,label\n", "label", "a header and no rows."),
        ("label\nx\ny\n", "label", "no feature columns besides the target 'label'."),
        ('a,b,label\n1,2,"x\n', "label", "not a readable CSV table (line 2: unexpected end of data)."),
        (b"a,label\n1,\xff\n", "label", "not UTF-8 text (invalid start byte); save the table as UTF-8."),
    ],
)
def test_bad_tables_are_one_line_naming_the_column_and_line(tmp_path, text, target, message):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as caught:
        load(path, target=target)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "colour"}, "no column 'colour' (data.target); the columns are a, b, label."),
        ({"task": "regression"}, "data.options.task is regression, but column 'label' holds text labels ('cat')."),
        ({"num_test": 5, "num_val": 5},
         "the table has 10 rows; taking data.num_test 5 + data.num_val 5 from them leaves no rows to train on."),
    ],
)
def test_what_a_good_table_cannot_give_is_one_line(tmp_path, kwargs, message):
    path = write(tmp_path, TABLE)
    with pytest.raises(DataError) as caught:
        load(path, **kwargs)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: None, "file not found; data.path names a .csv file whose first line names the columns."),
        (Path.mkdir, "a folder, not a file; data.path names a .csv file whose first line names the columns."),
        (os.mkfifo, "a FIFO (named pipe), not a regular file; data.path names a .csv file whose first line names "
                    "the columns."),
        (lambda path: path.symlink_to("/dev/zero"), "a character device, not a regular file; data.path names a .csv "
                                                    "file whose first line names the columns."),
    ],
)
def test_a_missing_table_or_one_that_is_no_file_is_one_line(tmp_path, make, message):
    path = tmp_path / "table.csv"
    make(path)
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_table_larger_than_its_bound_is_one_line_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "machine_memory", lambda: 128 * 2**20)  # data files 32 MiB, so tables 1 MiB
    path = write(tmp_path, "a,label\n" + "1,2\n" * 400_000)  # 1.5 MiB
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value) == (f"{path}: a csv table must be at most 1 MiB (its fields are held as text while it is "
                                 "read; save larger data as an .npz). Got 1.5 MiB instead.")


def test_path_and_target_are_required(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset("csv", target="label")
    assert str(caught.value) == "csv: data.path is required (a .csv file whose first line names the columns)."
    with pytest.raises(DataError) as caught:
        load_dataset("csv", path=write(tmp_path, TABLE))
    assert str(caught.value) == "csv: data.target is required (the name of the column to predict)."

"""``dataset: "package.module:function"``: a loader of the user's, imported from the spec's folder."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from hpsearch.data import Dataset, load_dataset
from hpsearch.errors import DataError, SpecError

LOADERS = '''
import numpy as np
from hpsearch.data import Dataset

CALLS = []


def arrays(*, seed, rows=10, **options):
    CALLS.append({"seed": seed, "rows": rows, **options})
    X = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)
    return {"X": X, "y": np.arange(rows) % 2}


def images(*, seed):
    return {"X_train": np.zeros((6, 1, 2, 2)), "y_train": [0.5, 1.5, 2.5, 0.5, 1.5, 2.5],
            "X_val": np.ones((2, 1, 2, 2)), "y_val": [1.25, 0.0]}


def reads(*, seed, path):
    return dict(np.load(path, allow_pickle=False))


def finished(*, seed, kind="classification", num_classes=3, y_val=(0, 2)):
    X = np.arange(12, dtype=np.int64).reshape(6, 2)
    return Dataset("mine", X[:4], np.array([0, 1, 2, 1]), X[4:], np.array(y_val), None, None,
                   num_classes=num_classes, fingerprint="set by me", task=kind, sample_shape=(2, 1))


def mismatched(*, seed):
    return {"X_train": np.zeros((4, 3)), "y_train": [0, 1, 0, 1], "X_val": np.zeros((2, 2)), "y_val": [0, 1]}


def raises(*, seed):
    raise KeyError("no such table")


def returns_a_list(*, seed):
    return [1, 2, 3]


NOT_A_FUNCTION = 42
'''


@pytest.fixture
def loaders(tmp_path):
    """A module of loaders in the spec's folder (``tmp_path``) under a fresh name; forgotten afterwards."""
    name = f"userdata_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(LOADERS))
    saved_path = list(sys.path)
    yield name
    sys.modules.pop(name, None)
    sys.path[:] = saved_path


def load(reference: str, base_dir: Path, **kwargs) -> Dataset:
    return load_dataset(reference, base_dir=base_dir, dtype="float64", preprocess="none", **kwargs)


def test_returned_arrays_go_through_the_arrays_pipeline(loaders, tmp_path):
    data = load(f"{loaders}:arrays", tmp_path, seed=5, num_val=3, rows=12, colour="red")
    order = np.random.default_rng(5).permutation(12)
    X = np.arange(24, dtype=np.float64).reshape(12, 2)
    np.testing.assert_array_equal(data.X_train, X[order[:9]])
    np.testing.assert_array_equal(data.X_val, X[order[9:]])
    assert (data.name, data.task, data.num_classes) == (f"{loaders}:arrays", "classification", 2)
    assert sys.modules[loaders].CALLS == [{"seed": 5, "rows": 12, "colour": "red"}]


def test_the_task_option_is_hpsearchs_and_not_passed_on(loaders, tmp_path):
    data = load(f"{loaders}:arrays", tmp_path, task="regression")
    assert (data.task, data.num_classes) == ("regression", 0)
    assert sys.modules[loaders].CALLS == [{"seed": 0, "rows": 10}]


def test_images_and_regression_targets_from_a_loader(loaders, tmp_path):
    data = load(f"{loaders}:images", tmp_path)
    assert (data.task, data.sample_shape, data.X_train.shape) == ("regression", (1, 2, 2), (6, 4))
    np.testing.assert_array_equal(data.y_val, [1.25, 0.0])


def test_data_path_reaches_the_loader(loaders, tmp_path):
    npz = tmp_path / "raw.npz"
    np.savez(npz, X=np.arange(20.0).reshape(10, 2), y=np.arange(10) % 2)
    data = load(f"{loaders}:reads", tmp_path, path=npz)
    assert len(data.y_train) + len(data.y_val) == 10


def test_a_finished_dataset_is_checked_cast_and_fingerprinted_here(loaders, tmp_path):
    data = load(f"{loaders}:finished", tmp_path)
    assert data.X_train.dtype == np.float64 and data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.X_val, [[8.0, 9.0], [10.0, 11.0]])
    assert (data.name, data.num_classes, data.sample_shape) == ("mine", 3, (2, 1))
    assert data.fingerprint != "set by me" and data.fingerprint == load(f"{loaders}:finished", tmp_path).fingerprint


@pytest.mark.parametrize(
    "function, kwargs, message",
    [
        ("mismatched", {}, ": X_val has 2 columns, X_train has 3."),
        ("raises", {}, " raised KeyError: 'no such table'"),
        ("returns_a_list", {}, " returned a list; a loader returns a Dataset, or a mapping of arrays (X_train, "
                               "y_train, ... or X, y)."),
        ("NOT_A_FUNCTION", {}, " names 42, not a function."),
        ("finished", {"num_val": 2}, " returned a finished Dataset, so data.num_val does not apply: leave it out, or "
                                     "return arrays for hpsearch to split."),
        ("finished", {"y_val": (0, 3)}, ": y_val holds labels 0..3; with num_classes 3 they must lie in 0..2."),
        ("finished", {"kind": "ranking"}, ": a Dataset's task must be one of classification, regression. Got "
                                          "'ranking' instead."),
        ("finished", {"y_val": (0.5, 1.0)}, ": a classification Dataset's y_val must hold integer labels. Got dtype "
                                            "float64 instead."),
    ],
)
def test_what_a_loader_gets_wrong_is_one_line_naming_it(loaders, tmp_path, function, kwargs, message):
    reference = f"{loaders}:{function}"
    with pytest.raises(DataError) as caught:
        load(reference, tmp_path, **kwargs)
    assert str(caught.value) == f"data.dataset {reference!r}{message}"


def test_a_loader_exception_keeps_its_traceback_for_python_callers(loaders, tmp_path):
    with pytest.raises(DataError) as caught:
        load(f"{loaders}:raises", tmp_path)
    assert isinstance(caught.value.__cause__, KeyError)


def test_a_module_outside_the_spec_folder_needs_allow_import(loaders, tmp_path, monkeypatch):
    elsewhere = tmp_path / "spec-folder"
    elsewhere.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # importable, but from a folder the user put on the path
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SpecError) as caught:
        load(f"{loaders}:arrays", elsewhere)
    assert str(caught.value).startswith(f"data.dataset '{loaders}:arrays': module '{loaders}' is at "
                                        f"{tmp_path / loaders}.py, outside the installed packages")
    assert loaders not in sys.modules  # refused before it ran
    assert load(f"{loaders}:arrays", elsewhere, allow_import=True).num_classes == 2


def test_an_unknown_module_is_one_line(tmp_path):
    with pytest.raises(SpecError) as caught:
        load("no_such_module_here:load", tmp_path)
    assert str(caught.value) == (f"data.dataset 'no_such_module_here:load': no module 'no_such_module_here' in the "
                                 f"spec's folder {tmp_path} or the installed packages.")

"""A halving ladder's run kept between levels: taken up only as it was saved, and saved over whatever is there."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpsearch.engine.pausedruns import PausedRun

EPOCHS = [(0, {"val_acc": 0.25, "loss": 1.5}), (1, {"val_acc": 0.5, "loss": float("nan")})]


@dataclass
class Run:
    """A trainable's run as a paused run sees it: its budget, and a save that writes its state to one file."""

    budget: int
    state: bytes

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.state)


def paused(folder: Path) -> PausedRun:
    return PausedRun({"learning_rate": 0.1}, folder / "ladder-0", top=False)


def same(saved, expected) -> bool:
    """Reports equal, a NaN equal to a NaN."""
    return json.dumps(saved) == json.dumps(expected)


def test_nothing_saved_is_none(tmp_path):
    assert paused(tmp_path).reports() is None


def _folder(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "inside").write_text("x")


@pytest.mark.parametrize("make", [_folder, os.mkfifo, lambda path: path.write_text("old")],
                         ids=["folder", "fifo", "file"])
@pytest.mark.parametrize("where", ["run", "reports"])
def test_a_run_is_saved_over_whatever_stands_at_its_paths(tmp_path, make, where):
    run = paused(tmp_path)
    make(run.path if where == "run" else run.reports_path)
    run.save(Run(12, b"state at 12"), EPOCHS)
    assert run.path.read_bytes() == b"state at 12"
    assert same(run.reports(), (12, EPOCHS))
    run.forget()
    assert not run.path.exists() and not run.reports_path.exists()


@pytest.mark.parametrize("where", ["run", "reports"])
@pytest.mark.parametrize("make, reason", [
    (_folder, "a folder, not a file"), (os.mkfifo, "a FIFO (named pipe), not a regular file"),
    (lambda path: None, "No such file or directory"),
], ids=["folder", "fifo", "missing"])
def test_a_file_that_is_not_the_one_saved_is_refused_at_once(tmp_path, where, make, reason):
    run = paused(tmp_path)
    run.save(Run(12, b"state at 12"), EPOCHS)
    replaced = run.path if where == "run" else run.reports_path
    replaced.unlink()
    make(replaced)
    with pytest.raises(ValueError) as caught:
        run.reports()
    assert str(caught.value) == f"{'the run' if where == 'run' else 'its reports'}: {reason}"
    run.forget()
    assert run.reports() is None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=st.binary(min_size=1, max_size=64), where=st.sampled_from(["run", "reports"]), data=st.data())
def test_a_changed_byte_is_refused_or_changes_nothing(tmp_path, state, where, data):
    """Any one byte of either file changed: the run is refused, or (a space in the reports) the same run is read."""
    run = paused(tmp_path)
    run.save(Run(12, state), EPOCHS)
    changed = run.path if where == "run" else run.reports_path
    content = bytearray(changed.read_bytes())
    at = data.draw(st.integers(0, len(content) - 1), label="at")
    content[at] ^= data.draw(st.integers(1, 255), label="xor")
    changed.write_bytes(bytes(content))
    try:
        saved = run.reports()
    except ValueError:
        return
    assert where == "reports" and same(saved, (12, EPOCHS))

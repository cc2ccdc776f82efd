"""The watching process's view of a study's progress (``hpsearch.cli.progress``), in-process on a real SQLite
storage: what it says before the workers start, a line only when a phase's counts change, only the phase a run
works on, and never a failure of its own. A driver's runs stand in for the workers. The terminal tests run
``hpsearch run`` in a subprocess on a pseudo-terminal: a terminal is a property of the process's stderr."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from hpsearch.cli.progress import StudyProgress, progress_line
from hpsearch.engine.budget import Budget
from hpsearch.engine.driver import Driver
from hpsearch.spec.build import load_spec
from tests.conftest import TINY_STUDY, gated_study, write_spec

GRID = {"name": "grid", "sampler": "grid", "grid": {"learning_rate": [0.02, 0.04, 0.06, 0.08]}}
TPE = {"name": "tpe", "sampler": "tpe", "n_trials": 3, "space": TINY_STUDY["phases"][0]["space"]}


def _status(**changes) -> dict:
    return {"phase": "grid", "state": "running", "done": 26, "total": 54, "complete": 20, "pruned": 3, "failed": 1,
            "running": 2, "best_value": 0.97331, **changes}


@pytest.fixture
def study(tmp_path):
    """(spec, storage URL) of a study with a grid and a TPE phase; run(max_trials) stands for the workers."""
    spec = load_spec(write_spec(tmp_path, phases=[GRID, TPE]))
    url = f"sqlite:///{tmp_path / 'study.db'}"

    def run(max_trials: int | None = None) -> None:
        with Driver(spec, url, echo=lambda line: None) as worker:
            worker.run(Budget(max_trials=max_trials))

    return spec, url, run


def test_a_progress_line_says_every_count_that_is_not_zero_the_best_and_the_eta(study):
    grid, tpe = study[0].phases
    assert progress_line(grid, _status(), 12.0) == \
        "[grid] 26/54: 20 complete, 3 pruned, 1 failed, 2 running, best 0.9733, ETA 12 s"
    assert progress_line(grid, _status(pruned=0, failed=0, best_value=None, total=None), None) == \
        "[grid] 26/?: 20 complete, 2 running"  # a derived grid not derived yet
    assert progress_line(tpe, _status(phase="tpe", total=None, done=2), None).startswith("[tpe] 2/3: ")
    assert progress_line(grid, _status(state="complete", running=0), 3.0).endswith("0 running, best 0.9733")


def test_the_view_says_where_a_resumed_study_stands_then_only_what_changes(study):
    spec, url, run = study
    run(max_trials=1)
    said: list[str] = []
    progress = StudyProgress(spec, url, said.append)
    try:
        progress.start()
        assert said == ["[grid] resuming: 1 of 4 done"]
        progress.update()
        assert said == ["[grid] resuming: 1 of 4 done"]  # nothing changed: nothing said
        run(max_trials=5)  # the grid's last 3 points and 2 of the TPE phase's 3 trials
        progress.update()
        assert said[1].startswith("[grid] 4/4: 4 complete, 0 running, best ")
        assert said[2].startswith("[tpe] 2/3: 2 complete, 0 running, best ") and len(said) == 3
    finally:
        progress.close()


def test_a_run_of_one_phase_shows_that_phase_only(study):
    spec, url, run = study
    run(max_trials=1)
    said: list[str] = []
    progress = StudyProgress(spec, url, said.append, only_phase="tpe")
    progress.start()
    run()
    progress.update()
    progress.close()
    assert [line.split()[0] for line in said] == ["[tpe]"]


def test_a_storage_not_made_yet_or_a_closed_output_shows_nothing_and_raises_nothing(study, tmp_path):
    spec, url, run = study
    said: list[str] = []
    missing = StudyProgress(spec, f"sqlite:///{tmp_path / 'missing' / 'study.db'}", said.append)
    missing.start()
    missing.update()
    missing.close()
    assert said == [] and not (tmp_path / "missing").exists()  # the watcher made nothing

    def closed(line: str) -> None:
        said.append(line)
        raise BrokenPipeError("the reader is gone")

    run(max_trials=1)
    progress = StudyProgress(spec, url, closed)
    progress.start()  # says it once, finds the output closed, and says nothing more
    run()
    progress.update()
    progress.close()
    assert said == ["[grid] resuming: 1 of 4 done"]


def test_watching_reads_in_a_thread_of_its_own_until_the_block_ends(study, monkeypatch):
    """The thread's cadence is a clock's; what is checked is only that it runs, stops, and leaves no thread behind."""
    import threading

    spec, url, run = study
    progress = StudyProgress(spec, url, lambda line: None)
    seen = threading.Event()
    monkeypatch.setattr("hpsearch.cli.progress.PROGRESS_SECONDS", 0.01)
    monkeypatch.setattr(progress, "update", seen.set)
    with progress.watching():
        assert seen.wait(60)  # an event, not a sleep: the thread called update
    progress.close()
    assert not [t for t in threading.enumerate() if t.name == "hpsearch-progress"]


SHOWN_WITHIN = 300  # seconds: a failing test's guard, far beyond what a busy machine takes
BAR = r" +[━╺╸]+ +"  # a bar between a phase's name and its counts


class Terminal:
    """``hpsearch run`` in a subprocess whose stderr is a pseudo-terminal (stdout a pipe): whether output is a terminal
    is a property of the process. ``lines`` are what the terminal showed, escape sequences taken out."""

    def __init__(self, folder, spec, storage: str) -> None:
        import os
        import pty

        self.leader, follower = pty.openpty()
        self.shown = bytearray()
        self.proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "run", str(spec), "--storage", storage],
                                     cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower,
                                     env={**os.environ, "COLUMNS": "150"})
        os.close(follower)

    def read_until(self, pattern: str | None = None) -> bool:
        """Read what the process shows until a line matches ``pattern`` (True) or it closes the terminal (False).
        Fails after :data:`SHOWN_WITHIN` seconds: a pattern the view never shows must not leave the test waiting."""
        import os
        import select
        import time

        deadline = time.monotonic() + SHOWN_WITHIN
        while pattern is None or not any(re.match(pattern, line) for line in self.lines()):
            assert time.monotonic() < deadline, f"never shown: {pattern!r} in {self.lines()[-20:]}"
            if not select.select([self.leader], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(self.leader, 65536)
            except OSError:  # EIO: the process ended, and the terminal with it
                return False
            if not chunk:
                return False
            self.shown += chunk
        return True

    def lines(self) -> list[str]:
        return re.split(r"[\r\n]+", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.shown.decode(errors="replace")))

    def end(self) -> tuple[int, str]:
        self.read_until()
        return self.proc.wait(), self.proc.stdout.read().decode()

    def close(self) -> None:
        import os

        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        os.close(self.leader)


@pytest.fixture
def terminal(tmp_path):
    """``terminal(spec)``: a :class:`Terminal` run of ``spec`` on ``tmp_path / "study.db"`` (or ``storage``), killed
    at the test's end if it still runs."""
    made: list[Terminal] = []

    def start(spec, storage: str | None = None) -> Terminal:
        made.append(Terminal(tmp_path, spec, storage or f"sqlite:///{tmp_path / 'study.db'}"))
        return made[-1]

    yield start
    for shown in made:
        shown.close()


def test_a_single_run_on_a_terminal_shows_a_bar_per_phase_below_its_trial_lines(tmp_path, terminal):
    """Its trial lines scroll above one bar per phase, and the bars end at the counts of the summary; run again,
    the complete study shows its finished phases' bars too."""
    spec = write_spec(tmp_path, "barred")
    shown = terminal(spec)
    code, summary = shown.end()
    lines = shown.lines()
    assert code == 0, lines
    assert any(line.startswith("[random] 1/6 trial ") for line in lines)  # the run's own trial lines
    assert any(re.match(rf"\[random\]{BAR}6/6 +6 complete", line) for line in lines), lines
    assert any(re.match(rf"\[grid\]{BAR}4/4 +4 complete", line) for line in lines), lines
    assert re.search(r"grid +complete +4/4", summary)

    again = terminal(spec)
    assert again.end()[0] == 0
    lines = again.lines()
    assert any("already complete" in line for line in lines), lines
    assert any(re.match(rf"\[random\]{BAR}6/6 +6 complete", line) for line in lines), lines
    assert any(re.match(rf"\[grid\]{BAR}4/4 +4 complete", line) for line in lines), lines


def test_a_run_refused_on_a_terminal_leaves_the_storage_as_it_found_it(tmp_path, terminal):
    """The view reads nothing before the run has begun to write the study: a run refused for naming another
    program's SQLite database (one line, exit 2) leaves it without a table of Optuna's or hpsearch's."""
    import sqlite3

    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE experiments (id INTEGER)")
    shown = terminal(write_spec(tmp_path, "barred"), f"sqlite:///{foreign}")
    code, summary = shown.end()
    errors = [line for line in shown.lines() if line.strip()]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error:"), errors
    with sqlite3.connect(foreign) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"experiments"}


def test_ctrl_c_on_a_terminal_ends_the_bars_and_then_says_what_it_stopped(tmp_path, gate, terminal):
    """Ctrl-C while the bar shows a trial waiting (at the gate of a gated study): exit 130, the bars end, and the
    one line that says what was interrupted comes after them, not inside."""
    shown = terminal(gated_study(tmp_path, "barred", points=4, free=2))
    gate.watch(shown.proc)
    assert shown.read_until(rf"\[grid\]{BAR}2/4 +2 complete, 1 running"), shown.lines()
    shown.proc.send_signal(signal.SIGINT)
    code, summary = shown.end()
    lines = [line for line in shown.lines() if line.strip()]
    assert code == 130 and summary == "", lines
    assert lines[-1].startswith("Interrupted") and "trial 2" in lines[-1], lines
    assert not any("Traceback" in line for line in lines)

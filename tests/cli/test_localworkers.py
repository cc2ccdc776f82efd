"""`run --workers N` on one machine: the bound on N, and a signal that comes while the workers start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from hpsearch.cli import localworkers
from hpsearch.cli.app import app
from tests.conftest import TINY_STUDY

runner = CliRunner()

# a worker that counts itself in the file named by its argument; the third sends SIGTERM to the process that started
# it; each says "started" on its stdout, then waits for the signal that ends it
# as a worker does once its handlers are in place, it takes the signals the parent blocked for its start
FAKE_WORKER = """
import os, signal, sys
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
counter = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(counter, b".")
if os.lseek(counter, 0, os.SEEK_CUR) == 3:
    os.kill(os.getppid(), signal.SIGTERM)
print("started", flush=True)
signal.pause()
"""


def test_a_signal_while_workers_start_starts_no_more_and_reaches_every_one_started(tmp_path, monkeypatch):
    """The workers are processes: the signal comes from one of them, as from anyone while the parent starts them."""
    counter = tmp_path / "started"
    started: list[subprocess.Popen] = []
    popen = subprocess.Popen

    def start_and_wait_until_it_runs(command, **kwargs):  # so the third has sent its signal before a fourth starts
        process = popen(command, **{**kwargs, "stdout": subprocess.PIPE})
        started.append(process)
        assert process.stdout.readline() == b"started\n"
        return process

    monkeypatch.setattr(localworkers.subprocess, "Popen", start_and_wait_until_it_runs)
    try:
        codes, interrupted, stopped = localworkers.run_workers([sys.executable, "-c", FAKE_WORKER, str(counter)],
                                                                dict(os.environ), 10)
    finally:  # whatever failed: no fake worker is left waiting
        for process in started:
            process.kill()
            process.wait()
            process.stdout.close()
    assert interrupted and stopped == []  # the fake workers stopped no trial
    assert counter.read_bytes() == b"..."  # the starting stopped at the signal
    assert codes == [-signal.SIGTERM] * 3  # each worker started got it, the one that sent it too


@pytest.fixture
def two_cores(tmp_path, monkeypatch):
    """A spec in an empty working folder, on a machine of 2 cores whose workers are counted, not started."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(localworkers, "usable_cores", lambda: 2, raising=False)
    asked: list[int] = []

    def run_workers(command, env, workers):
        asked.append(workers)
        return [0] * workers, False, []

    monkeypatch.setattr(localworkers, "run_workers", run_workers)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_STUDY))
    return spec, asked


@pytest.mark.parametrize("args, message", [
    (["--workers", "9"], "error: --workers must be at most 8 (4 for each of the 2 cores this process may use); "
                         "--allow-many-workers lifts the bound to 1024. Got 9 instead."),
    (["--workers", "1000000"], "error: --workers must be at most 8 (4 for each of the 2 cores this process may use); "
                               "--allow-many-workers lifts the bound to 1024. Got 1000000 instead."),
    (["--workers", "1025", "--allow-many-workers"],
     "error: --workers must be at most 1024, even with --allow-many-workers. Got 1025 instead."),
])
def test_more_workers_than_the_machine_takes_are_one_line_and_start_nothing(two_cores, tmp_path, args, message):
    spec, asked = two_cores
    result = runner.invoke(app, ["run", str(spec), *args])
    assert result.exit_code == 2 and result.stderr.splitlines() == [message], result.output
    assert asked == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, workers", [(["--workers", "8"], 8),
                                           (["--workers", "1024", "--allow-many-workers"], 1024)])
def test_workers_up_to_the_bound_start(two_cores, args, workers):
    spec, asked = two_cores
    result = runner.invoke(app, ["run", str(spec), *args])
    assert asked == [workers]
    # the counted workers trained nothing: the status that follows finds no study, and says so in one line
    assert result.exit_code == 2 and "no study stored" in result.stderr, result.output

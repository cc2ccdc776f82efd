"""`run --workers N` on one machine: the bound on N, and a signal that comes while the workers start."""

from __future__ import annotations

import os
import signal
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
# as a worker does once its handlers are in place, it takes the signals it started with blocked
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
    started: list[localworkers.Worker] = []
    spawn = localworkers.spawn

    def spawn_and_wait_until_it_runs(command, env):  # so the third has sent its signal before a fourth starts
        read_end, write_end = os.pipe()
        try:
            process = spawn(command, env, stdout=write_end)
        finally:
            os.close(write_end)
        started.append(process)
        with os.fdopen(read_end, "rb") as out:
            assert out.readline() == b"started\n"
        return process

    monkeypatch.setattr(localworkers, "spawn", spawn_and_wait_until_it_runs)
    try:
        codes, interrupted, stopped = localworkers.run_workers([sys.executable, "-c", FAKE_WORKER, str(counter)],
                                                                dict(os.environ), 10)
    finally:  # whatever failed: no fake worker is left waiting
        for process in started:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert interrupted and stopped == []  # the fake workers stopped no trial
    assert counter.read_bytes() == b"..."  # the starting stopped at the signal
    assert codes == [-signal.SIGTERM] * 3  # each worker started got it, the one that sent it too


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the kernel's view of a process")
def test_a_worker_starts_with_the_signals_blocked_and_the_dispositions_python_changes_restored(tmp_path):
    """What a new worker process starts with, as the kernel reports it (a subprocess: a process's own mask)."""
    read_end, write_end = os.pipe()
    stopped_read, stopped_write = os.pipe()
    try:
        process = localworkers.spawn(["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"],  # keeps what it got
                                     {**os.environ, localworkers.STOPPED_FD: str(stopped_write)}, stdout=write_end)
    finally:
        for fd in (write_end, stopped_read, stopped_write):
            os.close(fd)
    with os.fdopen(read_end) as out:
        masks = {name: int(value, 16) for name, value in (line.split(":") for line in out.read().splitlines())}
    assert process.wait() == 0

    def has(mask: int, sig: signal.Signals) -> bool:
        return bool(mask >> (sig - 1) & 1)

    assert has(masks["SigBlk"], signal.SIGINT) and has(masks["SigBlk"], signal.SIGTERM)
    assert not has(masks["SigIgn"], signal.SIGPIPE) and not has(masks["SigIgn"], signal.SIGXFSZ)  # Python's ignore


class Asked(list):
    """The worker counts asked for, and the run_workers that counted them."""


@pytest.fixture
def two_cores(tmp_path, monkeypatch):
    """A spec in an empty working folder, on a machine of 2 cores whose workers are counted, not started."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(localworkers, "usable_cores", lambda: 2, raising=False)
    asked = Asked()

    def run_workers(command, env, workers, shares=None):
        asked.append(workers)
        run_workers.shares = shares
        return [0] * workers, False, []

    monkeypatch.setattr(localworkers, "run_workers", run_workers)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_STUDY))
    asked.run_workers = run_workers  # what each worker was given: run_workers.shares
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


def shares_of(asked) -> list[tuple[str | None, str]]:
    return [(share.get("CUDA_VISIBLE_DEVICES"), share["OMP_NUM_THREADS"]) for share in asked.run_workers.shares]


@pytest.mark.parametrize("args, resources, shares", [
    (["--workers", "2"], None, [(None, "1"), (None, "1")]),  # the 2 cores split
    (["--workers", "2", "--gpus", "0,1"], None, [("0", "1"), ("1", "1")]),
    (["--workers", "2", "--gpus", "3,2,1,0"], {"gpus_per_worker": 2}, [("3,2", "1"), ("1,0", "1")]),
    (["--workers", "2", "--threads", "1"], {"threads_per_worker": 2}, [(None, "1"), (None, "1")]),  # the option wins
    (["--gpus", "5"], None, [("5", "2")]),  # one worker of its own: the GPU and both cores
])
def test_each_worker_is_given_its_gpus_and_threads(two_cores, args, resources, shares):
    spec, asked = two_cores
    if resources:
        spec.write_text(yaml.safe_dump({**TINY_STUDY, "resources": resources}))
    runner.invoke(app, ["run", str(spec), *args])
    assert shares_of(asked) == shares
    given = asked.run_workers.shares[0]
    assert given["OPENBLAS_NUM_THREADS"] == given["MKL_NUM_THREADS"] == given["OMP_NUM_THREADS"]


def test_more_threads_than_cores_are_given_with_a_warning_only_when_asked_for(two_cores):
    spec, asked = two_cores
    result = runner.invoke(app, ["run", str(spec), "--workers", "2", "--threads", "3"])
    assert shares_of(asked) == [(None, "3"), (None, "3")]
    assert ("warning: 2 workers of 3 threads each ask for 6 threads on 2 cores; they will compete for them."
            in result.stderr.splitlines())
    result = runner.invoke(app, ["run", str(spec), "--workers", "3"])  # the default: one thread each, no warning
    assert shares_of(asked) == [(None, "1")] * 3 and "warning" not in result.stderr


def test_a_cgroup_s_cpu_quota_bounds_the_usable_cores(tmp_path):
    quota = tmp_path / "cpu.max"
    for text, cores in (("200000 100000\n", 2), ("150000 100000", 2), ("max 100000", None), ("junk", None)):
        quota.write_text(text)
        assert localworkers.cgroup_cpu_quota(str(quota)) == cores
    assert localworkers.cgroup_cpu_quota(str(tmp_path / "none")) is None


def test_gpus_outside_this_process_s_own_are_refused(two_cores, tmp_path, monkeypatch):
    spec, asked = two_cores
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # what a scheduler gave this job
    result = runner.invoke(app, ["run", str(spec), "--workers", "2", "--gpus", "0,1"])
    assert result.exit_code == 2 and asked == [], result.output
    assert result.stderr.splitlines() == ["error: --gpus names GPU 0, which this process's CUDA_VISIBLE_DEVICES (2,3) "
                                          "does not give it; name GPUs among those."]
    runner.invoke(app, ["run", str(spec), "--workers", "2", "--gpus", "3,2"])
    assert shares_of(asked) == [("3", "1"), ("2", "1")]


@pytest.mark.parametrize("args, resources, message", [
    (["--workers", "2", "--gpus", "0,0"], None, "error: --gpus names GPU 0 more than once: two workers would share "
                                                "it. Got '0,0'."),
    (["--gpus", "0,,1"], None, "error: --gpus must be a comma-separated list of GPU indices or UUIDs, as "
                               "CUDA_VISIBLE_DEVICES takes them (e.g. 0,1,2,3). Got '0,,1' instead ('' is none)."),
    (["--workers", "2", "--gpus", "0"], None, "error: 2 workers with 1 GPU each need 2 GPUs; --gpus gives 1. Ask for "
                                              "fewer workers or fewer GPUs per worker."),
    (["--workers", "2"], {"gpus_per_worker": 1}, "error: 2 workers with 1 GPU each need 2 GPUs; PyTorch (the GPUs it "
                                                 "sees here) gives 0. Ask for fewer workers or fewer GPUs per "
                                                 "worker."),
    (["--workers", "2", "--threads", "0"], None, None),
    (["--gpus", "1"], {"gpus_per_worker": 0}, "error: --gpus hands out GPUs, and resources.gpus_per_worker is 0: "
                                              "leave out one or the other."),
])
def test_bad_gpus_or_threads_are_one_line_and_start_nothing(two_cores, tmp_path, monkeypatch, args, resources,
                                                             message):
    spec, asked = two_cores
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine's PyTorch sees no GPU, whatever the machine has
    if resources and resources.get("gpus_per_worker"):
        pytest.importorskip("torch")  # the GPUs PyTorch sees are what is handed out
    if resources:
        spec.write_text(yaml.safe_dump({**TINY_STUDY, "resources": resources}))
    result = runner.invoke(app, ["run", str(spec), *args])
    assert result.exit_code == 2 and asked == [], result.output
    if message is not None:
        assert result.stderr.splitlines() == [message]
    assert not (tmp_path / "runs").exists()

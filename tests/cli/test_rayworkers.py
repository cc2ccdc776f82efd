"""``run --ray``: the workers Ray places. The refusals run in this process; the rest start a Ray instance as a user
does (``ray start --head``, 2 CPUs and 2 declared GPUs: Ray hands out GPU ids without hardware, so nothing here needs
one) and run ``hpsearch run`` as a process, since only processes show what each Ray worker was given, what a killed
Ray worker leaves behind and what Ctrl-C reaches. Ray is in the test extra; without it they skip, except under
CI=true, where they fail."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from hpsearch.cli import rayworkers
from hpsearch.cli.app import app
from tests.conftest import (RECORDS_ITS_SHARE, TINY_STUDY, alive, assert_exactly_once, gated_study, study_trials,
                            wait_until, write_spec)

runner = CliRunner()
RUNNING, FAIL = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
# the test's own instances: no token written to the home folder, no usage report attempted
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def needs_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Ray is required under CI=true: pip install -e '.[test]' installs it")
        pytest.skip("Ray is not installed")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """The address of a Ray instance of 2 CPUs and 2 declared GPUs, started as a user starts one (``ray start
    --head``) in a process group of its own, which the fixture kills at the end."""
    needs_ray()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 f"--port={port}", "--num-cpus=2", "--num-gpus=2", "--include-dashboard=false",
                                 "--disable-usage-stats", "--object-store-memory=100000000"],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **RAY_ENV},
                                start_new_session=True)
    try:
        wait_until(lambda: "Ray runtime started" in log.read_text(), head, give_up_after=120)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # Ray's own SIGTERM drains for up to 30 s; nothing here needs keeping
        head.wait()


def hpsearch(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpsearch", *args], text=True,
                            env={**os.environ, **RAY_ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _running_owners(storage: str, study: str) -> dict[int, int]:
    """The trials running in ``study``, by number, and the pid of the worker process that runs each."""
    return {t.number: t.user_attrs["hpsearch:owner"]["pid"] for t in study_trials(storage, study)
            if t.state == RUNNING and t.user_attrs.get("hpsearch:owner")}


@pytest.mark.parametrize("args, message", [
    (["--ray", " "], "error: --ray must name a Ray cluster (auto, HOST:PORT, ray://HOST:10001) or be local. Got '' "
                     "instead."),
    (["--ray", "ray://head:10001", "--gpus", "0"],
     "error: --gpus names GPUs of this machine, for the Ray instance --ray local starts; the GPUs of the cluster at "
     "ray://head:10001 are Ray's to hand out: ask for them with resources.gpus_per_worker."),
    (["--ray", "127.0.0.1:1", "--storage", "postgresql://user@127.0.0.1:5432/studies"],
     "error: --ray 127.0.0.1:1: nothing answers at 127.0.0.1:1 (Connection refused). Start the cluster (ray start "
     "--head) or give its address (HOST:6379, ray://HOST:10001), or use --ray local."),
    (["--ray", "auto", "--workers", "2"],
     "error: --ray auto: the storage 'sqlite:///runs/tiny.db' is a SQLite file on this machine, which workers on "
     "other machines cannot share; give a PostgreSQL --storage (or $HPSEARCH_STORAGE), or use --ray local."),
])
def test_what_ray_cannot_place_is_one_line_before_anything_is_made(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_STUDY))
    result = runner.invoke(app, ["run", str(spec), *args])
    assert result.exit_code == 2 and result.stderr.splitlines() == [message], result.output
    assert not (tmp_path / "runs").exists()


def test_without_ray_installed_run_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_STUDY))
    result = runner.invoke(app, ["run", str(spec), "--ray", "local"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == ["error: --ray local: Ray is not installed here; pip install 'hpsearch[ray]'."]


def test_a_share_no_node_of_the_cluster_has_is_refused_before_a_task_waits_for_it(tmp_path, monkeypatch):
    needs_ray()  # the run lets go of Ray's connection, which it takes for made
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rayworkers, "connect", lambda address, **_: rayworkers.RayCluster(address, ((4, 1), (8, 0))))
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({**TINY_STUDY, "resources": {"gpus_per_worker": 2}}))
    result = runner.invoke(app, ["run", str(spec), "--ray", "local", "--workers", "2"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == (
        "error: Each worker asks for 1 CPU and 2 GPUs, which no node of the Ray cluster has (4 CPUs/1 GPUs, 8 "
        "CPUs/0 GPUs); ask for fewer with --threads or resources.")
    assert not (tmp_path / "runs").exists()


@pytest.mark.postgres
def test_a_grid_runs_exactly_once_over_two_ray_workers_each_on_a_gpu_of_its_own(tmp_path, pg_database, ray_cluster):
    (tmp_path / "records_its_share.py").write_text(RECORDS_ITS_SHARE)
    (tmp_path / "shares").mkdir()
    spec = write_spec(tmp_path, "placed", model={"backend": "records_its_share:train"}, tracking={"enabled": False},
                      objective={"metric": "val_acc", "direction": "maximize"}, resources={"gpus_per_worker": 1},
                      phases=[{"name": "grid", "sampler": "grid", "grid": {"x": list(range(6))}}])
    run = hpsearch("run", str(spec), "--ray", ray_cluster, "--workers", "2", "--storage", pg_database,
                   cwd=tmp_path)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "Ray workers: 2, each 1 thread, 1 GPU, on 1 node (2 CPUs)" in err.splitlines(), err
    shares = [json.loads(path.read_text()) for path in (tmp_path / "shares").glob("*.json")]
    assert sorted(share["CUDA_VISIBLE_DEVICES"] for share in shares) == ["0", "1"]
    assert all(share["OMP_NUM_THREADS"] == share["MKL_NUM_THREADS"] == "1" for share in shares)
    trials = study_trials(pg_database, "placed.grid")
    assert_exactly_once(trials, 6)
    assert {t.user_attrs["device"] for t in trials} == {"cuda:0", "cuda:1"}


@pytest.mark.postgres
def test_a_ray_worker_killed_mid_trial_ends_its_trial_and_ray_runs_its_task_again(tmp_path, pg_database, ray_cluster,
                                                                                   gate):
    spec = gated_study(tmp_path, "lost", points=6)
    run = hpsearch("run", str(spec), "--ray", ray_cluster, "--workers", "2", "--storage", pg_database, cwd=tmp_path)
    gate.watch(run)
    # both workers wait inside a trial: the gate is closed
    owners = wait_until(lambda: len(found := _running_owners(pg_database, "lost.grid")) == 2 and found, run,
                        give_up_after=300)
    killed_trial, worker = min(owners.items())
    ray_worker = _parent(worker)
    os.kill(ray_worker, signal.SIGKILL)  # a Ray worker process lost with its task, as on a node that died
    # the worker it started stops with it (no heartbeat waited for: its grace period is 30 s, and the gate holds the
    # trial until it is opened) and ends its trial as interrupted
    wait_until(lambda: not alive(worker), run, give_up_after=300)
    assert [t.state for t in study_trials(pg_database, "lost.grid") if t.number == killed_trial] == [FAIL]
    gate.open()
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err  # the lost task returned an exit code: Ray ran it again, to the study's end
    trials = study_trials(pg_database, "lost.grid")
    assert_exactly_once(trials, 6)
    assert [(t.number, t.user_attrs.get("failure")) for t in trials if t.state == FAIL] == [(killed_trial,
                                                                                            "interrupted")]


@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_signal_to_run_ray_cancels_every_task_and_their_trials_end_as_interrupted(tmp_path, gate, sig, to_group):
    needs_ray()
    spec = gated_study(tmp_path, "sig", points=6)
    storage = f"sqlite:///{tmp_path / 'sig.db'}"
    # 3 workers on 2 CPUs: the third task waits in Ray's queue, and is cancelled before it starts
    run = hpsearch("run", str(spec), "--ray", "local", "--workers", "3", "--storage", storage, cwd=tmp_path,
                   start_new_session=True)
    gate.watch(run)
    owners = wait_until(lambda: len(found := _running_owners(storage, "sig.grid")) == 2 and found, run,
                        give_up_after=300)
    if to_group:
        os.killpg(run.pid, sig)  # Ctrl-C in a terminal
    else:
        run.send_signal(sig)  # `kill PID`
    _, err = run.communicate(timeout=300)
    assert run.returncode == 130, err
    assert "Traceback" not in err, err
    assert not [pid for pid in owners.values() if alive(pid)], "a worker outlived the run"
    trials = study_trials(storage, "sig.grid")
    assert not [t for t in trials if t.state == RUNNING]
    assert sorted((t.number, t.user_attrs.get("failure")) for t in trials if t.state == FAIL) == [
        (number, "interrupted") for number in sorted(owners)]
    assert "the cluster runs 2 of the 3 workers at a time; the others start as those end." in err, err
    (line,) = [line for line in err.splitlines() if "Interrupted" in line]
    assert line.startswith("Interrupted: 2 workers stopped; trial "), err
    assert "ended" not in err, err  # the task cancelled in the queue is no failure to report
    assert sorted(int(n) for n in re.findall(r"trial (\d+) of phase 'grid'", line)) == sorted(owners), err


def test_a_local_instance_leaves_this_process_s_signal_handlers_and_gpus_as_they_were(monkeypatch):
    """Ray puts its own SIGTERM handler in when it starts an instance, and the GPUs it hands out are given to it as
    CUDA_VISIBLE_DEVICES: the run's own handlers (Ctrl-C before the workers start: one line, exit 130) and
    environment must be back once it has started."""
    needs_ray()
    import ray

    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cluster = rayworkers.connect("local", cpus=1, gpus=("7",))
        assert cluster.nodes == ((1.0, 1.0),)
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"
    finally:
        ray.shutdown()


def test_run_workers_never_imports_ray(tmp_path):
    """In a process of its own: another test of this process may have imported Ray."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_STUDY))
    code = ("import sys; from typer.testing import CliRunner; from hpsearch.cli import localworkers; "
            "localworkers.run_workers = lambda command, env, n, shares=None: ([0] * n, False, []); "
            "from hpsearch.cli.app import app; "
            f"CliRunner().invoke(app, ['run', {str(spec)!r}, '--workers', '2']); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr

"""Crash, signal, fault and hostile-input tests: each guarantee of docs/guarantees.md, checked."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from typer.testing import CliRunner

from hpsearch.cli.app import app
from hpsearch.spec.build import load_spec
from tests.conftest import TINY_STUDY, Gate, assert_exactly_once, gated_study, study_trials, write_spec

runner = CliRunner()
COMPLETE, PRUNED, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                   optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)


def spec_file(tmp_path: Path, points: int = 6, tracking: dict | None = None, **defaults) -> Path:
    return write_spec(tmp_path, "rel", defaults={**TINY_STUDY["defaults"], **defaults},
                      tracking=tracking or TINY_STUDY["tracking"],
                      heartbeat={"interval": 1, "grace_period": 3},
                      phases=[{"name": "grid", "sampler": "grid",
                               "grid": {"learning_rate": [round(0.01 * (k + 1), 2) for k in range(points)]}}])


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    return study_trials(storage, "rel.grid")


def running_trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials_of(storage) if t.state == RUNNING]


def completed(storage: str) -> int:
    return sum(t.state == COMPLETE for t in trials_of(storage))


def wait_for(predicate, timeout: float = 120, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def hpsearch(*args: str, env: dict | None = None, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpsearch", *args], cwd=cwd, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def mlflow_trial_runs(uri: str) -> dict[str, object]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rel")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`hpsearch.kind` = 'trial'",
                              max_results=1000)
    return {run.data.tags["hpsearch.trial_key"]: run for run in runs}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rel.db'}"
    return request.getfixturevalue("pg_database")


# 1 and 3: SIGKILL, SIGINT, SIGTERM mid-trial, then resume ---------------------------------------------------------

@pytest.mark.parametrize("backend, sig", [
    ("sqlite", signal.SIGKILL), ("sqlite", signal.SIGINT), ("sqlite", signal.SIGTERM),
    pytest.param("postgres", signal.SIGKILL, marks=pytest.mark.postgres),  # signal handling is database-independent
])
def test_signal_mid_trial_then_resume_loses_nothing(tmp_path, request, backend, sig, freeze_mid_trial):
    storage = f"sqlite:///{tmp_path / 'rel.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")
    gate = request.getfixturevalue("gate")  # after the database: its processes are stopped before it is dropped
    spec = gated_study(tmp_path, "rel", free=2, grace_period=3, tracking=True)  # the third trial waits
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("run", str(spec), "--storage", storage, "--tracking-uri", tracking)
    proc = hpsearch(*args)

    gate.watch(proc)
    wait_for(lambda: completed(storage) >= 2 or proc.poll() is not None)
    victim = freeze_mid_trial(proc, lambda: running_trials(storage))  # stopped inside the held third trial
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)  # a SIGINT/SIGTERM is delivered as it resumes, mid-trial
    _, err = proc.communicate(timeout=120)
    victim = trials_of(storage)[victim.number]
    if sig == signal.SIGKILL:
        assert victim.state == RUNNING
    else:
        # the process exits, with the trial failed as interrupted (its MLflow run is KILLED: checked below, since a
        # tracking process still starting up may leave that to the next run); the victim waits at the gate, which
        # stays closed until the rerun, so it cannot have finished
        assert proc.returncode == 130, err
        assert "Interrupted" in err and "Traceback" not in err and "Exception ignored" not in err, err
        assert victim.state == FAIL and victim.user_attrs["failure"] == "interrupted"
        assert not running_trials(storage)
    finished_before = {t.number: (t.value, t.params) for t in trials_of(storage) if t.state == COMPLETE}

    gate.open()
    resumed = hpsearch(*args)
    gate.watch(resumed)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    trials = trials_of(storage)
    assert_exactly_once(trials, 6)
    # no finished trial lost or altered
    assert {t.number: (t.value, t.params) for t in trials if t.number in finished_before} == finished_before
    dead = trials[victim.number]
    runs = mlflow_trial_runs(tracking)
    assert sorted(runs) == sorted(f"rel.grid/{t.number}" for t in trials)
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    assert dead.state == FAIL
    same_point = [t for t in trials if t.user_attrs["point"] == victim.user_attrs["point"]]
    assert [t.state for t in same_point] == [FAIL, COMPLETE]  # exactly one retry of the same point
    assert runs[f"rel.grid/{victim.number}"].info.status == "KILLED"
    retry = runs[f"rel.grid/{same_point[1].number}"]
    assert retry.data.tags["hpsearch.replaces_run_id"] == runs[f"rel.grid/{victim.number}"].info.run_id


# 4: a worker frozen past the grace period --------------------------------------------------------------------------

@pytest.mark.postgres
def test_frozen_worker_s_point_is_taken_over_and_its_late_result_not_counted(tmp_path, pg_database,
                                                                           freeze_mid_trial, gate):
    spec = gated_study(tmp_path, "rel", free=1, grace_period=3, tracking=True)  # the second trial waits
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"HPSEARCH_STORAGE": pg_database}
    frozen = hpsearch("worker", str(spec), "--tracking-uri", tracking, env=env)

    gate.watch(frozen)
    wait_for(lambda: completed(pg_database) >= 1 or frozen.poll() is not None)
    victim = freeze_mid_trial(frozen, lambda: running_trials(pg_database))  # stopped inside the held second trial
    gate.open()  # the helper's trials, and the frozen one once it wakes, run to their end
    try:
        helper = hpsearch("worker", str(spec), "--tracking-uri", tracking, env=env)
        gate.watch(helper)
        _, helper_err = helper.communicate(timeout=300)
        assert helper.returncode == 0, helper_err
        assert "heartbeat lost" in helper_err
    finally:
        frozen.send_signal(signal.SIGCONT)
    _, frozen_err = frozen.communicate(timeout=120)
    assert frozen.returncode == 0, frozen_err
    assert "result discarded" in frozen_err
    trials = trials_of(pg_database)
    assert_exactly_once(trials, 6)
    late = trials[victim.number]
    assert late.state == FAIL and late.user_attrs["failure"] == "heartbeat lost" and late.value is None


# 5: two processes on one SQLite study ---------------------------------------------------------------------------------

def test_two_processes_on_one_sqlite_study(tmp_path):
    spec = spec_file(tmp_path, points=12, num_iters=600, hidden_size=64)
    storage = f"sqlite:///{tmp_path / 'rel.db'}"
    procs = [hpsearch("run", str(spec), "--storage", storage) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not any("locked" in err or "Traceback" in err for err in errors)
    assert_exactly_once(trials_of(storage), 12)


# 6: the tracking server down mid-study, and slow --------------------------------------------------------------------

class Proxy:
    """A TCP proxy to the MLflow server that can add latency or go down; either side's end of a connection ends it."""

    def __init__(self, upstream: int, delay: float = 0.0) -> None:
        self.upstream, self.delay = upstream, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.up = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.up:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, self.delay), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, delay: float) -> None:
        try:
            while chunk := source.recv(65536):
                if delay:
                    time.sleep(delay)
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            # shutdown, not close alone: the other direction's thread is blocked in recv() on one of these sockets,
            # which keeps it open until that call returns, so the client would not see the server end a kept-alive
            # connection and would send its next request into a socket no one reads
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def down(self) -> None:
        self.up = False
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        except OSError:
            pass
        self.server.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass


@pytest.fixture
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = socket.create_server(("127.0.0.1", 0)).getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{folder / 'm.db'}", "--artifacts-destination", str(folder / "art"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              # its job runner (eight more processes importing MLflow) serves nothing hpsearch logs
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def healthy() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                return b"200" in sock.recv(100)
        except OSError:
            return False

    wait_for(healthy, timeout=90, step=0.5)
    yield port
    # the whole group: a server with job execution on starts consumers that outlive it when only it is stopped
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_tracking_server_down_or_slow_never_stops_the_study(tmp_path, mlflow_server):
    """Two studies on one MLflow server (starting one takes most of this test): one's proxy goes down mid-study, the
    other's answers every packet 50 ms late. The first's trials after the third wait at a gate until the proxy is
    down, so that the study always has trials left to log to a server that is gone; the other's gate is open."""
    experiments = ("down-mid-study", "slow")
    folders = {experiment: tmp_path / experiment for experiment in experiments}
    gates = {experiment: Gate(folder) for experiment, folder in folders.items()}
    storages = {experiment: f"sqlite:///{folder / 'rel.db'}" for experiment, folder in folders.items()}
    proxies = {"down-mid-study": Proxy(mlflow_server), "slow": Proxy(mlflow_server, delay=0.05)}
    specs, procs = {}, {}
    try:
        for experiment, folder in folders.items():
            folder.mkdir()
            specs[experiment] = spec = gated_study(folder, "rel", points=8, free=3, grace_period=3, tracking=True,
                                                   epochs=5)
            if experiment == "slow":
                gates[experiment].open()
            raw = yaml.safe_load(spec.read_text())
            raw["tracking"]["experiment"] = f"rel-{experiment}"
            spec.write_text(yaml.safe_dump(raw))
            procs[experiment] = hpsearch("run", str(spec), "--storage", storages[experiment], "--tracking-uri",
                                         f"http://127.0.0.1:{proxies[experiment].port}")
            gates[experiment].watch(procs[experiment])
        wait_for(lambda: completed(storages["down-mid-study"]) >= 3)
        proxies["down-mid-study"].down()
        gates["down-mid-study"].open()
        errors = {experiment: proc.communicate(timeout=300)[1] for experiment, proc in procs.items()}
    finally:
        for gate in gates.values():
            gate.close()
    for experiment, err in errors.items():
        assert procs[experiment].returncode == 0, (experiment, err)
        assert_exactly_once(trials_of(storages[experiment]), 8)
        notices = [line for line in err.splitlines() if line.startswith("tracking:")]
        assert len(notices) == (1 if experiment == "down-mid-study" else 0), (experiment, err)
    # sync, straight to the server, fills whatever is missing (a process per study: each study's trainable is a
    # module named gate, which one process imports once)
    uri = f"http://127.0.0.1:{mlflow_server}"
    syncs = {experiment: hpsearch("sync", str(specs[experiment]), "--storage", storages[experiment], "--tracking-uri",
                                  uri) for experiment in experiments}
    for experiment, sync in syncs.items():
        _, err = sync.communicate(timeout=300)
        assert sync.returncode == 0, (experiment, err)
    client = MlflowClient(uri)
    for experiment in experiments:
        experiment_id = client.get_experiment_by_name(f"rel-{experiment}").experiment_id
        runs = client.search_runs([experiment_id], filter_string="tags.`hpsearch.kind` = 'trial'", max_results=100)
        keys = collections.Counter(r.data.tags["hpsearch.trial_key"] for r in runs)
        assert sorted(keys) == sorted(f"rel.grid/{t.number}" for t in trials_of(storages[experiment])), experiment
        assert set(keys.values()) == {1}, experiment
        assert not [r for r in runs if r.info.status == "RUNNING"], experiment


# 9: hostile inputs: one line, exit 2, storage untouched ----------------------------------------------------------------

def _hostile_cifar(folder: Path, kind: str, marker: Path) -> Path:
    import pickle

    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        with (folder / f"data_batch_{i}").open("wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, 20)]}, f, protocol=2)
    target = folder / "data_batch_1"
    if kind == "gadget":
        class Gadget:
            def __reduce__(self):
                return (Path.touch, (marker,))

        target.write_bytes(pickle.dumps({b"data": Gadget(), b"labels": []}))
    elif kind == "truncated":
        target.write_bytes(target.read_bytes()[:3000])
    elif kind == "wrong-shape":
        target.write_bytes(pickle.dumps({b"data": np.zeros((20, 1000), dtype=np.uint8), b"labels": [0] * 20}))
    elif kind == "labels":
        target.write_bytes(pickle.dumps({b"data": np.zeros((20, 3072), dtype=np.uint8), b"labels": [12] * 20}))
    return folder


@pytest.mark.parametrize("case, message", [
    ("gadget", "rejected as unsafe"),
    ("truncated", "not a readable CIFAR-10 batch"),
    ("wrong-shape", "'data' must be a uint8 array"),
    ("labels", "labels must lie in 0..9"),
    ("python-object", "invalid YAML"),
    ("empty-grid", "'grid' is empty"),
    ("negative-lr", "learning_rate must be greater than 0"),
    ("batch-too-big", "batch_size 5000 is larger than the training split"),
    ("unknown-backend", "model.backend must be one of"),
])
def test_hostile_input_is_one_line_exit_2_and_the_storage_untouched(tmp_path, monkeypatch, case, message):
    """In-process, tracking off: what is checked is the study storage, the exit code and the one line."""
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path)
    storage = f"sqlite:///{tmp_path / 'rel.db'}"
    assert runner.invoke(app, ["run", str(spec), "--storage", storage]).exit_code == 0
    database = tmp_path / "rel.db"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    marker = tmp_path / "pwned"
    if case in ("gadget", "truncated", "wrong-shape", "labels"):
        overrides = ["data.dataset=cifar10", f"data.path={_hostile_cifar(tmp_path / 'c', case, marker)}"]
    else:
        overrides = {
        "empty-grid": ["phases.0.grid={}"],
        "negative-lr": ["defaults.learning_rate=-1"],
        "batch-too-big": ["defaults.batch_size=5000"],
        "unknown-backend": ["model.backend=jax"],
        }.get(case, [])
    if case == "python-object":
        spec.write_text(spec.read_text() + f"evil: !!python/object/apply:os.system ['touch {marker}']\n")
    args = ["run", str(spec), "--storage", storage]
    for item in overrides:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not marker.exists()
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


# 10: secrets never appear --------------------------------------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.parametrize("form", ["netloc", "query"])
def test_storage_password_never_appears(tmp_path, pg_database, monkeypatch, form):
    monkeypatch.chdir(tmp_path)
    head, database = pg_database.rsplit("/", 1)
    url = (head.replace("postgres@", "postgres:SECRET@") + f"/{database}" if form == "netloc"
           else f"{pg_database}?password=SECRET")
    spec = spec_file(tmp_path, tracking={"enabled": True})  # nor in what MLflow logs and syncs
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outputs = []
    for args in (["run", str(spec), "--tracking-uri", tracking], ["status", str(spec), "--json"],
                 ["best", str(spec), "--format", "json"], ["export", str(spec), "--output", "t.json"],
                 ["report", str(spec), "--out", "rep"], ["sync", str(spec), "--tracking-uri", tracking]):
        result = runner.invoke(app, [*args, "--storage", url])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    # a failure that names the URL masks it too
    bad = runner.invoke(app, ["status", str(spec), "--storage", url.replace("127.0.0.1:5432", "127.0.0.1:1")])
    assert bad.exit_code == 2
    outputs.append(bad.output)
    assert not [out for out in outputs if "SECRET" in out]
    assert "SECRET" not in (tmp_path / "t.json").read_text()
    assert not [p for p in (tmp_path / "rep").iterdir() if "SECRET" in p.read_bytes().decode(errors="ignore")]
    # nothing stored in Optuna or MLflow carries it
    for summary in optuna.get_all_study_summaries(pg_database):
        study = optuna.load_study(study_name=summary.study_name, storage=pg_database)
        system = study._storage.get_study_system_attrs(study._study_id)  # Optuna 5 has no public accessor
        assert "SECRET" not in json.dumps([study.user_attrs, system], default=str)
        assert "SECRET" not in json.dumps([(t.params, t.user_attrs, t.system_attrs) for t in study.trials], default=str)
    client = MlflowClient(tracking)
    for run in client.search_runs([client.get_experiment_by_name("rel").experiment_id], max_results=1000):
        assert "SECRET" not in json.dumps([run.data.params, run.data.tags])


# 11: read-only storage folder, full disk -------------------------------------------------------------------------------

def test_read_only_storage_folder_is_a_clear_error(tmp_path):
    spec = spec_file(tmp_path)
    # a runs/ folder is made where it is missing; here it cannot be (any other missing folder is refused as such)
    result = runner.invoke(app, ["run", str(spec), "--storage", "sqlite:////proc/runs/rel.db"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot create /proc/runs" in lines[0]


def test_full_disk_is_a_clear_error_and_the_study_resumes_intact(tmp_path):
    spec = spec_file(tmp_path, points=40)
    storage = f"sqlite:///{tmp_path / 'rel.db'}"
    args = [sys.executable, "-m", "hpsearch", "run", str(spec), "--storage", storage]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    created = subprocess.run([*args, "--max-trials", "1"], env=env, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    size = (tmp_path / "rel.db").stat().st_size

    def small_disk() -> None:  # files may not grow more than a little past the database's size: the disk "fills"
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 8 * 1024, size + 8 * 1024))

    full = subprocess.run(args, env=env, capture_output=True, text=True, preexec_fn=small_disk, timeout=300)
    assert full.returncode == 2, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "storage" in errors[0] and "Traceback" not in full.stderr, full.stderr
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_exactly_once(trials_of(storage), 40)


# 12: property-based: specs round-trip -----------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)
numeric = st.tuples(st.floats(1e-5, 1.0), st.floats(1.0, 100.0)).map(lambda lh: {"type": "float", "low": lh[0],
                                                                                   "high": lh[1]})
integer = st.tuples(st.integers(1, 50), st.integers(50, 200)).map(lambda lh: {"type": "int", "low": lh[0],
                                                                               "high": lh[1]})
categorical = st.lists(st.integers(10, 400), min_size=1, max_size=4, unique=True).map(
    lambda c: {"type": "categorical", "choices": c})


@settings(max_examples=40, deadline=None)
@given(name=names, seed=st.integers(0, 2**31), n_trials=st.integers(1, 50),
       lr=numeric, hidden=integer, batch=categorical, top_k=st.integers(1, 10), points=st.integers(1, 6))
def test_any_valid_spec_round_trips(tmp_path_factory, name, seed, n_trials, lr, hidden, batch, top_k, points):
    raw = {"name": name, "seed": seed, "data": {"dataset": "digits"},
           "defaults": {"hidden_size": 10, "learning_rate": 0.01},
           "phases": [{"name": "random", "sampler": "random", "n_trials": n_trials,
                       "space": {"learning_rate": lr, "hidden_size": hidden, "batch_size": batch}},
                      {"name": "grid", "sampler": "grid", "grid": {"from": "random", "top_k": top_k,
                                                                    "points": points}}]}
    folder = tmp_path_factory.mktemp("spec")
    first = folder / "a.yaml"
    first.write_text(yaml.safe_dump(raw))
    spec = load_spec(first)
    again = folder / "b.yaml"
    again.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True)))
    assert load_spec(again).model_dump() == spec.model_dump()


# 5 (continued): the claim itself, hammered by four processes ------------------------------------------------------------

CLAIMER = """
import sys
from hpsearch.engine.driver import Driver
from hpsearch.engine.pointqueue import owner
from hpsearch.spec.build import load_spec
spec, url, ladders = sys.argv[1], sys.argv[2], sys.argv[3] == "ladders"
driver = Driver(load_spec(spec), url, echo=lambda m: None)
study_id = driver.storage.get_study_id_from_name("rel.grid")


def rungs(point):  # ladders of 3 rungs: points 3k, 3k + 1, 3k + 2, enqueued together
    first = point - point % 3
    return {first, first + 1, first + 2} - {point}, 6


print("ready", flush=True)
sys.stdin.read()  # blocks until the test closes our stdin: all four start claiming together
claimed = []
while trials := driver.store.claim(study_id, owner(), rungs if ladders else None):
    claimed += [trial[0] for trial in trials]
print(" ".join(map(str, claimed)))
"""


@pytest.mark.parametrize("unit", ["trials", "ladders"])
def test_concurrent_claims_never_hand_out_a_trial_twice(tmp_path, storage, unit):
    spec = spec_file(tmp_path)
    study = optuna.create_study(study_name="rel.grid", storage=storage)
    for point in range(150):
        study.enqueue_trial({"learning_rate": 0.01}, user_attrs={"point": point})
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(spec), storage, unit], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        assert p.stdout.readline() == "ready\n", p.communicate()[1]
    for p in procs:
        p.stdin.close()
    outputs = [(p.stdout.read(), p.stderr.read()) for p in procs]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4, [err for _, err in outputs]
    claimed = [int(t) for out, _ in outputs for t in out.split()]
    assert len(claimed) == 150 and len(set(claimed)) == 150

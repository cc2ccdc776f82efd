"""Shared fixtures and helpers: tiny datasets made here, CIFAR-10 built from ../shared/data when that archive exists,
a tiny study spec (``write_spec``), a study whose trials wait at a gate the test opens (``gated_study``), the trials of
a study read safely while a process creates it (``study_trials``) and the exactly-once check of a phase's trials
(``assert_exactly_once``).

Test modules import the helpers with ``from tests.conftest import write_spec, assert_exactly_once``.
"""

from __future__ import annotations

import collections
import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import sqlalchemy
import yaml

from hpsearch.data import Dataset, load_dataset
from hpsearch.storage.connections import storage_lock

REPO = Path(__file__).resolve().parents[1]
CIFAR_BUILDER = REPO.parent / "shared" / "data" / "make_cifar10.py"


TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "synthetic", "num_train": 200, "num_val": 60, "num_test": 60},
    "model": {"backend": "numpy"},
    # 20 iterations of 4 minibatches per epoch: 5 epochs, a few milliseconds a trial
    "defaults": {"hidden_size": 8, "learning_rate": 0.05, "num_iters": 20, "batch_size": 50, "std": 0.01},
    # MLflow only where a test is about tracking (it passes tracking={"enabled": True}): importing it and migrating
    # a fresh MLflow database costs a subprocess seconds
    "tracking": {"enabled": False},
    "phases": [
        {"name": "random", "sampler": "random", "n_trials": 6,
         "space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
                   "hidden_size": {"type": "int", "low": 4, "high": 16, "step": 4}}},
        {"name": "grid", "sampler": "grid", "grid": {"from": "random", "top_k": 3, "points": 2}},
    ],
}


# The modules whose tests run whole studies in subprocesses (up to a minute each on 2 busy cores) go first: `make
# test` hands tests out one at a time in this order, so its parallel processes start on the long ones and end on the
# many short ones together, instead of one process left with a long test at the end.
SLOW_FIRST = ("test_mlflow_ui.py", "test_workers.py", "test_signals.py", "cli/test_rayworkers.py",
              "test_reliability.py", "test_examples.py", "tracking/test_tracking.py", "test_crash_windows.py",
              "search/test_halving.py", "search/test_ladders.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        return next((i for i, name in enumerate(SLOW_FIRST) if path.endswith(f"tests/{name}")), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: each module's tests keep their order


@pytest.fixture(autouse=True)
def _forget_modules_made_here(tmp_path_factory: pytest.TempPathFactory):
    """After each test, forget the modules it imported from the temporary folders (a user's model file, a guide's code).

    Tests write modules of the same name (``my_model``) in their own folders; hpsearch refuses a module of that name
    already imported from elsewhere, so one test's module left in ``sys.modules`` would fail the next test that the same
    process runs.
    """
    yield
    base = str(tmp_path_factory.getbasetemp())
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(base):
            del sys.modules[name]


def write_spec(tmp_path: Path, name: str = "tiny", **changes: Any) -> Path:
    """Write :data:`TINY_STUDY` named ``name`` to ``tmp_path / f"{name}.yaml"`` and return the path.

    Each keyword replaces that top-level key (``defaults``, ``phases``, ``heartbeat``, ``pruner``, ``tracking``,
    ``model``, any unknown key to test a refusal): ``write_spec(tmp_path, defaults={**TINY_STUDY["defaults"],
    "num_iters": 40})``. Writing the same name again overwrites the file.
    """
    spec = {**copy.deepcopy(TINY_STUDY), "name": name, **copy.deepcopy(changes)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


GATE = '''"""A test's gate: the first FREE calls finish at once, later ones wait until the file 'open' exists here.

train: a trial's val_acc is its learning rate. ladder: the same, trained in stages along num_iters (one call per
stage), its val_acc the learning rate plus num_iters / 1000.
"""
import json
import os
import time
from pathlib import Path

from hpsearch import trainable
from hpsearch.backends import TrainResult

HERE = Path(__file__).parent
FREE = {free}
EPOCHS = {epochs}  # the work of a free call: epochs of arithmetic, each told to on_epoch as training's are


def _wait_at_the_gate():
    calls = os.open(HERE / "calls", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(calls, b".")
        call = os.lseek(calls, 0, os.SEEK_CUR)  # this call's number: an append is atomic among processes
    finally:
        os.close(calls)
    while call > FREE and not (HERE / "open").exists():
        time.sleep(0.01)


def train(config, data, *, seed, on_epoch=None):
    _wait_at_the_gate()
    for epoch in range(EPOCHS):
        sum(i * i for i in range(100_000))
        if on_epoch is not None:
            on_epoch(epoch, {{"val_acc": config["learning_rate"] * (epoch + 1) / EPOCHS}})
    return {{"val_acc": config["learning_rate"]}}


class Stages:
    def __init__(self, config):
        self.config, self.budget, self.examples = config, 0, 0

    def advance(self, budget, *, on_epoch=None):
        _wait_at_the_gate()
        self.budget = self.examples = budget
        return TrainResult(metrics={{"val_acc": self.config["learning_rate"] + budget / 1000}},
                           config={{**self.config, "num_iters": budget}})

    def save(self, path):
        Path(path).write_text(json.dumps({{"config": self.config, "budget": self.budget}}))


def start(config, data, *, seed, resume_from=None):
    stages = Stages(config)
    if resume_from is not None:
        saved = json.loads(Path(resume_from).read_text())
        if {{**saved["config"], "num_iters": 0}} != {{**config, "num_iters": 0}}:
            raise ValueError("another configuration's run")
        stages.budget = stages.examples = saved["budget"]
    return stages


@trainable(metrics={{"val_acc": "maximize"}}, budget="num_iters", start=start)
def ladder(config, data, *, seed, on_epoch=None):
    return start(config, data, seed=seed).advance(config["num_iters"])
'''


def gated_study(tmp_path: Path, name: str, points: int = 6, *, free: int = 0, grace_period: int = 30,
                grid: dict[str, list] | None = None, tracking: bool = False, budget: str | None = None,
                schedule: dict | None = None, epochs: int = 0) -> Path:
    """Write a grid study whose trials after the first ``free`` wait until the test creates ``tmp_path / "open"``.

    A process stays inside such a trial however busy the machine, so a test polling the storage for it cannot miss
    the moment. The grid is ``points`` learning rates unless ``grid`` is given; a trial's val_acc is its learning
    rate. Tracking is off unless ``tracking``. The ``gate`` fixture opens it, also when the test fails.
    ``budget="num_iters"``: the phase's ladders train in stages, and every stage (not trial) counts as a call; a
    stage taken up from a saved run trains (and counts examples) only from where it was saved. ``schedule``: the
    phase's halving. ``epochs``: each call of the plain trainable first works through that many epochs of
    arithmetic (a few milliseconds each), told to ``on_epoch``, so that a trial spends its time as training does.
    """
    (tmp_path / "gate.py").write_text(GATE.format(free=free, epochs=epochs))
    grid = grid or {"learning_rate": [round(0.01 * (k + 1), 2) for k in range(points)]}
    phase = {"name": "grid", "sampler": "grid", "grid": grid, **({"budget": budget} if budget else {}),
             **({"schedule": schedule} if schedule else {})}
    return write_spec(tmp_path, name, tracking={"enabled": tracking},
                      model={"backend": "gate:ladder" if budget else "gate:train"}, defaults={},
                      objective={"metric": "val_acc", "direction": "maximize"},
                      heartbeat={"interval": 1, "grace_period": grace_period}, phases=[phase])


class Gate:
    """The gate of a :func:`gated_study` written to ``folder``. At the test's end it is opened and the processes
    handed to :meth:`watch` are killed if they still run, whatever failed: nothing is left waiting."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen] = []

    def watch(self, *processes: subprocess.Popen) -> None:
        self.processes.extend(processes)

    def open(self) -> None:
        (self.folder / "open").touch()

    def close(self) -> None:
        self.open()
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture
def gate(tmp_path: Path):
    """The :class:`Gate` of a gated study in ``tmp_path``."""
    gate = Gate(tmp_path)
    yield gate
    gate.close()


def kill_at_the_gate_and_rerun(spec: Path, storage: str, gate: Gate, calls: int, states: dict[str, int],
                               ) -> subprocess.CompletedProcess:
    """Run a :func:`gated_study` until its trainable was called ``calls`` times and its grid phase's trials are in
    ``states`` (e.g. ``{"COMPLETE": 1, "RUNNING": 2}``), kill the process there (SIGKILL), open the gate and run
    the same command again to its end; returns the second run."""
    command = [sys.executable, "-m", "hpsearch", "run", str(spec), "--storage", storage]
    first = subprocess.Popen(command, cwd=spec.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gate.watch(first)
    called = spec.parent / "calls"
    study = f"{spec.stem}.grid"
    deadline = time.monotonic() + 300
    while not (called.exists() and called.stat().st_size == calls and
               collections.Counter(t.state.name for t in study_trials(storage, study)) == states):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, f"the study never reached {calls} calls with its trials {states}"
    first.kill()
    first.communicate()
    gate.open()
    again = subprocess.run(command, cwd=spec.parent, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    return again


def wait_until(predicate, proc: subprocess.Popen, give_up_after: float | None = None):
    """Poll the storage until ``predicate`` holds; fail (with the process's stderr) if the process ended without it.

    The exit is seen before the storage is read, so a process that reached the state and ended between the two looks
    is not taken for one that ended first. give_up_after: seconds after which a wait that can never end (a gated trial
    that never came) fails instead of hanging; not a synchronisation: the state it waits for comes within seconds."""
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        ended = proc.poll() is not None
        found = predicate()
        if found:
            return found
        if ended:
            pytest.fail(f"the process ended first (exit {proc.returncode}): {proc.communicate()[1][-2000:]}")
        if deadline is not None and time.monotonic() > deadline:
            pytest.fail(f"still waiting after {give_up_after} s")


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet waited for, does not)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):  # gone, also between the two looks
        return False


# a trainable that records what its worker was given in the folder shares/ beside it, and waits at its first trial
# until both workers are at theirs
RECORDS_ITS_SHARE = '''
import json, os, time
from pathlib import Path

import hpsearch


def train(config, data, *, seed, on_epoch):
    from threadpoolctl import threadpool_info

    folder = Path(__file__).parent / "shares"  # beside the plug-in: a Ray worker's environment is its node's
    mine = folder / f"{os.getpid()}.json"
    if not mine.exists():
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        share = {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        (folder / f"{os.getpid()}.tmp").write_text(json.dumps({**share, "blas": blas}))
        (folder / f"{os.getpid()}.tmp").rename(mine)
        give_up = time.monotonic() + 120  # not a synchronisation: the other worker's first trial comes in seconds
        while len(list(folder.glob("*.json"))) < 2 and time.monotonic() < give_up:
            time.sleep(0.05)
    return hpsearch.TrainResult(metrics={"val_acc": config["x"] / 10},
                                device="cuda:" + os.environ.get("CUDA_VISIBLE_DEVICES", "none"))
'''


def study_trials(storage: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of one Optuna study, [] while it does not exist yet.

    The storage is opened under hpsearch's schema lock, as hpsearch opens it: a test polling a fresh database while a
    process creates its tables would otherwise race that process writing the schema's version (and fail, once in a
    few hundred runs, on a duplicate key).
    """
    with storage_lock(storage, "schema"):
        opened = optuna.storages.RDBStorage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=opened).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        opened.engine.dispose()


def paused_runs_left(storage: str) -> list[Path]:
    """The files of paused runs left beside ``storage`` (the kept winner's folder is not one)."""
    from hpsearch.storage.connections import runs_folder

    return [path for path in runs_folder(storage).glob("*/*") if not path.parent.name.startswith("winner-")]


def assert_exactly_once(trials: list[optuna.trial.FrozenTrial], points: int) -> None:
    """Points 0..points-1 of a phase each finished (complete or pruned) exactly once, and no trial is left running."""
    finished = collections.Counter(t.user_attrs["point"] for t in trials
                                   if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert sorted(finished) == list(range(points)), finished
    assert set(finished.values()) == {1}, finished
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]


@pytest.fixture
def blobs() -> Dataset:
    """Three separable classes in 20 dimensions: 500 train / 100 val / 100 test."""
    return load_dataset("synthetic", seed=0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in the official layout: $HPSEARCH_CIFAR10 if set, else built from ../shared/data, else skip.

    Built once per test run: the parallel workers of ``make test`` (pytest-xdist) share one build, under a lock."""
    import fcntl

    given = os.environ.get("HPSEARCH_CIFAR10")
    if given:
        return Path(given)
    if not CIFAR_BUILDER.exists():
        pytest.skip(f"CIFAR-10 archive not found next to {CIFAR_BUILDER.parent}")
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    out = shared / "cifar10"
    with open(shared / "cifar10.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "done").exists():
            subprocess.run([sys.executable, str(CIFAR_BUILDER), str(out)], check=True, capture_output=True)
            (out / "done").touch()
    return out / "cifar-10-batches-py"


PG_ADMIN = os.environ.get("HPSEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database URL, dropped afterwards. Skips without a server, except under CI=true."""
    import uuid

    import sqlalchemy

    name = f"hpsearch_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_ADMIN} is required under CI=true: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def freeze_mid_trial():
    """The function :func:`_freeze_mid_trial`, for tests that stop a process inside a trial."""
    return _freeze_mid_trial


def _freeze_mid_trial(proc, running_trials) -> object:
    """Stop ``proc`` (SIGSTOP) while the storage shows it inside a trial, and return that trial.

    ``running_trials()`` lists the RUNNING trials of the study (any order). The process is frozen first and the
    storage read after, so the trial returned is the one the process is in; it resumes with SIGCONT. Waits on storage
    states only; fails if the process ends first.
    """
    import signal

    while True:
        if proc.poll() is not None:
            pytest.fail(f"the process ended first (exit {proc.returncode})")
        mine = [t for t in running_trials() if (t.user_attrs.get("hpsearch:owner") or {}).get("pid") == proc.pid]
        if not mine:
            continue
        proc.send_signal(signal.SIGSTOP)
        try:
            mine = [t for t in running_trials() if (t.user_attrs.get("hpsearch:owner") or {}).get("pid") == proc.pid]
        except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
            mine = []  # frozen while it held SQLite's write lock: let it go on, and freeze it at another moment
        if mine:
            return mine[0]
        proc.send_signal(signal.SIGCONT)


@pytest.fixture
def read_only_folder(tmp_path):
    """Make a folder read-only for this process: chattr +i as root (root ignores mode bits), chmod otherwise."""
    import shutil

    folders = []

    def protect(folder: Path) -> None:
        if os.geteuid() == 0:
            if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
                pytest.skip("running as root without chattr +i: no way to make a folder read-only")
        else:
            folder.chmod(0o555)
        folders.append(folder)

    yield protect
    for folder in folders:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


@pytest.fixture(autouse=True)
def _forget_passwords():
    """Each test starts with no registered passwords: a property test's random 'q' must not mask a later test's text."""
    from hpsearch.storage import urls as storage

    yield
    storage._known_secrets.clear()

"""Several `hpsearch worker` processes on one PostgreSQL study: exactly once across workers, kills, shared parents."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.conftest import (RECORDS_ITS_SHARE, TINY_STUDY, assert_exactly_once, gated_study, study_trials,
                            write_spec)

GRID = {"learning_rate": [0.02, 0.05, 0.1, 0.2], "hidden_size": [4, 8, 12], "batch_size": [25, 50]}  # 24 points


# the same grid trained as 24 ladders of three rungs, halved: 24 ladders train to 10 iterations, 8 to 20, 3 to 40
HALVING = {"grid": {**GRID, "num_iters": [10, 20, 40]}, "budget": "num_iters",
           "schedule": {"type": "halving", "reduction_factor": 3}}


def spec_file(tmp_path: Path, phase: dict | None = None, **defaults) -> Path:
    # same-host deaths are seen at once (the pid is gone); a long grace period keeps a loaded machine's late
    # heartbeats from failing live trials
    return write_spec(tmp_path, "scaled", defaults={**TINY_STUDY["defaults"], "num_iters": 40, **defaults},
                      tracking={"enabled": True},  # workers logging one study to MLflow, each trial once
                      heartbeat={"interval": 1, "grace_period": 30},
                      phases=[{"name": "grid", "sampler": "grid", "grid": GRID, **(phase or {})}])


def start_workers(spec: Path, storage: str, tracking: str, n: int) -> list[subprocess.Popen]:
    env = {**os.environ, "HPSEARCH_STORAGE": storage, "OPENBLAS_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hpsearch", "worker", str(spec), "--tracking-uri", tracking]
    return [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(n)]


def _trials(storage: str) -> list:
    return study_trials(storage, "scaled.grid")


def assert_tracking(tracking: str, trials: list, logs: object = None) -> None:
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("scaled").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    kinds = collections.defaultdict(list)
    for run in runs:
        kinds[run.data.tags["hpsearch.kind"]].append(run)
    assert len(kinds["study"]) == 1 and len(kinds["phase"]) == 1
    assert kinds["phase"][0].data.tags["mlflow.parentRunId"] == kinds["study"][0].info.run_id
    keys = collections.Counter(run.data.tags["hpsearch.trial_key"] for run in kinds["trial"])
    expected = {f"scaled.grid/{t.number}" for t in trials}
    assert set(keys) == expected, (f"missing {sorted(expected - set(keys))}, extra {sorted(set(keys) - expected)}", logs)
    assert set(keys.values()) == {1}, keys
    assert {run.data.tags["mlflow.parentRunId"] for run in kinds["trial"]} == {kinds["phase"][0].info.run_id}
    assert not [run for run in kinds["trial"] if run.info.status == "RUNNING"]


@pytest.mark.postgres
@pytest.mark.parametrize("phase, points, trained", [({}, 24, 24), (HALVING, 72, 24 + 8 + 3)],
                         ids=["grid", "halving"])
def test_three_workers_cover_the_grid_exactly_once(pg_database, tmp_path, phase, points, trained):
    spec = spec_file(tmp_path, phase)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workers = start_workers(spec, pg_database, tracking, 3)
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [err for _, err in outputs]
    trials = _trials(pg_database)
    assert_exactly_once(trials, points)
    assert len(trials) == points
    assert all("SECRET" not in err and "Traceback" not in err for _, err in outputs)
    # every trial was trained by exactly one of the workers; halving's levels were each cut once
    lines = [line for _, err in outputs for line in err.splitlines() if line.startswith("[grid]")]
    assert sum(" trial " in line for line in lines) == trained, lines
    cuts = [line for line in lines if "not promoted" in line]
    assert len(cuts) == (2 if phase else 0), cuts
    assert_tracking(tracking, trials, [err for _, err in outputs])


@pytest.mark.postgres
def test_a_killed_worker_s_point_is_retried_exactly_once(pg_database, tmp_path, freeze_mid_trial, gate):
    # trials after the second wait; a grace period no test outlasts: the survivor reaps the victim's trial by its
    # pid (the two share this host), never by an old beat
    spec = gated_study(tmp_path, "scaled", free=2, grid=GRID, tracking=True, grace_period=3600)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workers = start_workers(spec, pg_database, tracking, 2)
    victim, survivor = workers

    gate.watch(*workers)
    while len([t for t in _trials(pg_database) if t.state == optuna.trial.TrialState.COMPLETE]) < 2:
        assert victim.poll() is None and survivor.poll() is None, "a worker ended before the kill"
    # the victim is frozen inside a held trial, then killed
    killed = freeze_mid_trial(victim, lambda: [t for t in _trials(pg_database)
                                               if t.state == optuna.trial.TrialState.RUNNING])
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    gate.open()
    _, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    trials = _trials(pg_database)
    assert_exactly_once(trials, 24)
    dead = trials[killed.number]
    assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs["failure"] == "worker died"
    same_point = [t for t in trials if t.user_attrs["point"] == killed.user_attrs["point"]]
    assert [t.state for t in same_point] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 25  # 24 points and the one retry
    assert_tracking(tracking, trials)


def test_run_with_local_workers_on_sqlite(tmp_path, monkeypatch):
    """`run --workers 2` on SQLite: no lock errors, exactly once."""
    spec = spec_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'scaled.db'}"
    done = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(spec), "--workers", "2", "--storage",
                           storage, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "locked" not in done.stderr
    trials = _trials(storage)
    assert_exactly_once(trials, 24)
    assert len(trials) == 24
    # one view of the progress, the parent's, read from the storage: no worker's own counter, no line going back,
    # the last line what the summary says; a fresh study is not "resuming"
    lines = done.stderr.splitlines()
    assert not [line for line in lines if re.search(r"\] \d+/\d+ trial \d+ ", line) or "resuming" in line], lines
    shown = [line for line in lines if line.startswith("[grid] ") and re.match(r"\[grid\] \d+/24: ", line)]
    counts = [int(line.split()[1].split("/")[0]) for line in shown]
    assert counts == sorted(counts), shown
    summary = json.loads(done.stdout)["phases"][0]
    assert shown[-1].startswith(f"[grid] 24/24: {summary['complete']} complete, ") and ", 0 running" in shown[-1]


def test_each_local_worker_trains_on_its_own_gpu_with_the_threads_it_was_given(tmp_path, monkeypatch):
    """`run --workers 2 --gpus 1,0 --threads 1`: each worker process (only a process shows what it started with)
    sees its own CUDA_VISIBLE_DEVICES and thread counts, and each trial's line and record name its GPU. The GPUs are
    only declared: nothing here needs one."""
    (tmp_path / "records_its_share.py").write_text(RECORDS_ITS_SHARE)
    (tmp_path / "shares").mkdir()
    spec = write_spec(tmp_path, "placed", model={"backend": "records_its_share:train"}, tracking={"enabled": False},
                      objective={"metric": "val_acc", "direction": "maximize"},
                      phases=[{"name": "grid", "sampler": "grid", "grid": {"x": list(range(6))}}])
    storage = f"sqlite:///{tmp_path / 'placed.db'}"
    done = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(spec), "--workers", "2", "--gpus", "1,0",
                           "--threads", "1", "--storage", storage], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "workers: 1 GPU 1, 1 thread; 2 GPU 0, 1 thread" in done.stderr.splitlines()
    shares = [json.loads(path.read_text()) for path in (tmp_path / "shares").glob("*.json")]
    assert sorted(share["CUDA_VISIBLE_DEVICES"] for share in shares) == ["0", "1"]
    assert all(share["OMP_NUM_THREADS"] == share["MKL_NUM_THREADS"] == "1" for share in shares)
    assert all(share["blas"] and set(share["blas"]) == {1} for share in shares)
    trials = study_trials(storage, "placed.grid")
    assert_exactly_once(trials, 6)
    assert {t.user_attrs["device"] for t in trials} == {"cuda:0", "cuda:1"}

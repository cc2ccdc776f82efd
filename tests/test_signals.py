"""Signals and dying helpers: SIGINT/SIGTERM at any moment, to one process or to `run --workers`, and a tracking
process killed mid-study. Every wait is on a storage state or a process's exit, never on a clock."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import (TINY_STUDY, Gate, alive, assert_exactly_once, gated_study, study_trials, wait_until,
                            write_spec)

RUNNING, COMPLETE, FAIL = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE,
                           optuna.trial.TrialState.FAIL)


def spec_file(tmp_path: Path, points: int = 6, tracking: bool = False, **defaults) -> Path:
    return write_spec(tmp_path, "sig", tracking={"enabled": tracking},
                      defaults={**TINY_STUDY["defaults"], "hidden_size": 64, "num_iters": 3000, **defaults},
                      heartbeat={"interval": 1, "grace_period": 30},
                      phases=[{"name": "grid", "sampler": "grid",
                               "grid": {"learning_rate": [round(0.01 * (k + 1), 2) for k in range(points)]}}])


def hpsearch(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpsearch", *args], text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    return study_trials(storage, "sig.grid")


def assert_resumed_exactly_once(storage: str, points: int) -> None:
    trials = trials_of(storage)
    assert_exactly_once(trials, points)
    # nothing was reaped as dead, so no retry was used up by a signal
    assert {t.user_attrs.get("failure") for t in trials if t.state == FAIL} <= {"interrupted"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_at_any_moment_ends_the_run_cleanly_and_resume_loses_nothing(tmp_path, sig):
    """Signals sent at moments spread over a study's life once its points are queued: inside a trial's epochs, in
    the bookkeeping of its epochs and its end, between trials, in the wait inside a trial. The last point waits at a
    gate until the resume, so the signal always lands before the study ends and the run always stops with exit 130:
    one outcome, checked whole. A signal at the study's end: the next test."""
    rng = random.Random(sig)
    for attempt in range(4):
        folder = tmp_path / f"a{attempt}"
        folder.mkdir()
        spec = gated_study(folder, "sig", points=6, free=5, tracking=attempt % 2 == 1, epochs=5)
        storage = f"sqlite:///{folder / 'sig.db'}"
        args = ["run", str(spec), "--storage", storage, "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"]
        gate = Gate(folder)
        try:
            proc = hpsearch(*args, cwd=folder)
            gate.watch(proc)
            # the signal lands after 0..4 finished trials, at a random point of the next one's life
            after = rng.randrange(5)
            wait_until(lambda: (trials := trials_of(storage)) and sum(t.state == COMPLETE for t in trials) >= after,
                       proc)
            for _ in range(rng.randrange(20000)):  # a spin, not a sleep: a varying moment, not a timing assumption
                pass
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 130, err
            assert "Traceback" not in err and "Exception ignored" not in err and "KeyboardInterrupt" not in err, err
            trials = trials_of(storage)
            assert not [t for t in trials if t.state == RUNNING], "a trial was left RUNNING"
            stopped = [t.number for t in trials if t.state == FAIL]
            assert [t.user_attrs.get("failure") for t in trials if t.state == FAIL] == ["interrupted"] * len(stopped)
            # one line, and what it says is what the storage holds
            assert err.count("Interrupted") == 1, err
            said = re.findall(r"trial (\d+) of phase 'grid'", err[err.index("Interrupted"):])
            assert [int(n) for n in said] == stopped, err
            assert ("between trials; nothing was lost" in err) == (not stopped), err
            gate.open()
            resumed = hpsearch(*args, cwd=folder)
            gate.watch(resumed)
            _, err = resumed.communicate(timeout=300)
            assert resumed.returncode == 0, err
            assert "heartbeat lost" not in err and "worker died" not in err
            assert_resumed_exactly_once(storage, 6)
        finally:
            gate.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_study_ends_keeps_every_trial_and_the_next_run_scores_the_winner(tmp_path, sig, gate):
    """The study's end: every trial finished, the winner being retrained for its result (the trainable's seventh
    call, which waits at the gate until the signal has landed). Nothing is lost and no trial runs again."""
    spec = gated_study(tmp_path, "sig", points=6, free=6, tracking=True)
    storage = f"sqlite:///{tmp_path / 'sig.db'}"
    args = ["run", str(spec), "--storage", storage, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    proc = hpsearch(*args, cwd=tmp_path)
    gate.watch(proc)
    calls = tmp_path / "calls"
    wait_until(lambda: calls.exists() and calls.stat().st_size == 7, proc)  # the winner's retraining has begun
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and err.count("Interrupted") == 1, err
    assert "between trials; nothing was lost" in err, err
    trials = trials_of(storage)
    assert [t.state for t in trials] == [COMPLETE] * 6
    gate.open()
    resumed = hpsearch(*args, "--json", cwd=tmp_path)
    gate.watch(resumed)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["complete"] and summary["best"]["value"] == 0.06 and trials_of(storage) == trials
    assert calls.stat().st_size == 8  # the resume trained the winner once, and nothing else


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_signal_to_run_workers_stops_every_worker_and_is_reported(tmp_path, sig, to_group):
    spec = gated_study(tmp_path, "sig", points=8)
    storage = f"sqlite:///{tmp_path / 'sig.db'}"
    args = ["run", str(spec), "--storage", storage, "--workers", "2"]
    proc = hpsearch(*args, start_new_session=True)
    try:
        # both workers are inside a trial, and stay there: the gate is closed
        wait_until(lambda: len({(t.user_attrs.get("hpsearch:owner") or {}).get("pid")
                                for t in trials_of(storage) if t.state == RUNNING}) == 2, proc, give_up_after=600)
        workers = _children(proc.pid)
        assert len(workers) == 2
        if to_group:
            os.killpg(proc.pid, sig)  # Ctrl-C in a terminal
        else:
            proc.send_signal(sig)  # `kill PID`, docker stop
        _, err = proc.communicate(timeout=120)
    finally:  # whatever failed: no worker is left waiting at the gate
        (tmp_path / "open").touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert not [pid for pid in workers if alive(pid)], "a worker outlived the run"
    trials = trials_of(storage)
    assert not [t for t in trials if t.state == RUNNING]
    stopped = [t for t in trials if t.state == FAIL]
    assert [t.user_attrs.get("failure") for t in stopped] == ["interrupted"] * 2
    # one line for the run, from the parent, naming the two trials the workers were in
    (line,) = [line for line in err.splitlines() if "Interrupted" in line]
    assert line.startswith("Interrupted: 2 workers stopped; trial "), err
    assert sorted(int(n) for n in re.findall(r"trial (\d+) of phase 'grid'", line)) == sorted(
        t.number for t in stopped), err
    resumed = hpsearch("run", str(spec), "--storage", storage)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_resumed_exactly_once(storage, 8)


def test_a_dead_tracking_process_is_reported_once_and_the_study_ends_normally(tmp_path):
    spec = spec_file(tmp_path, points=6, tracking=True, num_iters=600)
    storage = f"sqlite:///{tmp_path / 'sig.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = hpsearch("run", str(spec), "--storage", storage, "--tracking-uri", tracking)
    wait_until(lambda: any(t.state == COMPLETE for t in trials_of(storage)), proc)

    def tracker() -> int | None:
        for pid in _children(proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                return pid
        return None

    os.kill(wait_until(tracker, proc), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert err.count("tracking process died") == 1, err
    assert_resumed_exactly_once(storage, 6)
    # the next look mends MLflow from the storage
    synced = subprocess.run([sys.executable, "-m", "hpsearch", "sync", str(spec), "--storage", storage,
                             "--tracking-uri", tracking], capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stderr
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("sig").experiment_id],
                              filter_string="tags.`hpsearch.kind` = 'trial'", max_results=100)
    assert sorted(r.data.tags["hpsearch.trial_key"] for r in runs) == sorted(
        f"sig.grid/{t.number}" for t in trials_of(storage))
    assert not [r for r in runs if r.info.status == "RUNNING"]


def _signal_mask(pid: int, field: str) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1], 16)


def test_the_tracking_process_is_deaf_to_ctrl_c_from_its_first_instruction(tmp_path, capfd):
    """Ctrl-C reaches the whole process group, the tracking process too, also while it still imports MLflow: it
    must neither die of it nor print a KeyboardInterrupt traceback, and it stops when the study tells it. A real
    tracking process is started (its start is what is tested), in this process: a study adds nothing here."""
    from hpsearch.spec.build import load_spec
    from hpsearch.tracking.process import MlflowTracker

    messages: list[str] = []
    tracker = MlflowTracker(load_spec(spec_file(tmp_path, tracking=True)), f"sqlite:///{tmp_path / 'mlflow.db'}",
                            echo=messages.append)
    tracker._start()
    try:
        pid = tracker._process.pid
        sigint = 1 << (signal.SIGINT - 1)
        # blocked from the exec on (ignored once it runs its loop): never the default KeyboardInterrupt
        assert (_signal_mask(pid, "SigBlk:") | _signal_mask(pid, "SigIgn:")) & sigint
        for _ in range(3):
            os.kill(pid, signal.SIGINT)
        assert tracker._process.is_alive()
    finally:
        tracker.close()
    assert not [m for m in messages if "died" in m], messages
    assert "KeyboardInterrupt" not in capfd.readouterr().err


def test_ctrl_c_while_the_workers_start_is_one_line_and_no_traceback(tmp_path):
    """SIGINT to the process group as soon as the workers exist, while their interpreters still start: each worker
    holds the signal until its handler is in place, so none prints a traceback, and the parent says it once."""
    spec = gated_study(tmp_path, "sig", points=4)
    storage = f"sqlite:///{tmp_path / 'sig.db'}"
    proc = hpsearch("run", str(spec), "--storage", storage, "--workers", "2", start_new_session=True)
    try:
        wait_until(lambda: len(_children(proc.pid)) == 2, proc, give_up_after=600)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        (tmp_path / "open").touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Fatal Python error" not in err, err
    assert [line for line in err.splitlines() if "Interrupted" in line] == [
        "Interrupted: 2 workers stopped between trials; nothing was lost. Rerun the same command to resume."], err
    assert not [t for t in trials_of(storage) if t.state in (RUNNING, FAIL)]

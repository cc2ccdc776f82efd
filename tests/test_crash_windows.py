"""Crash windows that once wedged or mixed a study, and sizes that once hung it: each guarantee, checked."""

from __future__ import annotations

import collections
import json

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from hpsearch.cli.app import app
from hpsearch.storage.records import StateTable
from tests.conftest import TINY_STUDY, write_spec

runner = CliRunner()
COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def two_phase_spec(tmp_path) -> str:
    return str(write_spec(tmp_path, "win", tracking={"enabled": False},
                          defaults={**TINY_STUDY["defaults"], "num_iters": 30},
                          phases=[{"name": "random", "sampler": "random", "n_trials": 4,
                                   "space": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.5,
                                                               "log": True}}},
                                  {"name": "grid", "sampler": "grid",
                                   "grid": {"from": "random", "top_k": 2, "points": 3}}]))


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result


def points_of(storage: str, study_name: str) -> collections.Counter:
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    return collections.Counter(t.user_attrs["point"] for t in trials if t.state in (COMPLETE, PRUNED))


@pytest.mark.parametrize("window", ["random", "grid"])
def test_a_phase_killed_while_being_created_is_completed_on_the_next_run(tmp_path, window):
    """The kill lands after the phase's Optuna study was created and before anything else was written."""
    spec = two_phase_spec(tmp_path)
    storage = f"sqlite:///{tmp_path / 'win.db'}"
    if window == "grid":
        assert invoke("run", spec, "--storage", storage, "--phase", "random").exit_code == 0
    optuna.create_study(study_name=f"win.{window}", storage=storage, direction="maximize")  # the half-created phase

    status = invoke("status", spec, "--storage", storage, "--json")
    assert status.exit_code == 0, status.output
    result = invoke("run", spec, "--storage", storage)
    assert result.exit_code == 0, result.output
    assert "changed since it started" not in result.output
    layout = StateTable(storage).get("win", "layout")
    assert layout["phases"][window]["study"] == f"win.{window}"  # the empty study was adopted, not a v2 beside it
    grid_points = len(layout["phases"]["grid"]["grid"]["learning_rate"])
    assert points_of(storage, "win.grid") == {p: 1 for p in range(grid_points)}
    assert points_of(storage, "win.random") == {p: 1 for p in range(4)}


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler sees it."""


def test_force_new_phase_killed_mid_way_never_mixes_contexts(tmp_path, monkeypatch):
    spec = two_phase_spec(tmp_path)
    storage = f"sqlite:///{tmp_path / 'win.db'}"
    assert invoke("run", spec, "--storage", storage).exit_code == 0
    winner = invoke("best", spec, "--storage", storage, "--format", "json").output

    # killed at every write of the restart: before the new layout, and after it (before any trial of it)
    writes = []
    real_put_many = StateTable.put_many

    def put_many(self, study, values):
        writes.append(sorted(values))
        if "layout" in values and len(writes) == 1:
            raise Killed()
        return real_put_many(self, study, values)

    monkeypatch.setattr(StateTable, "put_many", put_many)
    with pytest.raises(Killed):
        runner.invoke(app, ["run", spec, "--storage", storage, "--set", "defaults.num_iters=40",
                            "--force-new-phase"], catch_exceptions=False)
    monkeypatch.setattr(StateTable, "put_many", real_put_many)

    # nothing changed: the old spec is still the study's and complete, the new one is still refused
    again = invoke("run", spec, "--storage", storage)
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    assert invoke("best", spec, "--storage", storage, "--format", "json").output == winner
    refused = invoke("run", spec, "--storage", storage, "--set", "defaults.num_iters=40")
    assert refused.exit_code == 2 and "defaults.num_iters: 30 -> 40" in refused.output

    # the restart done whole: the winner's spec trains to the value claimed for it
    forced = invoke("run", spec, "--storage", storage, "--set", "defaults.num_iters=40", "--force-new-phase")
    assert forced.exit_code == 0, forced.output
    best_file = tmp_path / "best.yaml"
    assert invoke("best", spec, "--storage", storage, "--set", "defaults.num_iters=40",
                  "--output", str(best_file)).exit_code == 0
    claimed = yaml.safe_load(best_file.read_text())
    assert claimed["defaults"]["num_iters"] == 40
    trained = invoke("train", str(best_file), "--json")
    assert trained.exit_code == 0, trained.output
    status = json.loads(invoke("status", spec, "--storage", storage, "--set", "defaults.num_iters=40",
                               "--json").output)
    assert json.loads(trained.output)["val_acc"] == status["best"]["value"]
    assert status["phases"][0]["study_name"] == "win.random.v2"


HUGE_GRID = "phases.1.grid={learning_rate: [%s], reg: [%s], std: [%s], hidden_size: [%s]}" % (
    ", ".join(str(0.001 * (k + 1)) for k in range(100)), ", ".join(str(1e-5 * k) for k in range(100)),
    ", ".join(str(1e-4 * (k + 1)) for k in range(10)), ", ".join(str(k + 1) for k in range(100)))  # 10^7 points


def test_absurd_sizes_are_refused_at_once_with_one_line(tmp_path):
    spec = two_phase_spec(tmp_path)
    storage = f"sqlite:///{tmp_path / 'win.db'}"
    for override in ("phases.0.n_trials=1000000000", HUGE_GRID):
        for command in (["run", spec, "--storage", storage], ["plan", spec]):
            result = invoke(*command, "--set", override)
            assert result.exit_code == 2, result.output
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "at most 1,000,000" in lines[0], result.stderr


@pytest.mark.parametrize("overrides", [
    ["phases.0.n_trials=1000000000"], [HUGE_GRID],
    ["data.num_train=10"],  # batch_size 50 is larger than the training split
    ["data.dataset=arrays", "data.path=missing.npz"],  # data that do not load
], ids=["n_trials", "grid", "batch_size", "data"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_refused_run_creates_nothing(tmp_path, monkeypatch, overrides, workers):
    """Neither the default storage's folder, nor its database, nor its locks: the checks come before them."""
    spec = two_phase_spec(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = invoke("run", spec, "--workers", workers, *(arg for item in overrides for arg in ("--set", item)))
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["win.yaml"]


def one_error_line(result) -> str:
    """The error line of a refused command: exit code 2, one line starting with 'error:', the last one."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def test_a_derived_grid_too_big_is_refused_before_its_phase_is_written_and_again_on_the_rerun(tmp_path):
    space = {name: {"type": "float", "low": 1e-4, "high": 0.5, "log": True} for name in ("learning_rate", "reg", "std")}
    spec = str(write_spec(tmp_path, "win", tracking={"enabled": False}, phases=[
        {"name": "random", "sampler": "random", "n_trials": 4, "space": space},
        {"name": "grid", "sampler": "grid", "grid": {"from": "random", "top_k": 3, "points": 101}}]))
    storage = f"sqlite:///{tmp_path / 'win.db'}"
    for _ in range(2):  # the rerun: refused alike, the earlier phase not run again
        line = one_error_line(invoke("run", spec, "--storage", storage))
        assert line == (f"error: {spec}: phase 'grid': the grid derived from the top 3 trials of 'random' has "
                        "1,030,301 points; a phase runs at most 1,000,000. Lower phases[1].grid.points (101 values "
                        "per numeric parameter).")
        assert optuna.get_all_study_names(storage) == ["win.random"]
        assert points_of(storage, "win.random") == {p: 1 for p in range(4)}
        assert list(StateTable(storage).get("win", "layout")["phases"]) == ["random"]


def test_plan_refuses_points_past_the_maximum_at_once_and_bounds_a_derived_grid_by_it(tmp_path):
    space = {name: {"type": "float", "low": 1e-4, "high": 0.5, "log": True} for name in ("learning_rate", "reg", "std")}
    phases = [{"name": "random", "sampler": "random", "n_trials": 4, "space": space},
              {"name": "grid", "sampler": "grid", "grid": {"from": "random", "top_k": 3, "points": 1e9}}]
    spec = str(write_spec(tmp_path, "win", tracking={"enabled": False}, phases=phases))
    line = one_error_line(invoke("plan", spec))
    assert line == (f"error: {spec}: phases[1].grid.points must be less than or equal to 1000000. "
                    "Got 1000000000.0 instead.")

    phases[1]["grid"]["points"] = 200  # 8,000,000 points at most: a run refuses more than 1,000,000
    spec = str(write_spec(tmp_path, "win", tracking={"enabled": False}, phases=phases))
    result = invoke("plan", spec, "--json")
    assert result.exit_code == 0, result.output
    grid = json.loads(result.stdout)["phases"][1]
    assert grid["trials"] == 1_000_000 and grid["trials_upper_bound"] and grid["estimate_from_sample"]


def test_a_big_grid_is_enqueued_in_batches_and_a_budget_of_one_trial_runs_one(tmp_path):
    spec = two_phase_spec(tmp_path)
    storage = f"sqlite:///{tmp_path / 'win.db'}"
    grid = "phases.1={name: grid, sampler: grid, grid: {learning_rate: [%s], reg: [%s]}}" % (
        ", ".join(str(round(0.001 * (k + 1), 4)) for k in range(40)), ", ".join(str(1e-5 * k) for k in range(50)))
    result = invoke("run", spec, "--storage", storage, "--set", grid, "--phase", "grid", "--max-trials", "1")
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="win.grid", storage=storage).get_trials(deepcopy=False)
    assert len(trials) == 2000
    assert collections.Counter(t.state.name for t in trials) == {"WAITING": 1999, "COMPLETE": 1}
    assert sorted(t.user_attrs["point"] for t in trials) == list(range(2000))
    # the enqueued points carry their params and distributions, as Optuna's own trials do
    done = next(t for t in trials if t.state == COMPLETE)
    assert set(done.params) == {"learning_rate", "reg"} and set(done.distributions) == {"learning_rate", "reg"}

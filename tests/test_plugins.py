"""The user's own trainable: found beside the spec (or refused elsewhere), run under the same contract as the built-in
backends, its errors, NaNs and missing metrics handled as docs/your-own-model.md says; and the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from typer.testing import CliRunner

import hpsearch
from hpsearch.backends import load_trainable, registered
from hpsearch.backends import numpy_twolayer
from hpsearch.cli.app import app
from hpsearch.errors import SpecError
from hpsearch.spec.build import load_spec
from tests.conftest import TINY_STUDY, write_spec

runner = CliRunner()

# A nearest-centroid classifier: no training loop, deterministic, milliseconds. Its error is the objective.
USER_CODE = '''
import math
import numpy as np


def train(config, data, *, seed, on_epoch):
    if config.get("explode"):
        raise RuntimeError("boom: bad config " + str(config["explode"]))
    if config.get("exit"):
        raise SystemExit(3)
    classes = range(data.num_classes)
    centroids = np.stack([data.X_train[data.y_train == c].mean(axis=0) for c in classes]) * config["scale"]
    for epoch in range(2):
        on_epoch(epoch, {"val_error": 0.5 / (epoch + 1)})
    predicted = ((data.X_val[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    error = float((predicted != data.y_val).mean())
    if config.get("nan"):
        error = math.nan
    return {"val_error": error, "test_rows": 0 if data.X_test is None else len(data.X_test)}
'''


def user_study(tmp_path: Path, grid: dict, **changes) -> tuple[Path, str]:
    """A spec beside a fresh module (a new name each time: modules are imported once per process)."""
    module = f"centroids_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(USER_CODE)
    settings = {"model": {"backend": f"{module}:train"}, "defaults": {"scale": 1.0},
                "objective": {"metric": "val_error", "direction": "minimize"}, "tracking": {"enabled": False},
                "storage": f"sqlite:///{tmp_path / 'study.db'}",
                "phases": [{"name": "grid", "sampler": "grid", "grid": grid, "max_retries": 0}]}
    spec = write_spec(tmp_path, **{**settings, **changes})
    return spec, module


def stored_trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny.grid", storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()


def test_a_user_function_beside_the_spec_is_tuned_and_its_failures_kept(tmp_path):
    spec, module = user_study(tmp_path, {"scale": [1.0, 3.0], "explode": [0, 1]})
    result = runner.invoke(app, ["run", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    trials = stored_trials(tmp_path)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(complete) == 2 and len(failed) == 2  # every point decided once; a failing point does not stop a study
    assert {t.user_attrs["failure"] for t in failed} == {"RuntimeError: boom: bad config 1"}
    for t in failed:
        assert 'raise RuntimeError("boom: bad config "' in t.user_attrs["traceback"]
        assert f"{module}.py" in t.user_attrs["traceback"]
    # the trials never see the test split; their history is what they passed to on_epoch
    assert [t.user_attrs["metrics"]["test_rows"] for t in complete] == [0, 0]
    assert [t.user_attrs["epoch_history"]["val_error"] for t in complete] == [[0.5, 0.25]] * 2
    best = summary["best"]
    assert best["metric"] == "val_error" and best["value"] == min(t.value for t in complete)
    assert best["test_metric"] == "test_error" and "test_error" not in best  # no evaluate: no test score


def test_a_trainable_that_reports_no_objective_stops_the_study_in_one_line(tmp_path):
    spec, _ = user_study(tmp_path, {"scale": [1.0, 2.0]}, objective={"metric": "val_acc", "direction": "maximize"})
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (f"error: {spec}: the trainable reported no metric 'val_acc' (it reported: val_error, "
                         "test_rows); set objective.metric to one of the metrics it reports.")
    # the first trial is stored as failed; the other point is still queued, untouched
    assert [t.state.name for t in stored_trials(tmp_path)] == ["FAIL", "WAITING"]


def test_a_non_finite_objective_is_pruned_as_diverged(tmp_path):
    spec, _ = user_study(tmp_path, {"scale": [1.0], "nan": [0, 1]})
    assert runner.invoke(app, ["run", str(spec)]).exit_code == 0
    by_nan = {t.params["nan"]: t for t in stored_trials(tmp_path)}
    assert by_nan[0].state == optuna.trial.TrialState.COMPLETE
    assert by_nan[1].state == optuna.trial.TrialState.PRUNED
    assert by_nan[1].user_attrs["failure"] == "diverged: val_error is nan"


def test_sys_exit_in_a_trainable_fails_its_trial_and_the_study_goes_on(tmp_path):
    spec, _ = user_study(tmp_path, {"scale": [1.0], "exit": [0, 1]})
    assert runner.invoke(app, ["run", str(spec)]).exit_code == 0
    by_exit = {t.params["exit"]: t for t in stored_trials(tmp_path)}
    assert by_exit[0].state == optuna.trial.TrialState.COMPLETE
    assert (by_exit[1].state, by_exit[1].user_attrs["failure"]) == (optuna.trial.TrialState.FAIL, "SystemExit: 3")


def test_an_undeclared_metric_needs_a_direction(tmp_path):
    spec, _ = user_study(tmp_path, {"scale": [1.0]}, objective={"metric": "val_error"})
    with pytest.raises(SpecError, match=r"objective.direction is required \('maximize' or 'minimize'\): the "
                                        r"trainable centroids_\w+:train does not declare which way 'val_error'"):
        load_spec(spec)


def test_a_module_outside_installed_packages_and_the_spec_folder_needs_allow_import(tmp_path):
    code, specs = tmp_path / "code", tmp_path / "specs"
    code.mkdir(), specs.mkdir()
    (code / "outside_centroids.py").write_text(USER_CODE)
    spec = write_spec(specs, model={"backend": "outside_centroids:train"}, defaults={"scale": 1.0},
                      objective={"metric": "val_error", "direction": "minimize"})
    env = {"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"}
    refused = subprocess.run([sys.executable, "-m", "hpsearch", "train", str(spec)], cwd=code, env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: {spec}: model.backend 'outside_centroids:train': module 'outside_centroids' is at "
        f"{code / 'outside_centroids.py'}, outside the installed packages and the spec's folder; importing it runs "
        "its code, so pass --allow-import (or set HPSEARCH_ALLOW_IMPORT=1) if you trust it."]
    allowed = subprocess.run([sys.executable, "-m", "hpsearch", "train", str(spec), "--allow-import", "--json"],
                             cwd=code, env=env, capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
    assert set(json.loads(allowed.stdout)) >= {"val_error", "test_rows"}


def test_a_missing_module_or_attribute_is_one_line(tmp_path):
    spec = write_spec(tmp_path, model={"backend": "no_such_module_here:train"})
    with pytest.raises(SpecError, match=r"model.backend 'no_such_module_here:train': no module "
                                        r"'no_such_module_here' in the spec's folder .* or the installed packages.$"):
        load_spec(spec)
    spec = write_spec(tmp_path, model={"backend": "hpsearch.backends.numpy_twolayer:nothing"})
    with pytest.raises(SpecError, match=r"hpsearch.backends.numpy_twolayer has no attribute 'nothing'.$"):
        load_spec(spec)
    spec = write_spec(tmp_path, model={"backend": "jax"})
    with pytest.raises(SpecError, match=r"model.backend must be one of numpy, torch, or 'package.module:function'. "
                                        r"Got 'jax' instead.$"):
        load_spec(spec)


def test_a_config_model_validates_defaults_and_declared_metrics_give_the_direction(tmp_path):
    module = f"declared_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text('''
from pydantic import BaseModel, ConfigDict, Field
import hpsearch


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, gt=0)


@hpsearch.trainable(metrics={"val_error": "minimize"}, config=Config)
def train(config, data, *, seed, on_epoch):
    return {"val_error": 1 / (1 + config["scale"])}
''')
    spec = write_spec(tmp_path, model={"backend": f"{module}:train"}, defaults={}, objective={"metric": "val_error"},
                      phases=[])
    assert load_spec(spec).objective.direction == "minimize"
    with pytest.raises(SpecError, match=rf"defaults.colour is not a parameter of the {module}:train backend; it "
                                        r"takes scale.$"):
        load_spec(spec, ["defaults.colour=red"])
    with pytest.raises(SpecError, match=r"defaults.scale must be greater than 0. Got -1 instead.$"):
        load_spec(spec, ["defaults.scale=-1"])
    with pytest.raises(SpecError, match=r"objective.metric must be one of val_error"):
        load_spec(spec, ["objective.metric=val_acc"])


def test_the_built_in_backends_are_registered_plug_ins(tmp_path):
    assert registered()["numpy"] == "hpsearch.backends.numpy_twolayer:TRAINABLE"
    assert registered()["torch"] == "hpsearch.backends.torch_mlp:TRAINABLE"
    assert load_trainable("numpy").train is numpy_twolayer.train
    by_name = runner.invoke(app, ["train", str(write_spec(tmp_path)), "--json"])
    by_reference = runner.invoke(app, ["train", str(write_spec(tmp_path, model={
        "backend": "hpsearch.backends.numpy_twolayer:TRAINABLE"})), "--json"])
    assert by_name.exit_code == by_reference.exit_code == 0
    assert json.loads(by_name.stdout)["val_acc"] == json.loads(by_reference.stdout)["val_acc"]


def test_the_python_api_runs_a_spec_given_as_a_dict_and_resumes_it(tmp_path):
    spec = {**TINY_STUDY, "storage": f"sqlite:///{tmp_path / 'api.db'}", "tracking": {"enabled": False}}
    lines: list[str] = []
    result = hpsearch.run(spec, echo=lines.append)
    assert result.complete and result.metric == "val_acc" and result.direction == "maximize"
    assert len(result.trials) == 6 + len([t for t in result.trials if t["phase"] == "grid"])
    assert result.best_value == max(t["value"] for t in result.trials if t["value"] is not None)
    assert set(result.test_scores) == {"test_acc", "test_loss"} and result.test_value == result.test_scores["test_acc"]
    assert result.best_config == {**result.best_config, **result.best_params}
    assert any(line.startswith("[random] 1/6 trial") for line in lines)
    again = hpsearch.run(spec, echo=lines.append, overrides=["tracking.enabled=false"])
    assert again.complete and again.trials == result.trials
    assert lines[-1] == "Study 'tiny' is already complete: nothing to run."
    assert hpsearch.status(spec).best_value == result.best_value


def test_the_best_spec_of_a_user_trainable_trains_from_any_folder(tmp_path):
    spec, module = user_study(tmp_path, {"scale": [1.0, 3.0]})
    assert runner.invoke(app, ["run", str(spec)]).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    best = elsewhere / "best.yaml"
    assert runner.invoke(app, ["best", str(spec), "--format", "yaml", "--output", str(best)]).exit_code == 0
    assert yaml.safe_load(best.read_text())["model"] == {"backend": f"{module}:train", "path": str(tmp_path)}
    trained = runner.invoke(app, ["train", str(best), "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["val_error"] == min(t.value for t in stored_trials(tmp_path))


def test_mlflow_gets_a_user_trainables_metrics_by_name_and_its_traceback(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    spec, _ = user_study(tmp_path, {"scale": [1.0], "explode": [0, 1]}, tracking={"enabled": True})
    assert runner.invoke(app, ["run", str(spec)]).exit_code == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    runs = client.search_runs([experiment.experiment_id])
    trials = {run.data.tags["state"]: run for run in runs if run.data.tags.get("hpsearch.kind") == "trial"}
    assert set(trials) == {"COMPLETE", "FAIL"}
    assert trials["COMPLETE"].data.metrics["final_val_error"] == min(t.value for t in stored_trials(tmp_path)
                                                                      if t.value is not None)
    assert [m.value for m in client.get_metric_history(trials["COMPLETE"].info.run_id, "val_error")] == [0.5, 0.25]
    assert trials["FAIL"].data.tags["failure"] == "RuntimeError: boom: bad config 1"
    traceback = client.download_artifacts(trials["FAIL"].info.run_id, "traceback.txt", str(tmp_path))
    assert 'raise RuntimeError("boom: bad config "' in Path(traceback).read_text()
    (study_run,) = [run for run in runs if run.data.tags.get("hpsearch.kind") == "study"]
    assert "best_val_error_final" in study_run.data.metrics


ON_A_GPU = '''
import hpsearch


def train(config, data, *, seed, on_epoch):
    return hpsearch.TrainResult(metrics={"val_error": config["scale"]}, device="cuda:" + str(int(config["scale"])))
'''


def test_the_device_a_trainable_says_it_trained_on_is_in_its_trial_line_and_the_export(tmp_path):
    module = f"on_a_gpu_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(ON_A_GPU)
    spec, _ = user_study(tmp_path, {"scale": [1.0, 3.0]}, model={"backend": f"{module}:train"})
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("[grid]")]
    assert [line.split(" val_error")[0] for line in lines] == ["[grid] 1/2 trial 0 on cuda:1",
                                                              "[grid] 2/2 trial 1 on cuda:3"]
    assert runner.invoke(app, ["export", str(spec), "--output", str(tmp_path / "t.json")]).exit_code == 0
    rows = json.loads((tmp_path / "t.json").read_text())
    assert sorted(row["device"] for row in rows) == ["cuda:1", "cuda:3"]


RIDGE = '''
import numpy as np
import hpsearch


def evaluate(model, X, y):
    return {"rmse": float(np.sqrt(np.mean((X @ model - y) ** 2)))}


@hpsearch.trainable(metrics={"val_rmse": "minimize"}, evaluate=evaluate, tasks=("regression",))
def train(config, data, *, seed, on_epoch):
    X, y = data.X_train, data.y_train
    weights = np.linalg.solve(X.T @ X + config["alpha"] * np.eye(X.shape[1]), X.T @ y)
    return hpsearch.TrainResult(metrics={"val_rmse": evaluate(weights, data.X_val, data.y_val)["rmse"]},
                                model=weights)
'''


def test_a_regression_on_a_csv_file_from_the_python_api(tmp_path):
    module = f"ridge_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(RIDGE)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + 0.1 * rng.standard_normal(200)
    rows = ["a,b,c,target", *(",".join(f"{v:.6f}" for v in (*x, t)) for x, t in zip(X, y))]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    spec = {"name": "ridge", "data": {"dataset": "csv", "path": "data.csv", "target": "target", "num_val": 40,
                                      "num_test": 40},
            "model": {"backend": f"{module}:train"}, "defaults": {"alpha": 1.0},
            "objective": {"metric": "val_rmse"}, "storage": f"sqlite:///{tmp_path / 'ridge.db'}",
            "tracking": {"enabled": False},
            "phases": [{"name": "grid", "sampler": "grid", "grid": {"alpha": [0.001, 100.0, 10000.0]}}]}
    result = hpsearch.run(spec, base_dir=tmp_path, echo=lambda line: None)
    assert result.complete and result.direction == "minimize"
    values = {t["params"]["alpha"]: t["value"] for t in result.trials}
    assert result.best_params == {"alpha": 0.001} and result.best_value == min(values.values())
    assert values[0.001] < 0.2 < values[10000.0]  # the noise is 0.1; heavy shrinkage misses the signal
    assert set(result.test_scores) == {"test_rmse"} and result.test_scores["test_rmse"] < 0.2
    # the built-in classifiers refuse these targets in one line
    with pytest.raises(SpecError, match=r"the numpy trainable learns classification targets; the dataset .* holds "
                                        r"regression targets"):
        hpsearch.run({**spec, "model": {"backend": "numpy"}, "defaults": {}, "objective": {"metric": "val_acc"},
                      "phases": [{"name": "grid", "sampler": "grid", "grid": {"hidden_size": [4]}}]},
                     base_dir=tmp_path, echo=lambda line: None)


def test_the_module_imported_is_the_one_checked_not_a_copy_in_the_working_directory(tmp_path):
    specs, elsewhere = tmp_path / "specs", tmp_path / "elsewhere"
    specs.mkdir(), elsewhere.mkdir()
    (specs / "shadowed_model.py").write_text(USER_CODE)
    (elsewhere / "shadowed_model.py").write_text("raise SystemExit('the copy in the working directory ran')\n")
    # a dist-info in the working directory tries to take over the name 'numpy'
    (elsewhere / "evil-1.0.dist-info").mkdir()
    (elsewhere / "evil-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    (elsewhere / "evil-1.0.dist-info" / "entry_points.txt").write_text(
        "[hpsearch.backends]\nnumpy = shadowed_model:train\n")
    spec = write_spec(specs, model={"backend": "shadowed_model:train"}, defaults={"scale": 1.0},
                      objective={"metric": "val_error", "direction": "minimize"})
    # `python -m` puts the working directory first on sys.path
    result = subprocess.run([sys.executable, "-m", "hpsearch", "train", str(spec), "--json"], cwd=elsewhere,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "val_error" in json.loads(result.stdout)
    numpy_spec = write_spec(specs, name="builtin")
    result = subprocess.run([sys.executable, "-m", "hpsearch", "train", str(numpy_spec), "--json"], cwd=elsewhere,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "val_acc" in json.loads(result.stdout)  # the built-in backend, not the working directory's module


def test_two_specs_with_same_named_modules_in_one_process_are_not_mixed_up(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    name = f"samename_{uuid.uuid4().hex[:8]}"
    for folder in (first, second):
        (folder / f"{name}.py").write_text(USER_CODE)
    common = {"model": {"backend": f"{name}:train"}, "defaults": {"scale": 1.0},
              "objective": {"metric": "val_error", "direction": "minimize"}}
    load_spec(write_spec(first, **common))
    with pytest.raises(SpecError, match=rf"this process already imported a module '{name}' from {first}"):
        load_spec(write_spec(second, **common))


FAILING_END = '''
import os

import numpy as np
import hpsearch


def evaluate(model, X, y):
    if os.path.exists(os.path.join(os.path.dirname(__file__), "broken")):
        raise ValueError("evaluate is broken")
    return {"score": 0.75}


@hpsearch.trainable(metrics={"val_score": "maximize"}, evaluate=evaluate)
def train(config, data, *, seed, on_epoch):
    if config["kind"] == "text":
        return {"val_score": "high"}
    return hpsearch.TrainResult(metrics={"val_score": np.float32(config["scale"])}, model="a model")
'''


def test_numpy_metrics_count_text_fails_the_trial_and_a_failing_evaluate_still_ends_the_study(tmp_path):
    module = f"failing_end_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(FAILING_END)
    (tmp_path / "broken").touch()
    spec = write_spec(tmp_path, model={"backend": f"{module}:train"}, defaults={"scale": 1.0, "kind": "number"},
                      objective={"metric": "val_score"}, tracking={"enabled": False},
                      storage=f"sqlite:///{tmp_path / 'study.db'}",
                      phases=[{"name": "grid", "sampler": "grid", "max_retries": 0,
                               "grid": {"scale": [0.5, 2.0], "kind": ["number", "text"]}}])
    result = runner.invoke(app, ["run", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["complete"] and summary["best"]["value"] == 2.0 and "test_score" not in summary["best"]
    assert ("warning: scoring the winner on the test split failed: ValueError: evaluate is broken; the study ends "
            "without the winner's test score.") in result.stderr
    failures = {t.params["scale"]: t.user_attrs.get("failure") for t in stored_trials(tmp_path)
                if t.params["kind"] == "text"}
    assert failures == {0.5: f"TrainableError: the trainable {module}:train returned 'val_score': 'high', which is "
                             "not a number", 2.0: f"TrainableError: the trainable {module}:train returned "
                             "'val_score': 'high', which is not a number"}
    assert summary["best"]["test_failure"] == ("scoring the winner on the test split failed: ValueError: evaluate is "
                                               "broken")
    (tmp_path / "broken").unlink()  # the user mends evaluate: the next run scores the winner, training nothing
    again = runner.invoke(app, ["run", str(spec), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["best"]["test_score"] == 0.75
    assert len(stored_trials(tmp_path)) == 4
    third = runner.invoke(app, ["run", str(spec)])
    assert third.exit_code == 0 and "already complete" in third.stderr

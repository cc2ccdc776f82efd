"""The examples a user copies run as the README says: tuned, their winner retrained and scored the same again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpsearch.cli import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(tmp_path: Path, name: str, overrides: list[str]) -> dict:
    """Run an example's study, smaller than it ships (the tests must be quick), and return its summary."""
    sets = [arg for item in ["tracking.enabled=false", *overrides] for arg in ("--set", item)]
    result = runner.invoke(app, ["run", str(EXAMPLES / name / "study.yaml"), "--storage",
                                 f"sqlite:///{tmp_path / 'example.db'}", *sets, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["complete"]
    return summary


def best_spec(tmp_path: Path, name: str, overrides: list[str]) -> Path:
    sets = [arg for item in overrides for arg in ("--set", item)]
    best = tmp_path / "best.yaml"
    result = runner.invoke(app, ["best", str(EXAMPLES / name / "study.yaml"), "--storage",
                                 f"sqlite:///{tmp_path / 'example.db'}", *sets, "--format", "yaml", "--output",
                                 str(best)])
    assert result.exit_code == 0, result.output
    return best


def test_the_scikit_learn_example_finds_a_winner_that_retrains_to_the_same_test_score(tmp_path):
    overrides = ["defaults.max_iter=10", "phases.0.n_trials=3", "phases.1.grid.top_k=1"]
    summary = run_example(tmp_path, "sklearn_digits", overrides)
    assert summary["best"]["test_metric"] == "test_acc" and summary["best"]["test_acc"] > 0.85
    trained = runner.invoke(app, ["train", str(best_spec(tmp_path, "sklearn_digits", overrides)), "--test", "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["test_acc"] == summary["best"]["test_acc"]


def test_the_cnn_example_prunes_saves_and_predicts(tmp_path):
    pytest.importorskip("torch")
    overrides = ["defaults.num_epochs=2", "phases.0.n_trials=2", "phases.1.grid.top_k=1"]
    summary = run_example(tmp_path, "cnn_digits", overrides)
    best = best_spec(tmp_path, "cnn_digits", overrides)
    model = tmp_path / "cnn.pt"
    trained = runner.invoke(app, ["train", str(best), "--test", "--save", str(model), "--json"])
    assert trained.exit_code == 0, trained.output
    scores = json.loads(trained.stdout)
    assert scores["test_acc"] == summary["best"]["test_acc"] and scores["val_acc"] == summary["best"]["value"]
    predicted = runner.invoke(app, ["predict", str(best), "--model", str(model), "--split", "test", "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)["accuracy"] == scores["test_acc"]

"""The examples a user copies run as docs/your-own-model.md says: tuned, their winner retrained and scored the same
again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpsearch.cli.app import app

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


def guide_blocks(guide: str) -> dict[str, str]:
    """The code blocks of a guide in docs/, by language (the first of each)."""
    body = (EXAMPLES.parent / "docs" / guide).read_text()
    blocks: dict[str, str] = {}
    for part in body.split("```")[1::2]:
        language, _, code = part.partition("\n")
        blocks.setdefault(language.strip(), code)
    return blocks


def test_your_own_model_followed_literally_scores_its_winner_on_held_out_rows(tmp_path, monkeypatch):
    """docs/your-own-model.md: its module and spec as written, data.npz made as its comment says."""
    import numpy as np
    from sklearn.datasets import load_digits

    blocks = guide_blocks("your-own-model.md")
    (tmp_path / "my_model.py").write_text(blocks["python"])
    (tmp_path / "study.yaml").write_text(blocks["yaml"])
    digits = load_digits()
    np.savez(tmp_path / "data.npz", X=digits.data[:600], y=digits.target[:600])
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "study.yaml", "--set", "tracking.enabled=false", "--set",
                                 "phases.0.n_trials=4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["complete"] and summary["best"]["test_acc"] > 0.8 and "warning" not in result.stderr
    # without data.num_test the rows hold no test split: the run says so, in one line
    unscored = runner.invoke(app, ["run", "study.yaml", "--set", "tracking.enabled=false", "--set",
                                   "phases.0.n_trials=4", "--set", "data.num_test=null", "--storage",
                                   f"sqlite:///{tmp_path / 'unscored.db'}", "--json"])
    assert unscored.exit_code == 0, unscored.output
    warnings = [line for line in unscored.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no test split" in warnings[0] and "data.num_test" in warnings[0]

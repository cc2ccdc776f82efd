from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpsearch.cli import app

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "studies" / "quickstart.yaml")
runner = CliRunner()


def test_train_quickstart_prints_the_scores():
    result = runner.invoke(app, ["train", QUICKSTART])
    assert result.exit_code == 0, result.output
    for label in ("loss", "train acc", "val acc", "seconds"):
        assert label in result.output


def test_train_json_and_overrides():
    result = runner.invoke(app, ["train", QUICKSTART, "--json", "--set", "defaults.hidden_size=20",
                                 "--set", "defaults.learning_rate=0.1"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert {"val_acc", "train_acc", "loss", "seconds", "config"} <= payload.keys()
    assert payload["config"]["hidden_size"] == 20 and payload["val_acc"] > 0.8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "defaults.learning_rate=-1"], "defaults.learning_rate must be greater than 0"),
        (["--set", "defaults.batch_size=5000"], "batch_size 5000 is larger than the training split"),
        (["--set", "data.dataset=cifar10", "--set", "data.path=/nonexistent"], "CIFAR-10 folder not found"),
        (["--set", "defaults.learning_rate=1e30", "--set", "defaults.std=1"], "loss became"),
        (["--set", "oops"], "expected KEY=VALUE"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, ["train", QUICKSTART, *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_missing_spec_exits_2():
    result = runner.invoke(app, ["train", "no-such-spec.yaml"])
    assert result.exit_code == 2 and "spec file not found" in result.stderr


def test_help_does_not_import_heavy_packages():
    code = ("import sys; from hpsearch.cli import app; "
            "heavy = [m for m in ('torch', 'mlflow', 'optuna', 'matplotlib') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


@pytest.mark.cifar10
def test_cifar10_default_config_matches_the_assignment(cifar10_dir):
    result = runner.invoke(app, ["train", str(REPO / "studies" / "cifar10-twolayer.yaml"), "--json",
                                 "--set", f"data.path={cifar10_dir}"])
    assert result.exit_code == 0, result.output
    assert 0.26 <= json.loads(result.output)["val_acc"] <= 0.33

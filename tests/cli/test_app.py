from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpsearch.cli.app import app
from tests.conftest import TINY_STUDY, write_spec

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "studies" / "quickstart.yaml")
runner = CliRunner()


def test_train_quickstart_prints_the_scores():
    result = runner.invoke(app, ["train", QUICKSTART])
    assert result.exit_code == 0, result.output
    for label in ("loss", "train acc", "val acc", "time"):
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
        (["--set", "data.dataset=cifar10", "--set", "data.path=/nonexistent"], "(expected data_batch_1..5 inside)"),
        (["--set", "defaults.learning_rate=1e30", "--set", "defaults.std=1"], "loss became"),
        (["--set", "oops"], "expected KEY=VALUE"),
        (["--set", "data={dataset: csv, target: y, path: /dev/zero}"],
         "/dev/zero: a character device, not a regular file; data.path names a .csv file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, ["train", QUICKSTART, *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_train_saves_a_model_that_predict_reloads_and_scores_the_test_split(tmp_path):
    model = tmp_path / "models" / "quickstart.npz"
    result = runner.invoke(app, ["train", QUICKSTART, "--test", "--save", str(model), "--json"])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)
    assert trained["model"] == str(model) and 0.8 < trained["test_acc"] <= 1
    scored = runner.invoke(app, ["predict", QUICKSTART, "--model", str(model), "--split", "test", "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["accuracy"] == trained["test_acc"]
    text = runner.invoke(app, ["train", QUICKSTART, "--test"]).stdout
    assert f"test acc    {trained['test_acc']:.4f}" in text.splitlines()  # the same seed trains the same model


@pytest.mark.parametrize(
    "args, message",
    [
        (["--test", "--set", "data.num_test=0"], "--test: the dataset digits of "),
        (["--save", "model.pt"], "--save model.pt: the numpy backend saves .npz files; give a path ending in .npz."),
    ],
)
def test_train_test_and_save_refuse_what_they_cannot_do(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", QUICKSTART, *args])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {message}"), result.output
    assert len(result.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def _arrays_spec(tmp_path: Path, npz: str = "digits.npz") -> Path:
    quickstart = yaml.safe_load(Path(QUICKSTART).read_text())
    spec = {"name": "mine", "data": {"dataset": "arrays", "path": npz, "num_test": 300}, "model": {"backend": "numpy"},
            "defaults": quickstart["defaults"]}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_train_on_user_data_from_an_npz(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "digits.npz", X=digits.images, y=digits.target)  # (1797, 8, 8), (1797,)
    result = runner.invoke(app, ["train", str(_arrays_spec(tmp_path)), "--test"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # 1797 rows: 300 test, a fifth of the 1497 left validate (299), 1198 train
    assert lines[0] == "mine: numpy backend on digits.npz (1198 train / 299 val), seed 0"
    val_acc = float(next(line for line in lines if line.startswith("val acc")).split()[-1])
    test_acc = float(next(line for line in lines if line.startswith("test acc")).split()[-1])
    assert val_acc > 0.8 and test_acc > 0.8, result.stdout  # the quickstart's defaults reach ~0.84 on digits


def test_train_on_a_bad_npz_is_one_line_and_exit_2(tmp_path):
    np.savez(tmp_path / "digits.npz", X_train=np.zeros((10, 4)), y_train=np.arange(10) % 2,
             X_val=np.zeros((3, 5)), y_val=[0, 1, 0])
    result = runner.invoke(app, ["train", str(_arrays_spec(tmp_path))])
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'digits.npz'}: X_val has 5 columns, X_train has 4.\n"


def test_train_on_regression_targets_with_a_classifier_is_one_line(tmp_path):
    np.savez(tmp_path / "digits.npz", X=np.arange(40.0).reshape(20, 2), y=np.linspace(0, 1, 20))
    spec = _arrays_spec(tmp_path)
    result = runner.invoke(app, ["train", str(spec), "--set", "data.num_test=0"])
    assert result.exit_code == 2
    assert result.stderr == (f"error: {spec}: the numpy trainable learns classification targets; the dataset "
                             "digits.npz holds regression targets; if they are class labels, set "
                             "data.options.task: classification.\n")


def test_missing_spec_exits_2():
    result = runner.invoke(app, ["train", "no-such-spec.yaml"])
    assert result.exit_code == 2 and "spec file not found" in result.stderr


def test_plan_of_a_device_is_one_line_read_no_further():
    result = runner.invoke(app, ["plan", "/dev/zero"])
    assert result.exit_code == 2
    assert result.stderr == "error: /dev/zero: a character device, not a regular file; a spec is a YAML file.\n"


def test_help_does_not_import_heavy_packages():
    code = ("import sys; from hpsearch.cli.app import app; "
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


RANDOM, GRID = TINY_STUDY["phases"]  # 6 random points, then a grid derived from the best 3


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_spec(tmp_path, "clistudy")


def test_run_status_best_export_plan(study, tmp_path):
    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 0, result.output
    assert "winner" in result.stdout and "optuna-dashboard sqlite:///runs/clistudy.db" in result.stdout
    assert (tmp_path / "runs" / "clistudy.db").exists()  # the default storage, relative to the working directory
    derived = result.output[result.output.index("[grid] derived grid from the top 3 trials of 'random':"):]
    grid_lines = derived.splitlines()[1:3]  # a line per parameter, values to 6 significant digits
    assert [line.split(":")[0] for line in grid_lines] == ["[grid]   learning_rate", "[grid]   hidden_size"]
    assert all(len(line) <= 100 and not any(len(v.strip()) > 12 for v in line.split(":")[1].split(","))
               for line in grid_lines)

    again = runner.invoke(app, ["run", str(study)])
    assert again.exit_code == 0 and "already complete" in again.stderr

    status = json.loads(runner.invoke(app, ["status", str(study), "--json"]).stdout)
    assert status["complete"] and [p["state"] for p in status["phases"]] == ["complete", "complete"]
    assert status["phases"][0]["done"] == 6

    # CliRunner's stdout is no terminal, as in logs, CI and pipes: nothing may be cut or wrapped at 80 columns
    for text in (result.stdout, runner.invoke(app, ["status", str(study)]).stdout):
        lines = text.splitlines()
        assert lines[1].split() == ["phase", "state", "done/total", "complete", "pruned", "failed", "running", "best"]
        best_row = lines[2 + [p["phase"] for p in status["phases"]].index(status["best"]["phase"])]
        assert best_row.endswith(f"{status['best']['value']:.4f} (trial {status['best']['trial']})")
        # the winner's configuration as people read it: 6 significant digits, lines of at most 100 columns
        start = next(k for k, line in enumerate(lines) if line.startswith("  config: "))
        end = next(k for k, line in enumerate(lines) if line.startswith("  seed: "))
        shown = dict(item.strip().split("=", 1) for line in lines[start:end]
                     for item in line.removeprefix("  config:").split(",") if item.strip())
        assert shown.keys() == status["best"]["config"].keys()
        for key, value in status["best"]["config"].items():
            assert float(shown[key]) == pytest.approx(value, rel=1e-5) if isinstance(value, float) else \
                shown[key] == str(value)
        assert lines[end] == f"  seed: {status['best']['seed']}  (`hpsearch best` writes the exact values as a spec)"
        assert all(len(line) <= 100 for line in lines[start:end])

    best_yaml = runner.invoke(app, ["best", str(study), "--format", "yaml", "--output", str(tmp_path / "best.yaml")])
    assert best_yaml.exit_code == 0
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["provenance"]["val_acc"] == status["best"]["value"] and best["provenance"]["hpsearch_version"]
    # the fragment is a spec: training it again reproduces the winning trial exactly
    retrained = json.loads(runner.invoke(app, ["train", str(tmp_path / "best.yaml"), "--json"]).stdout)
    assert retrained["val_acc"] == best["provenance"]["val_acc"]
    assert json.loads(runner.invoke(app, ["best", str(study), "--format", "json"]).stdout)["seed"] == best["seed"]

    assert runner.invoke(app, ["export", str(study), "--output", str(tmp_path / "t.csv")]).exit_code == 0
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("phase,number,state,value") and "param_learning_rate" in lines[0]
    assert len(lines) == 1 + 6 + status["phases"][1]["total"]
    # plain cells a spreadsheet sorts and pandas reads as numbers: no JSON inside, no per-epoch history
    table = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert {"metric_val_acc", "metric_train_acc", "param_hidden_size"} <= table[0].keys()
    assert "epoch_history" not in table[0] and "metrics" not in table[0]
    assert not any(cell.startswith(("{", "[")) for row in table for cell in row.values())
    complete = [row for row in table if row["state"] == "COMPLETE"]
    assert complete and all(float(row["metric_val_acc"]) == float(row["value"]) for row in complete)
    assert runner.invoke(app, ["export", str(study), "--output", str(tmp_path / "t.json")]).exit_code == 0
    assert len(json.loads((tmp_path / "t.json").read_text())) == len(lines) - 1


def test_plan_touches_no_storage(study, tmp_path):
    result = runner.invoke(app, ["plan", str(study), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [p["trials"] for p in report["phases"]] == [6, 4] and report["phases"][1]["trials_upper_bound"]
    phases = sum(p["estimated_seconds"] for p in report["phases"])
    assert report["estimated_seconds"] == pytest.approx(report["run_fixed_seconds"] + phases, abs=0.1)
    assert report["probe"]["trials"] == 4
    assert not (tmp_path / "runs").exists()


def test_plan_prints_durations_as_people_read_them(study, monkeypatch):
    from hpsearch.engine import plan

    stub = plan.Probe(train_seconds=0.4, cost=1.0, trial_overhead_seconds=0.1, fixed_seconds=200.0)
    monkeypatch.setattr(plan, "measure_probe", lambda spec, data: stub)
    monkeypatch.setattr(plan, "_cost", lambda spec, config, data: 1.0)  # every trial trains 0.4 s
    monkeypatch.setattr(plan, "since_process_start", lambda: 10.0)  # the command's start-up (here: pytest's)
    write_spec(study.parent, "clistudy", tracking={"enabled": True})  # the total says what it leaves out
    result = runner.invoke(app, ["plan", str(study)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "study clistudy: a probe of 4 short trials: 0.4 s of training each, 0.1 s more per trial",
        "  random       random  6 trials               ≈ 3.0 s",
        "  grid         grid    at most 4 trials       ≈ 2.0 s",
        "  (once)               start, score winner    ≈ 3 min 30 s",
        "  total ≈ 3 min 35 s on one process, plus MLflow tracking",
    ]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"phases": [{**RANDOM, "n_trials": "four"}, GRID]}, "phases[0].n_trials must be a valid integer"),
        ({"phases": [RANDOM, {**GRID, "grid": {}}]}, "'grid' is empty"),
        ({"phases": [RANDOM, {**GRID, "grid": {"hidden_size": []}}]}, "'grid.hidden_size' is an empty list"),
        ({"phases": [{**RANDOM, "space": {"learning_rate": {**RANDOM["space"]["learning_rate"], "low": -1.0}}}, GRID]},
         "phases[0].space.learning_rate"),
        ({"data": {"dataset": "cifar10", "path": "/nonexistent"}}, "(expected data_batch_1..5 inside)"),
        ({"storage": "nonsense"}, "is not a database URL"),
        ({"storage": "postgresql://me:SECRET@127.0.0.1:1/db"}, "cannot be opened"),
    ],
)
def test_bad_specs_exit_2_with_one_line(study, tmp_path, changes, message):
    write_spec(tmp_path, "clistudy", **changes)
    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "SECRET" not in result.output


def test_run_missing_spec_file(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "spec file not found" in result.stderr


def test_torch_spec_without_torch_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    spec = tmp_path / "mlp.yaml"
    spec.write_text("name: mlp\ndata: {dataset: digits}\nmodel: {backend: torch}\ndefaults: {num_epochs: 1}\n")

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    monkeypatch.chdir(tmp_path)
    phases = "phases=[{name: g, sampler: grid, grid: {dropout: [0.0]}}]"
    for command in (["train", str(spec)], ["run", str(spec), "--set", phases]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == ("error: the torch backend needs PyTorch: pip install 'hpsearch[torch]' "
                                         "(CPU build: torch==2.13.0)")


def test_help_and_numpy_training_never_import_torch():
    code = ("import sys; from hpsearch.cli.app import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['train', {QUICKSTART!r}]); assert r.exit_code == 0, r.output; "
            "print([m for m in ('torch', 'mlflow', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# ---- hostile command lines and files: one line on stderr, exit 2 (#15.11, #15.12) ------------------------------------

def tiny_spec(folder: Path, **data) -> Path:
    spec = {"name": "tiny", "seed": 0,
            "data": {"dataset": "synthetic", "num_train": 100, "num_val": 30, "num_test": 30, **data},
            "defaults": {"hidden_size": 8, "learning_rate": 0.05, "num_iters": 10, "batch_size": 50, "std": 0.01},
            "tracking": {"enabled": False},
            "phases": [{"name": "grid", "sampler": "grid", "grid": {"learning_rate": [0.01, 0.02]}}]}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def one_error_line(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize("args, message", [
    (["--timeout", "nan"], "--timeout must be a number of seconds >= 0. Got nan instead."),
    (["--timeout", "-1"], "--timeout must be a number of seconds >= 0. Got -1.0 instead."),
    (["--max-trials", "-1"], "--max-trials must be an integer >= 0. Got -1 instead."),
    (["--time-box", "soon"], "--time-box must be a duration such as 3300, '55m' or '1h'. Got 'soon' instead."),
    (["--time-box", "0m"], "--time-box must be a finite duration greater than 0. Got '0m' instead."),
])
def test_bad_budgets_are_refused_before_anything_runs(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    one_error_line(runner.invoke(app, ["run", str(spec), *args]), message)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["run", "SPEC", "--workers", "0"], "Invalid value for '--workers'"),
    (["run", "SPEC", "--workers", "-1"], "Invalid value for '--workers'"),
    (["run", "SPEC", "--max-trials", "1e3"], "Invalid value for '--max-trials'"),
    (["run", "SPEC", "--time-box", "5", "m"], "Got unexpected extra argument(s) (m)"),
    (["run", "SPEC", "--bogus"], "No such option: --bogus"),
    (["run"], "Missing argument 'spec'"),
    (["runn", "SPEC"], "No such command 'runn'"),
    (["--bogus"], "No such option: --bogus"),
])
def test_usage_errors_are_one_line_like_every_other_error(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    result = runner.invoke(app, [str(spec) if arg == "SPEC" else arg for arg in args])
    one_error_line(result, message)
    assert result.stderr.startswith("error: ") and result.stderr.endswith(" --help'.\n"), result.stderr
    assert result.stdout == "" and not (tmp_path / "runs").exists()


def test_help_is_still_the_help():
    assert "Commands" in runner.invoke(app, []).output  # `hpsearch` alone
    assert "Commands" in runner.invoke(app, ["--help"]).stdout
    run_help = runner.invoke(app, ["run", "--help"])
    assert run_help.exit_code == 0 and "--max-trials" in run_help.stdout


def test_a_space_refused_when_the_spec_loads_leaves_nothing_stored_to_refuse_its_correction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    space = "phases=[{name: r, sampler: random, n_trials: 2, space: {hidden_size: {type: int, low: 4, high: 16, " \
            "step: STEP}}}]"
    refused = runner.invoke(app, ["run", str(spec), "--set", space.replace("STEP", "0")])
    one_error_line(refused, "phases[0].space.hidden_size.step must be greater than 0. Got 0 instead.")
    assert not (tmp_path / "runs").exists()
    corrected = runner.invoke(app, ["run", str(spec), "--set", space.replace("STEP", "4")])
    assert corrected.exit_code == 0, corrected.output


def test_running_out_of_memory_is_one_line_in_train_and_a_failed_trial_in_a_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    huge = 10**12  # a (20, 10**12) float64 weight matrix: 146 TiB, more than any address space holds
    trained = runner.invoke(app, ["train", str(spec), "--set", f"defaults.hidden_size={huge}"])
    assert trained.exit_code == 2
    assert trained.stderr.startswith(f"error: {spec}: the trainable numpy ran out of memory (MemoryError: ")
    assert trained.stderr.endswith("); train a smaller configuration.\n") and trained.stderr.count("\n") == 1
    grid = f"phases=[{{name: g, sampler: grid, grid: {{hidden_size: [8, {huge}]}}, max_retries: 0}}]"
    studied = runner.invoke(app, ["run", str(spec), "--set", grid, "--json"])
    assert studied.exit_code == 0, studied.output
    assert "Traceback" not in studied.stderr
    exported = runner.invoke(app, ["export", str(spec), "--set", grid, "--output", "t.json"])
    assert exported.exit_code == 0, exported.output
    (failed,) = [t for t in json.loads((tmp_path / "t.json").read_text()) if t["state"] == "FAIL"]
    assert failed["params"]["hidden_size"] == huge
    assert failed["failure"].startswith("MemoryError: ")


def test_run_workers_pass_on_their_options_and_report_the_tracking_uri_they_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    raw = yaml.safe_load(spec.read_text())
    raw["tracking"] = {"enabled": True}
    spec.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["run", str(spec), "--workers", "2", "--tracking-uri", "sqlite:///elsewhere.db"])
    assert result.exit_code == 0, result.output
    assert "mlflow ui --backend-store-uri sqlite:///elsewhere.db" in result.stdout
    assert (tmp_path / "elsewhere.db").exists() and not (tmp_path / "runs" / "mlflow.db").exists()

    from hpsearch.cli import localworkers

    commands = []

    def started(command, env, n, shares=None):
        commands.append(command)
        return [0] * n, False, []

    monkeypatch.setattr(localworkers, "run_workers", started)
    limits = ["--timeout", "600", "--time-box", "1e-05", "--max-trials", "3"]
    assert runner.invoke(app, ["run", str(spec), "--workers", "2", *limits]).exit_code == 0
    (command,) = commands
    passed = dict(zip(command[command.index("--timeout")::2], command[command.index("--timeout") + 1::2]))
    assert passed == {"--timeout": "600.0", "--time-box": "1e-05", "--max-trials": "3"}


@pytest.fixture
def finished_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert runner.invoke(app, ["run", str(spec)]).exit_code == 0
    return spec


@pytest.mark.parametrize("command, target, message", [
    (["export", "--output"], "missing/t.json", "--output missing/t.json: the folder missing does not exist."),
    (["export", "--output"], "folder.json", "--output folder.json: is a folder; give a file name."),
    (["best", "--output"], "missing/best.yaml", "the folder missing does not exist."),
    (["best", "--output"], "folder.json", "is a folder; give a file name."),
    (["report", "--out"], "file.txt", "--out file.txt: file.txt is a file, not a folder."),
    (["report", "--out"], "file.txt/sub", "--out file.txt/sub: file.txt is a file, not a folder."),
])
def test_unusable_output_paths_are_one_line(finished_study, tmp_path, command, target, message):
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "file.txt").write_text("mine")
    result = runner.invoke(app, [command[0], str(finished_study), command[1], target])
    one_error_line(result, message)
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_a_read_only_output_folder_is_one_line(finished_study, tmp_path, read_only_folder):
    (tmp_path / "locked").mkdir()
    read_only_folder(tmp_path / "locked")
    for command, target in ((["export", "--output"], "locked/t.json"), (["best", "--output"], "locked/b.yaml"),
                            (["report", "--out"], "locked/report")):
        result = runner.invoke(app, [command[0], str(finished_study), command[1], target])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert "locked" in result.stderr and "writ" in result.stderr


def test_plan_reports_diverging_defaults_in_one_line(tmp_path):
    spec = tiny_spec(tmp_path)
    result = runner.invoke(app, ["plan", str(spec), "--set", "defaults.learning_rate=1e6"])
    one_error_line(result, "the probe training with the spec's defaults diverged")


def test_status_says_the_test_accuracy_comes_after_the_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    assert runner.invoke(app, ["run", str(spec), "--max-trials", "1"]).exit_code == 0
    shown = " ".join(runner.invoke(app, ["status", str(spec)]).stdout.split())  # rich wraps long lines
    assert "test_acc after the study completes" in shown and "no test_acc" not in shown


# ---- predict: model files that a study did not save -------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A genuine model of each backend for the tiny spec, saved as a study saves it."""
    import numpy as np

    from hpsearch.backends import numpy_twolayer, torch_mlp
    from hpsearch.engine.training import load_data, train_once
    from hpsearch.spec.build import load_spec

    folder = tmp_path_factory.mktemp("models")
    spec = load_spec(tiny_spec(folder))
    result = train_once(spec, load_data(spec))
    numpy_twolayer.save_model(result.model, result.config, folder / "m.npz")
    torch_yaml = yaml.safe_load((folder / "tiny.yaml").read_text())
    torch_yaml.update(model={"backend": "torch"}, defaults={"num_epochs": 1, "batch_size": 50}, phases=[])
    (folder / "torch.yaml").write_text(yaml.safe_dump(torch_yaml))
    torch_spec = load_spec(folder / "torch.yaml")
    torch_result = train_once(torch_spec, load_data(torch_spec))
    torch_mlp.save_model(torch_result.model, torch_result.config, folder / "m.pt")
    return folder, np


SPEC_OF = {"numpy": "tiny.yaml", "torch": "torch.yaml"}


def _npz(path: Path, **arrays) -> Path:
    import numpy as np

    np.savez(path, **arrays)
    return path


def test_genuine_models_predict(saved_models):
    folder, _ = saved_models
    for model, backend in (("m.npz", "numpy"), ("m.pt", "torch")):
        result = runner.invoke(app, ["predict", str(folder / SPEC_OF[backend]), "--model", str(folder / model),
                                     "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["n"] == 30


def test_hostile_numpy_model_files_are_one_line(saved_models, tmp_path):
    import numpy as np

    folder, _ = saved_models
    with np.load(folder / "m.npz") as genuine:
        params = {name: genuine[name] for name in genuine.files}
    absurd = tmp_path / "absurd.npz"
    _npz(absurd, **params)
    header = np.lib.format.header_data_from_array_1_0(params["W1"])
    # rewrite W1's header to declare 10^12 x 10^6 values: the archive stays a valid zip, the array a lie
    import zipfile

    with zipfile.ZipFile(absurd, "w") as archive:
        for name, array in params.items():
            with archive.open(f"{name}.npy", "w") as member:
                if name == "W1":
                    np.lib.format.write_array_header_1_0(member, {**header, "shape": (10**12, 10**6)})
                    member.write(array.tobytes())
                else:
                    np.lib.format.write_array(member, array)
    cases = {
        "empty.npz": b"",
        "text.npz": b"not a model at all\n",
        "pickle.npz": __import__("pickle").dumps({"W1": 1}),
        "single.npz": None,
        "shapes.npz": {**params, "W2": params["W2"][:-1]},
        "keys.npz": {k: v for k, v in params.items() if k != "b2"},
        "config.npz": {**params, "config": np.array("[1, 2]")},
        "ints.npz": {**params, "W1": params["W1"].astype(np.int64)},
    }
    files = [absurd, folder / "m.pt"]
    for name, content in cases.items():
        path = tmp_path / name
        if content is None:
            np.save(path.with_suffix(".npy"), params["W1"])
            path.with_suffix(".npy").rename(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            _npz(path, **content)
        files.append(path)
    for path in files:
        result = runner.invoke(app, ["predict", str(folder / "tiny.yaml"), "--model", str(path)])
        one_error_line(result, f"{path}: not a numpy model file saved by a study (")


def test_a_model_for_other_data_is_one_line(saved_models):
    folder, _ = saved_models
    result = runner.invoke(app, ["predict", str(folder / "tiny.yaml"), "--model", str(folder / "m.npz"),
                                 "--set", "data.options.num_features=7"])
    one_error_line(result, "the model takes 20 inputs per sample; synthetic as the spec loads it has 7.")


def test_hostile_torch_model_files_are_one_line(saved_models, tmp_path):
    import torch

    folder, _ = saved_models
    genuine = torch.load(folder / "m.pt", weights_only=True)
    cases = {
        "empty.pt": b"",
        "npz.pt": (folder / "m.npz").read_bytes(),
        "list.pt": [1, 2, 3],
        "shapes.pt": {**genuine, "input_size": 21},
        "absurd.pt": {**genuine, "input_size": 10**12, "config": genuine["config"].replace('"hidden_sizes": [100]',
                                                                                            '"hidden_sizes": [10000000]')},
        "bool.pt": {**genuine, "num_classes": True},
        "config.pt": {**genuine, "config": "{not json"},
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        result = runner.invoke(app, ["predict", str(folder / "torch.yaml"), "--model", str(path)])
        one_error_line(result, f"{path}: not a torch model file saved by a study (")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=400), backend=st.sampled_from(["numpy", "torch"]))
def test_random_bytes_as_a_model_file_are_one_line(saved_models, tmp_path, content, backend):
    folder, _ = saved_models
    path = tmp_path / "random.model"
    path.write_bytes(content)
    result = runner.invoke(app, ["predict", str(folder / SPEC_OF[backend]), "--model", str(path)])
    one_error_line(result, f"not a {backend} model file saved by a study (")


@pytest.mark.parametrize("stopped, workers, expected", [
    ([], None, "Interrupted between trials; nothing was lost. Rerun the same command to resume."),
    (["trial 3 of phase 'grid'"], None, "Interrupted; trial 3 of phase 'grid' was running: marked failed, to be "
                                        "trained again on the next run. Rerun the same command to resume."),
    ([], 3, "Interrupted: 3 workers stopped between trials; nothing was lost. Rerun the same command to resume."),
    (["trial 1 of phase 'r'", "trial 4 of phase 'r'"], 2,
     "Interrupted: 2 workers stopped; trial 1 of phase 'r' and trial 4 of phase 'r' were running: marked failed, to be "
     "trained again on the next run. Rerun the same command to resume."),
])
def test_the_interrupted_line_says_what_the_signal_stopped(stopped, workers, expected):
    from hpsearch.cli.options import interrupted_message

    assert interrupted_message(stopped, workers=workers) == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(backend=st.sampled_from(["numpy", "torch"]), value=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
       which=st.integers(0, 7), where=st.floats(0, 1, exclude_max=True))
def test_a_model_with_one_weight_nan_or_infinite_is_one_line(saved_models, tmp_path, backend, value, which, where):
    """Training that diverges saves no model: a non-finite weight anywhere means the file was altered or broken."""
    import torch

    folder, np = saved_models
    path = tmp_path / f"bad{'.npz' if backend == 'numpy' else '.pt'}"
    if backend == "numpy":
        with np.load(folder / "m.npz") as genuine:
            arrays = {name: genuine[name].copy() for name in genuine.files}
        name = ("W1", "b1", "W2", "b2")[which % 4]
        arrays[name].flat[int(where * arrays[name].size)] = value
        np.savez(path, **arrays)
    else:
        saved = torch.load(folder / "m.pt", weights_only=True)
        weights = [name for name, tensor in saved["state_dict"].items() if tensor.is_floating_point()]
        name = weights[which % len(weights)]
        tensor = saved["state_dict"][name]
        tensor.view(-1)[int(where * tensor.numel())] = value
        torch.save(saved, path)
    result = runner.invoke(app, ["predict", str(folder / SPEC_OF[backend]), "--model", str(path)])
    one_error_line(result, f"{path}: not a {backend} model file saved by a study (its {name} holds NaN or infinite "
                           "values).")


# ---- outputs: never over the study's own files, over another file only with --force -----------------------------------

def _fingerprints(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (symlinks as where they point) and its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else b"<folder>"
            for path in sorted(folder.rglob("*"))}


def test_outputs_never_overwrite_the_spec_or_the_study_storage_even_with_force(finished_study, tmp_path):
    (tmp_path / "runs" / "tiny.db-wal").write_bytes(b"")  # as SQLite leaves one beside a database in WAL mode
    (tmp_path / "runs" / ".tiny.db.runs").mkdir(exist_ok=True)
    (tmp_path / "alias.yaml").symlink_to(tmp_path / "runs" / "tiny.db")
    (tmp_path / "runs" / "hard.db").hardlink_to(tmp_path / "runs" / "tiny.db")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "summary.md").hardlink_to(finished_study)  # the spec, where a report would write summary.md
    before = _fingerprints(tmp_path)
    storage = "kept by the study storage 'sqlite:///runs/tiny.db'; --force never overwrites it. Give another path."
    cases = [
        (["best", "--output", "runs/tiny.db"], f"--output runs/tiny.db: that file is {storage}"),
        (["best", "--output", "runs/../runs/tiny.db"], f"--output runs/../runs/tiny.db: that file is {storage}"),
        (["best", "--output", "alias.yaml"], f"--output alias.yaml: that file is {storage}"),
        (["best", "--output", "runs/hard.db"], f"--output runs/hard.db: that file is {storage}"),
        (["best", "--output", "tiny.yaml"], "--output tiny.yaml: that file is the spec being read; --force never "
                                            "overwrites it. Give another path."),
        (["export", "--output", "runs/tiny.db-wal.json"], None),  # a new file beside them is fine
        (["export", "--output", "./tiny.yaml.json"], None),
        (["export", "--output", "runs/.tiny.db.runs/t.json"], f"that file is {storage}"),
        (["export", "--output", "./runs/tiny.db-wal"], "give a .csv or .json file."),
        (["report", "--out", "runs/.tiny.db.runs/report"], f"runs/.tiny.db.runs/report/metric_vs_params.png is {storage}"),
        (["report", "--out", "own"], "own/summary.md is the spec being read; --force never overwrites it."),
    ]
    for args, message in cases:
        result = runner.invoke(app, [args[0], str(finished_study), *args[1:], "--force"])
        if message is None:
            assert result.exit_code == 0, (args, result.output)
            (tmp_path / args[-1]).unlink()
        else:
            one_error_line(result, message)
    assert _fingerprints(tmp_path) == before


@pytest.mark.parametrize("args, written", [
    (["best", "--output", "b.yaml"], "b.yaml"),
    (["export", "--output", "t.csv"], "t.csv"),
    (["report", "--out", "rep"], "rep/summary.md"),
])
def test_outputs_overwrite_an_existing_file_only_with_force(finished_study, tmp_path, args, written):
    (tmp_path / "rep").mkdir()
    (tmp_path / written).write_text("mine")
    refused = runner.invoke(app, [args[0], str(finished_study), *args[1:]])
    one_error_line(refused, f"{args[1]} {args[2]}: {'that file' if written == args[2] else written} already exists; "
                            "give --force to overwrite it.")
    assert (tmp_path / written).read_text() == "mine"
    forced = runner.invoke(app, [args[0], str(finished_study), *args[1:], "--force"])
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / written).read_text() not in ("mine", "")
    again = runner.invoke(app, [args[0], str(finished_study), *args[1:]])
    assert again.exit_code == 2 and "already exist" in again.stderr  # a report's second run finds all its files


@pytest.mark.parametrize("args, message", [
    (["best", "--output", ""], "--output must name a file. Got '' instead."),
    (["export", "--output", ""], "--output must name a file. Got '' instead."),
    (["report", "--out", ""], "--out must name a folder. Got '' instead."),
])
def test_an_empty_output_path_is_one_line_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(tmp_path)
    one_error_line(runner.invoke(app, [args[0], str(spec), *args[1:]]), message)  # refused before the spec is read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_a_write_that_fails_leaves_the_file_it_would_replace_whole(finished_study, tmp_path):
    """In a process of its own: the file-size limit that makes the write fail half-way must not bind pytest."""
    import resource
    import signal

    (tmp_path / "t.json").write_text("mine")

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))

    result = subprocess.run([sys.executable, "-m", "hpsearch", "export", str(finished_study), "--output", "t.json",
                             "--force"], cwd=tmp_path, capture_output=True, text=True, preexec_fn=small_files)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: --output t.json: cannot write (File too large).\n"
    assert (tmp_path / "t.json").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "t.json", "tiny.yaml"]  # no partial file left


@pytest.mark.parametrize("scores, split", [({"test_acc": 0.9}, "test"), ({}, "val")])
def test_the_summary_suggests_predicting_a_split_the_data_has(capsys, scores, split):
    from hpsearch.cli.output import print_summary
    from hpsearch.engine.summary import StudySummary, TrackingRef

    best = {"phase": "grid", "trial": 3, "metric": "val_acc", "value": 0.95, "config": {}, "seed": 1,
            "test_metric": "test_acc", **scores}
    print_summary(StudySummary(study="s", storage="sqlite:///s.db", phases=[], best=best, complete=True,
                               spec="s.yaml", tracking=TrackingRef(experiment="s", uri="sqlite:///m.db",
                                                                   model="m.npz")))
    predict = [line for line in capsys.readouterr().out.splitlines() if "hpsearch predict" in line]
    assert predict == [f"  hpsearch predict s.yaml --model m.npz --split {split}"]


def test_help_shows_no_type_beside_flags_and_keeps_each_command_s_summary_on_its_lines():
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0 and "<bool>" not in result.output and "--json" in result.output
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "120"}).output  # room for every summary on one line
    train = next(line for line in top.splitlines() if "│ train " in line)
    assert train.rstrip(" │").endswith("and time.")  # one line: no break in mid-sentence

"""MLflow tracking through the CLI, asserted through MlflowClient."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import stat
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from hpsearch.cli.app import app
from tests.conftest import TINY_STUDY, write_spec

TRACKED = {"enabled": True}  # the tiny study's default is off

runner = CliRunner()

@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return write_spec(tmp_path, "tracked", defaults={**TINY_STUDY["defaults"], "num_iters": 40}, tracking=TRACKED)


def runs_by_kind(uri: str, experiment: str = "tracked") -> dict[str, list]:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    kinds = collections.defaultdict(list)
    for run in client.search_runs([found.experiment_id], max_results=1000):
        kinds[run.data.tags.get("hpsearch.kind")].append(run)
    return kinds


def assert_parents_start_first(uri: str, experiment: str = "tracked") -> None:
    """Every run starts no later than the runs nested under it: MLflow's UI, opened oldest first by the summary's link
    (100 runs a page, one level of missing parents fetched), then shows each run under its study, on every page."""
    client = MlflowClient(uri)
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                                         max_results=1000)}
    late = [(r.info.run_name, runs[parent].info.run_name) for r in runs.values()
            if (parent := r.data.tags.get("mlflow.parentRunId")) and runs[parent].info.start_time > r.info.start_time]
    assert late == [], "(run, its parent that started after it)"


def optuna_trials(tmp_path: Path) -> list:
    storage = f"sqlite:///{tmp_path / 'runs' / 'tracked.db'}"
    return [t for phase in ("random", "grid")
            for t in optuna.load_study(study_name=f"tracked.{phase}", storage=storage).trials]


def test_study_phase_and_trial_runs_are_nested_with_curves_and_artifacts(study, tmp_path):
    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db" in result.stdout
    experiment = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_experiment_by_name("tracked")
    assert (f"  then http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType="
            "machine_learning&orderByKey=attributes.start_time&orderByAsc=true  (the runs table)"
            in result.stdout.splitlines())
    assert_parents_start_first(uri)
    kinds = runs_by_kind(uri)
    (study_run,) = kinds["study"]
    # a namesake in another storage, logged to the same experiment, is told apart by its storage
    assert study_run.data.tags["hpsearch.storage"] == "sqlite:///runs/tracked.db"
    assert study_run.data.tags["hpsearch.study_state"] == "complete" and study_run.info.status == "FINISHED"
    phases = {run.data.tags["hpsearch.phase"]: run for run in kinds["phase"]}
    assert set(phases) == {"random", "grid"}
    assert all(run.data.tags["mlflow.parentRunId"] == study_run.info.run_id for run in phases.values())
    trials = optuna_trials(tmp_path)
    assert len(kinds["trial"]) == len(trials) == 6 + len(json.loads(phases["grid"].data.tags["grid"])["learning_rate"]) * len(json.loads(phases["grid"].data.tags["grid"])["hidden_size"])
    keys = collections.Counter(run.data.tags["hpsearch.trial_key"] for run in kinds["trial"])
    assert set(keys.values()) == {1}  # one run per Optuna trial
    client = MlflowClient(uri)
    for run in kinds["trial"]:
        phase = run.data.tags["phase"]
        assert run.data.tags["mlflow.parentRunId"] == phases[phase].info.run_id
        assert {"hidden_size", "learning_rate", "reg", "num_iters", "batch_size", "seed"} <= run.data.params.keys()
        state = run.data.tags["state"]
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[state]
        assert run.data.tags["device"] == "cpu"  # what the NumPy network trains on
        loss = client.get_metric_history(run.info.run_id, "loss")
        val = client.get_metric_history(run.info.run_id, "val_acc")
        assert len(loss) == 40 and [m.step for m in loss] == list(range(40))  # one point per iteration
        assert len(val) == 10  # 200 samples / batch 50 = 4 iterations per epoch
    assert study_run.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in phases.values())
    artifacts = {a.path for a in client.list_artifacts(study_run.info.run_id)}
    assert {"best_config.yaml", "metric_vs_params.png", "best_loss_curve.png", "best_metric_curves.png",
            "optimization_history.png", "param_importances.png", "summary.md", "model"} <= artifacts
    assert "grid.json" in {a.path for a in client.list_artifacts(phases["grid"].info.run_id)}
    assert client.get_run(study_run.info.run_id).data.metrics["test_acc"] > 0

    # the logged model reloads and scores what the best trial scored
    model = client.download_artifacts(study_run.info.run_id, "model/best_model.npz", str(tmp_path))
    scored = runner.invoke(app, ["predict", str(study), "--model", model, "--split", "val", "--json"])
    best = json.loads(runner.invoke(app, ["status", str(study), "--json"]).stdout)["best"]
    assert scored.exit_code == 0 and json.loads(scored.stdout)["accuracy"] == best["value"]

    # rerunning the finished study adds no runs
    again = runner.invoke(app, ["run", str(study)])
    assert again.exit_code == 0 and "already complete" in again.stderr
    assert sum(len(v) for v in runs_by_kind(uri).values()) == sum(len(v) for v in kinds.values())


def test_unreachable_tracking_server_does_not_stop_the_study_and_sync_fills_mlflow(study, tmp_path):
    result = runner.invoke(app, ["run", str(study), "--tracking-uri", "http://127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("tracking:")]
    assert len(warnings) == 1 and "hpsearch sync" in warnings[0]
    assert json.loads(runner.invoke(app, ["status", str(study), "--json"]).stdout)["complete"]

    failed = runner.invoke(app, ["sync", str(study), "--tracking-uri", "http://127.0.0.1:9"])
    assert failed.exit_code == 2 and len(failed.stderr.strip().splitlines()) == 1

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    synced = runner.invoke(app, ["sync", str(study), "--tracking-uri", uri])
    assert synced.exit_code == 0, synced.output
    kinds = runs_by_kind(uri)
    assert len(kinds["study"]) == 1 and len(kinds["phase"]) == 2
    assert len(kinds["trial"]) == len(optuna_trials(tmp_path))
    client = MlflowClient(uri)
    complete = [r for r in kinds["trial"] if r.data.tags["state"] == "COMPLETE"]
    assert complete and all(len(client.get_metric_history(r.info.run_id, "val_acc")) == 10 for r in complete)
    assert "best_config.yaml" in {a.path for a in client.list_artifacts(kinds["study"][0].info.run_id)}
    # made after the trials, the study's and phases' runs start with their first trial, as they would have live
    assert_parents_start_first(uri)
    # a second sync finds nothing missing
    again = runner.invoke(app, ["sync", str(study), "--tracking-uri", uri])
    assert "0 runs created" in again.stdout
    assert len(runs_by_kind(uri)["trial"]) == len(kinds["trial"])


def test_a_time_box_that_ends_with_the_winner_scored_finishes_the_study_run_each_time(study, tmp_path):
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert runner.invoke(app, ["run", str(study), "--max-trials", "3"]).exit_code == 0
    # a clean stop is no kill: FINISHED, the tag saying it stopped (no result yet)
    (stopped,) = runs_by_kind(uri)["study"]
    assert (stopped.info.status, stopped.data.tags["hpsearch.study_state"]) == ("FINISHED", "stopped")

    for attempt in range(2):  # each run starts one trial, then the box is reached and the winner so far is scored
        result = runner.invoke(app, ["run", str(study), "--time-box", "1e-06", "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["time_box"]["scored"] and summary["best"]["test_acc"] is not None and not summary["complete"]
        assert "the best trial so far is scored on the test split" in result.stderr
        (study_run,) = runs_by_kind(uri)["study"]
        assert study_run.info.status == "FINISHED" and "test_acc" in study_run.data.metrics, attempt
        assert study_run.data.tags["hpsearch.study_state"] == "stopped"  # the box ended it: not complete yet
        assert summary["tracking"]["model"] is not None


def test_tracking_can_be_disabled(study, tmp_path):
    write_spec(tmp_path, "tracked", tracking={"enabled": False})
    assert runner.invoke(app, ["run", str(study)]).exit_code == 0
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_report_writes_plots_and_summary_without_mlflow(study, tmp_path):
    write_spec(tmp_path, "tracked", tracking={"enabled": False})
    runner.invoke(app, ["run", str(study)])
    result = runner.invoke(app, ["report", str(study), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"summary.md", "best_config.yaml", "metric_vs_params.png", "best_loss_curve.png"} <= files
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "**Winner:**" in summary and "| random | complete | 6/6 |" in summary
    assert (tmp_path / "report" / "best_loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_credentials_never_reach_mlflow(study, tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_STORAGE", f"sqlite:///{tmp_path / 'runs' / 'tracked.db'}?password=SECRET")
    result = runner.invoke(app, ["run", str(study), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert result.exit_code == 0, result.output
    assert "SECRET" not in result.output
    for runs in runs_by_kind(f"sqlite:///{tmp_path / 'm.db'}").values():
        for run in runs:
            assert "SECRET" not in json.dumps([run.data.params, run.data.tags])


def test_sync_and_reruns_of_a_finished_study_leave_what_is_right_alone(study, tmp_path, monkeypatch):
    """The report already in MLflow, sync trains nothing (the winner's retraining is what makes a report)."""
    from hpsearch.engine import training

    first = runner.invoke(app, ["run", str(study)])
    assert first.exit_code == 0, first.output
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)

    def parents() -> dict[str, tuple]:
        kinds = runs_by_kind(uri)
        return {run.info.run_id: (run.info.status, run.info.end_time) for kind in ("study", "phase")
                for run in kinds[kind]}

    before = parents()
    assert {status for status, _ in before.values()} == {"FINISHED"}

    def trained(*args, **kwargs):
        raise AssertionError("sync trained the winner again, with its report already in MLflow")

    with monkeypatch.context() as patched:
        patched.setattr(training, "train_once", trained)
        synced = runner.invoke(app, ["sync", str(study)])
        assert synced.exit_code == 0 and "0 runs created, 0 runs ended" in synced.output, synced.output
        again = runner.invoke(app, ["run", str(study)])
        assert again.exit_code == 0 and "already complete" in again.output
    assert parents() == before  # end times untouched: the UI's durations stay true

    # the experiment opens on its runs in MLflow 3's UI, and the summary names the model to predict with
    experiment = client.get_experiment_by_name("tracked")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "hpsearch predict" in first.output
    model = json.loads(runner.invoke(app, ["run", str(study), "--json"]).stdout)["tracking"]["model"]
    assert Path(model).is_file() and runs_by_kind(uri)["study"][0].info.run_id in model
    scored = runner.invoke(app, ["predict", str(study), "--model", model, "--split", "test", "--json"])
    assert scored.exit_code == 0 and json.loads(scored.output)["split"] == "test", scored.output


def test_a_run_left_running_is_ended_by_sync_and_counted(study, tmp_path):
    assert runner.invoke(app, ["run", str(study)]).exit_code == 0
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    study_run = runs_by_kind(uri)["study"][0].info.run_id
    MlflowClient(uri).update_run(study_run, status="RUNNING")  # as a killed process leaves it
    synced = runner.invoke(app, ["sync", str(study)])
    assert synced.exit_code == 0 and "0 runs created, 1 runs ended" in synced.output, synced.output
    assert MlflowClient(uri).get_run(study_run).info.status == "FINISHED"


def test_a_tracking_uri_naming_the_study_storage_is_refused_before_anything_is_written(study, tmp_path, monkeypatch):
    assert runner.invoke(app, ["run", str(study), "--max-trials", "2", "--set", "tracking.enabled=false"]).exit_code == 0
    files = sorted(p.name for p in (tmp_path / "runs").iterdir())
    before = (tmp_path / "runs" / "tracked.db").read_bytes()
    storage = "the study storage 'sqlite:///runs/tracked.db' (MLflow needs one of its own)"
    cases = [
        (["run", "--tracking-uri", "sqlite:///runs/../runs/tracked.db"], {},
         f"--tracking-uri must name a database other than {storage}. Got 'sqlite:///runs/../runs/tracked.db' "
         "instead."),
        (["sync", "--tracking-uri", "sqlite:///./runs/tracked.db"], {}, "--tracking-uri must name a database other"),
        (["run"], {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/runs/tracked.db"},
         "$MLFLOW_TRACKING_URI must name a database other than"),
        (["run", "--set", "tracking.uri=sqlite:///runs/tracked.db"], {},
         f"{study}: tracking.uri must name a database other than {storage}."),
        (["run", "--storage", "sqlite:///runs/mlflow.db"], {},
         "storage 'sqlite:///runs/mlflow.db' is the file MLflow's database takes by default (mlflow.db beside the "
         "storage); give the storage another file name, or MLflow another database with --tracking-uri."),
        # refused by the parent of the workers, before it starts the study afresh
        (["run", "--workers", "2", "--force-new-phase", "--set", "defaults.num_iters=80",
          "--tracking-uri", "sqlite:///runs/tracked.db"], {}, "--tracking-uri must name a database other than"),
        # refused before the storage's folder is made
        (["run", "--storage", "sqlite:///fresh/s.db", "--tracking-uri", "sqlite:///fresh/s.db"], {},
         "--tracking-uri must name a database other than"),
    ]
    for args, env, message in cases:
        with monkeypatch.context() as patched:
            for name, value in env.items():
                patched.setenv(name, value)
            result = runner.invoke(app, [args[0], str(study), *args[1:]])
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), (args, result.stderr)
    assert (tmp_path / "runs" / "tracked.db").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == files  # no mlflow.db, no artifacts
    assert not (tmp_path / "fresh").exists()


def test_sync_fills_in_a_study_whose_namesake_in_another_storage_shares_the_mlflow_database(study, tmp_path):
    """Two storages, one study name, one MLflow database: the second study's trial runs are its own, not the first's
    (the runs are matched under this storage's phase runs, not across the experiment)."""
    uri = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    first = runner.invoke(app, ["run", str(study), "--tracking-uri", uri])
    assert first.exit_code == 0, first.output
    other = f"sqlite:///{tmp_path / 'other.db'}"
    untracked = runner.invoke(app, ["run", str(study), "--storage", other, "--set", "tracking.enabled=false"])
    assert untracked.exit_code == 0, untracked.output
    trials = len(runs_by_kind(uri)["trial"])
    synced = runner.invoke(app, ["sync", str(study), "--storage", other, "--tracking-uri", uri])
    assert synced.exit_code == 0, synced.output
    assert f"synced {study}: {trials} runs created" in synced.stdout  # the same trials, in its own storage
    kinds = runs_by_kind(uri)
    assert len(kinds["study"]) == 2 and len(kinds["phase"]) == 4 and len(kinds["trial"]) == 2 * trials
    again = runner.invoke(app, ["sync", str(study), "--storage", other, "--tracking-uri", uri])
    assert "0 runs created, 0 runs ended" in again.stdout, again.output


def test_a_trial_run_a_mending_worker_created_is_not_logged_again_by_the_trial_s_own_process(tmp_path):
    """With workers, a starting worker mends the trials another worker's tracking process has not logged yet; that
    process, catching up, must not log the run again: one writer per run, every (metric, step) once. In-process:
    the race is the order of two processes' calls, replayed here."""
    from hpsearch.backends.base import TrainResult
    from hpsearch.engine.driver import Driver
    from hpsearch.engine.listener import TrialInfo
    from hpsearch.spec.build import load_spec
    from hpsearch.tracking.logger import MlflowLogger

    spec = load_spec(write_spec(tmp_path, "tracked", phases=[TINY_STUDY["phases"][0]], tracking=TRACKED))
    driver = Driver(spec, f"sqlite:///{tmp_path / 'study.db'}", echo=lambda line: None)
    driver.run()
    rows = driver.trials()
    phases = {row["phase"]: {"study_name": row["optuna_study"]} for row in rows}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    behind, mender = MlflowLogger(spec, uri), MlflowLogger(spec, uri)
    behind.on_study_start(spec, driver.phases.shared())
    behind.on_phase_start(spec.phases[0], phases["random"])
    mender.on_study_start(spec, driver.phases.shared())
    mender.on_existing_trials(rows, phases)  # the other worker, starting: every finished trial's run, whole
    row = rows[0]
    trial = TrialInfo(1, row["number"], row["point"], row["params"], row["seed"], row["state"], row["value"])
    behind.on_trial_start(spec.phases[0], trial, {**spec.defaults, **row["params"]}, row["seed"], None)
    history = row["epoch_history"]
    behind.on_epochs(1, [(epoch, {key: values[epoch] for key, values in history.items()})
                         for epoch in range(len(history["val_acc"]))])
    behind.on_trial_end(spec.phases[0], trial, TrainResult(metrics=row["metrics"], seconds=0.1), None, {"done": 1})
    client = MlflowClient(uri)
    (run,) = [r for r in runs_by_kind(uri)["trial"] if r.data.tags["trial_number"] == str(row["number"])]
    for key in ("val_acc", "loss", f"final_{spec.objective.metric}"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps and len(steps) == len(set(steps)), (key, steps)


def test_raising_n_trials_extends_a_phase_and_its_tracking(study, tmp_path):
    """docs/concepts.md's way to extend a phase: MLflow's params never change, so the phase's settings are tags, and
    the new trials' runs are logged as they run (the tracking process: a subprocess, as in every tracked run)."""
    assert runner.invoke(app, ["run", str(study)]).exit_code == 0
    raised = runner.invoke(app, ["run", str(study), "--phase", "random", "--set", "phases.0.n_trials=9"])
    assert raised.exit_code == 0 and "tracking:" not in raised.output, raised.output
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    kinds = runs_by_kind(uri)
    (random_run,) = [run for run in kinds["phase"] if run.data.tags["hpsearch.phase"] == "random"]
    assert random_run.data.tags["n_trials"] == "9" and "n_trials" not in random_run.data.params
    random_trials = optuna.load_study(study_name="tracked.random",
                                      storage=f"sqlite:///{tmp_path / 'runs' / 'tracked.db'}").trials
    assert len([run for run in kinds["trial"] if run.data.tags["phase"] == "random"]) == len(random_trials) == 9


def test_a_trial_run_lasts_as_its_trial_did_however_late_the_tracking_process_logs_it(tmp_path):
    """The tracking process applies each call with the time the study process made it: a run's start and end are its
    trial's, not when a busy tracking process got to them (in-process: the calls' times are given)."""
    from hpsearch.engine.driver import Driver
    from hpsearch.engine.listener import TrialInfo
    from hpsearch.spec.build import load_spec
    from hpsearch.tracking.logger import MlflowLogger

    spec = load_spec(write_spec(tmp_path, "tracked", phases=[TINY_STUDY["phases"][0]], tracking=TRACKED))
    driver = Driver(spec, f"sqlite:///{tmp_path / 'study.db'}", echo=lambda line: None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MlflowLogger(spec, uri)
    logger.on_study_start(spec, driver.phases.shared())
    logger.on_phase_start(spec.phases[0], {"study_name": "tracked.random"})
    trial = TrialInfo(1, 0, 0, {"learning_rate": 0.1}, 7, "COMPLETE", 0.5)
    logger.sent_at = 1_700_000_000.0
    logger.on_trial_start(spec.phases[0], trial, dict(spec.defaults), 7, None)
    logger.sent_at = 1_700_000_005.25  # the trial ended 5.25 s later; this process may apply it any time after
    logger.on_trial_end(spec.phases[0], trial, None, None, {"done": 1})
    (run,) = runs_by_kind(uri)["trial"]
    assert (run.info.start_time, run.info.end_time) == (1_700_000_000_000, 1_700_000_005_250)


def test_an_mlflow_store_a_killed_tracking_process_left_half_made_is_made_again(tmp_path):
    """Ctrl-C kills a tracking process at once, possibly while it makes MLflow's tables: the next run's tracking
    makes them again instead of failing on them (in-process: the half-made store is made by hand)."""
    import sqlite3

    from hpsearch.engine.driver import Driver
    from hpsearch.spec.build import load_spec
    from hpsearch.tracking.logger import MlflowLogger

    database = tmp_path / "mlflow.db"
    with sqlite3.connect(database) as half:  # some of MLflow's tables, no schema version, no run
        half.execute("CREATE TABLE secrets (secret_id VARCHAR(36) PRIMARY KEY)")
        half.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY)")
    spec = load_spec(write_spec(tmp_path, "tracked", phases=[TINY_STUDY["phases"][0]], tracking=TRACKED))
    driver = Driver(spec, f"sqlite:///{tmp_path / 'study.db'}", echo=lambda line: None)
    logger = MlflowLogger(spec, f"sqlite:///{database}")
    logger.on_study_start(spec, driver.phases.shared())
    assert not logger._reported and runs_by_kind(f"sqlite:///{database}")["study"]


def test_a_new_mlflow_store_is_a_copy_of_the_empty_one_mlflow_makes(tmp_path, monkeypatch):
    """A new local store starts as a copy of an empty one MLflow made (kept in the cache folder): the same tables and
    schema version as MLflow's own, its Default experiment's artifacts beside it, and a study logs to it; with no
    cache folder to keep one, MLflow makes the store itself. In-process: two stores, one made by MLflow alone."""
    import sqlite3

    from hpsearch.engine.driver import Driver
    from hpsearch.spec.build import load_spec
    from hpsearch.tracking import localstore
    from hpsearch.tracking.logger import MlflowLogger

    def schema(database: Path) -> tuple:  # MLflow orders a table's constraints differently from run to run
        with contextlib.closing(sqlite3.connect(database)) as connection:
            tables = [(name, sorted((sql or "").splitlines()))
                      for name, sql in connection.execute("SELECT name, sql FROM sqlite_master ORDER BY name")]
            return tables, connection.execute("SELECT * FROM alembic_version").fetchall()

    def default_location(database: Path) -> str:
        with contextlib.closing(sqlite3.connect(database)) as connection:
            return connection.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()[0]

    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    spec = load_spec(write_spec(tmp_path, "tracked", phases=[TINY_STUDY["phases"][0]], tracking=TRACKED))
    driver = Driver(spec, f"sqlite:///{tmp_path / 'study.db'}", echo=lambda line: None)
    (tmp_path / "a").mkdir()
    copied = tmp_path / "a" / "mlflow.db"
    stale = tmp_path / "a" / ".mlflow.db.killed.partial"  # a copy a killed process left an hour ago
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600,) * 2)
    logger = MlflowLogger(spec, f"sqlite:///{copied}")
    logger.on_study_start(spec, driver.phases.shared())
    assert not logger._reported and runs_by_kind(f"sqlite:///{copied}")["study"]
    (template,) = (tmp_path / "cache").iterdir()
    assert template.name.startswith(f"mlflow-{mlflow.__version__}-") and template.name.endswith("-empty.db")
    assert not list((tmp_path / "a").glob("*.partial"))  # the stale one swept, this copy's linked and removed
    assert default_location(copied) == (tmp_path / "a" / "mlartifacts" / "0").as_uri()
    own = tmp_path / "own.db"
    MlflowClient(tracking_uri=f"sqlite:///{own}").search_experiments(max_results=1)
    assert schema(copied) == schema(own)
    assert stat.S_IMODE(copied.stat().st_mode) == stat.S_IMODE(own.stat().st_mode)  # not mkstemp's owner-only
    template.write_bytes(template.read_bytes()[:4096])  # damaged: MLflow makes the store, the template goes
    (tmp_path / "b").mkdir()
    made = tmp_path / "b" / "mlflow.db"
    logger = MlflowLogger(spec, f"sqlite:///{made}")
    logger.on_study_start(spec, driver.phases.shared())
    assert not logger._reported and runs_by_kind(f"sqlite:///{made}")["study"] and not template.exists()
    assert schema(made) == schema(own) and default_location(made) != (tmp_path / "b" / "mlartifacts" / "0").as_uri()
    monkeypatch.setattr(localstore, "cache_dir", lambda: Path("/proc/no-cache"))  # nothing can be kept
    (tmp_path / "c").mkdir()
    made = tmp_path / "c" / "mlflow.db"
    logger = MlflowLogger(spec, f"sqlite:///{made}")
    logger.on_study_start(spec, driver.phases.shared())
    assert not logger._reported and runs_by_kind(f"sqlite:///{made}")["study"] and schema(made) == schema(own)


def test_a_trial_s_run_has_the_same_tags_logged_live_or_rebuilt_by_sync(tmp_path):
    """One tag builder for both ways a trial's run is made: a TPE trial (no grid point) logged by its worker and
    rebuilt from the storage by a sync carry the same tags, but the sync's own mark. In-process: two loggers on two
    MLflow stores, the calls of a worker and of a sync."""
    from hpsearch.backends.base import TrainResult
    from hpsearch.engine.driver import Driver
    from hpsearch.engine.listener import TrialInfo
    from hpsearch.spec.build import load_spec
    from hpsearch.tracking.logger import MlflowLogger

    tpe = {"name": "tpe", "sampler": "tpe", "n_trials": 2, "space": TINY_STUDY["phases"][0]["space"]}
    spec = load_spec(write_spec(tmp_path, "tagged", phases=[tpe], tracking=TRACKED))
    with Driver(spec, f"sqlite:///{tmp_path / 'study.db'}", echo=lambda line: None) as driver:
        driver.run()
        rows = driver.trials()
        shared = driver.phases.shared()
    phases = {row["phase"]: {"study_name": row["optuna_study"]} for row in rows}
    live_uri, synced_uri = f"sqlite:///{tmp_path / 'live.db'}", f"sqlite:///{tmp_path / 'synced.db'}"
    live, mender = MlflowLogger(spec, live_uri), MlflowLogger(spec, synced_uri)
    live.on_study_start(spec, shared)
    live.on_phase_start(spec.phases[0], phases["tpe"])
    row = rows[0]
    trial = TrialInfo(1, row["number"], row["point"], row["params"], row["seed"], row["state"], row["value"])
    live.on_trial_start(spec.phases[0], trial, {**spec.defaults, **row["params"]}, row["seed"], None)
    result = TrainResult(metrics=row["metrics"], seconds=0.1, device=row["device"])
    live.on_trial_end(spec.phases[0], trial, result, None, {"done": 1})
    mender.on_study_start(spec, shared)
    mender.on_existing_trials(rows, phases)

    def tags(uri: str) -> dict[str, str]:
        (run,) = [r for r in runs_by_kind(uri, "tagged")["trial"] if r.data.tags["trial_number"] == str(row["number"])]
        return {key: value for key, value in run.data.tags.items()
                if not key.startswith("mlflow.") and key != "hpsearch.synced"}

    assert row["point"] is None and tags(live_uri)["grid_point"] == "" and tags(live_uri)["device"] == "cpu"
    assert tags(live_uri) == tags(synced_uri)

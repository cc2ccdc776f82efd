"""The study driver on a temporary SQLite storage: phases, derived grids, exactly-once, resume, NaN, budgets."""

from __future__ import annotations

import collections
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.engine.driver import Budget, Driver
from hpsearch.engine.listener import StudyListener
from hpsearch.engine.summary import TimeBox
from hpsearch.errors import SpecError, UserError
from hpsearch.spec.build import load_spec
from hpsearch.storage.records import StateTable
from hpsearch.storage.urls import StorageError
from tests.conftest import TINY_STUDY, assert_exactly_once, write_spec


def driver_for(path: Path, tmp_path: Path, **kwargs) -> Driver:
    return Driver(load_spec(path), f"sqlite:///{tmp_path / 'study.db'}", echo=lambda m: None, **kwargs)


def phase_trials(tmp_path: Path, phase: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=f"tiny.{phase}", storage=f"sqlite:///{tmp_path / 'study.db'}").trials


def test_random_then_derived_grid_then_resume_runs_nothing(tmp_path):
    spec = write_spec(tmp_path)
    summary = driver_for(spec, tmp_path).run()
    assert summary.complete
    random_status, grid_status = summary.phases
    assert random_status["done"] == random_status["total"] == 6
    grid = grid_status["grid"]
    assert set(grid) == {"learning_rate", "hidden_size"} and grid_status["total"] == len(grid["learning_rate"]) * len(grid["hidden_size"])
    assert_exactly_once(phase_trials(tmp_path, "grid"), grid_status["total"])
    assert_exactly_once(phase_trials(tmp_path, "random"), 6)
    best = summary.best
    assert best["test_acc"] is not None and best["value"] == max(
        t.value for p in ("random", "grid") for t in phase_trials(tmp_path, p) if t.value is not None
        and t.state == optuna.trial.TrialState.COMPLETE)

    messages = []
    again = Driver(load_spec(spec), f"sqlite:///{tmp_path / 'study.db'}", echo=messages.append).run()
    assert "already complete" in messages[0]
    assert len(phase_trials(tmp_path, "grid")) == grid_status["total"] and again.best == best


def test_derived_grid_is_stored_and_reused_when_the_source_grows(tmp_path):
    spec = write_spec(tmp_path)
    first = driver_for(spec, tmp_path).run().phases[1]["grid"]
    raw = yaml.safe_load(spec.read_text())
    raw["phases"][0]["n_trials"] = 9  # more random trials later must not change the stored grid
    spec.write_text(yaml.safe_dump(raw))
    summary = driver_for(spec, tmp_path).run()
    assert summary.phases[0]["done"] == 9 and summary.phases[1]["grid"] == first


def test_trials_are_reproducible_from_their_seed(tmp_path):
    from hpsearch.engine.training import load_data, train_once

    spec = write_spec(tmp_path)
    driver_for(spec, tmp_path).run()
    trial = next(t for t in phase_trials(tmp_path, "grid") if t.state == optuna.trial.TrialState.COMPLETE)
    loaded = load_spec(spec)
    again = train_once(loaded, load_data(loaded), trial.params, seed=trial.user_attrs["seed"])
    assert again.val_acc == trial.value


def test_nan_configuration_never_becomes_best_and_the_study_continues(tmp_path):
    spec = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "max_retries": 2,
                                         "grid": {"learning_rate": [1e12, 0.05, 0.1]}}],
                      defaults={**TINY_STUDY["defaults"], "std": 1.0})
    summary = driver_for(spec, tmp_path).run()
    trials = phase_trials(tmp_path, "grid")
    diverged = [t for t in trials if t.params["learning_rate"] == 1e12]
    assert len(diverged) == 1 and diverged[0].state == optuna.trial.TrialState.PRUNED  # not retried
    assert diverged[0].user_attrs["failure"].startswith("diverged: loss became")
    assert summary.complete and summary.best["params"]["learning_rate"] != 1e12
    assert_exactly_once(trials, 3)


def test_failed_points_are_retried_up_to_max_retries(tmp_path, monkeypatch):
    from hpsearch.engine import trials as driver_module

    calls = collections.Counter()
    real = driver_module.start_training

    def flaky(spec, data, params, **kwargs):
        calls[params["hidden_size"]] += 1
        if params["hidden_size"] == 8 and calls[8] <= 1:
            raise RuntimeError("transient")
        if params["hidden_size"] == 4:
            raise RuntimeError("always")
        return real(spec, data, params, **kwargs)

    monkeypatch.setattr(driver_module, "start_training", flaky)
    spec = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "max_retries": 2,
                                         "grid": {"hidden_size": [4, 8, 16]}}])
    summary = driver_for(spec, tmp_path).run(only_phase="grid")
    status = summary.phases[0]
    assert calls == {4: 3, 8: 2, 16: 1}  # 1 + max_retries attempts for the point that always fails
    assert status["failed_points"] == [0] and status["done"] == 2 and status["state"] == "complete"
    # the failure its retry made good no longer counts: failed is what stands (the trials, all of them, beside it)
    assert (status["failed"], status["failed_trials"]) == (3, 4)


def test_budget_stops_cleanly_and_a_later_run_resumes(tmp_path):
    spec = write_spec(tmp_path)
    summary = driver_for(spec, tmp_path).run(Budget(max_trials=4))
    assert not summary.complete and summary.phases[0]["done"] == 4
    messages = []
    summary = Driver(load_spec(spec), f"sqlite:///{tmp_path / 'study.db'}", echo=messages.append).run(
        Budget(max_trials=4))
    assert messages[0] == "[random] resuming: 4 of 6 done", messages
    assert summary.phases[0]["done"] == 6 and summary.phases[1]["done"] == 2
    summary = driver_for(spec, tmp_path).run()
    assert summary.complete
    assert_exactly_once(phase_trials(tmp_path, "random"), 6)
    assert_exactly_once(phase_trials(tmp_path, "grid"), summary.phases[1]["total"])


def test_a_trial_budget_spent_at_the_study_s_last_trial_scores_its_winner(tmp_path):
    spec = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "grid": {"hidden_size": [4, 8, 16]}}])
    messages = []
    driver = Driver(load_spec(spec), f"sqlite:///{tmp_path / 'study.db'}", echo=messages.append)
    summary = driver.run(Budget(max_trials=3))
    assert summary.complete and summary.best["test_acc"] is not None
    assert not any("Budget reached" in m for m in messages), messages  # nothing is left to resume
    summary = driver_for(spec, tmp_path).run(Budget(max_trials=2))  # and the study ran nothing more
    assert summary.phases[0]["done"] == 3 and len(phase_trials(tmp_path, "grid")) == 3


class Clock:
    """A clock for a Budget that moves only when a trial ends: every trial lasts ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        return self.now


class Ticking(StudyListener):
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_trial_end(self, *args, **kwargs) -> None:
        self.clock.now += self.clock.step


def test_a_time_box_ends_with_the_winner_so_far_scored_and_a_later_run_goes_on(tmp_path):
    spec = write_spec(tmp_path)
    clock = Clock(step=10.0)
    messages = []
    driver = Driver(load_spec(spec), f"sqlite:///{tmp_path / 'study.db'}", echo=messages.append,
                    listener=Ticking(clock))
    summary = driver.run(Budget(time_box=100.0, clock=clock))
    # a trial starts only while it still fits (10 s each; the winner's model is kept, so no retraining): 9 trials
    random_status, grid_status = summary.phases
    assert (random_status["done"], grid_status["done"]) == (6, 3) and grid_status["total"] > 3
    assert not summary.complete
    assert ("Time box of 1 min 40 s reached during phase 'grid' after 9 trials, 10 s before its end (less than its "
            "next trial's expected 10 s, the median of the phase's recent trials): the best trial so far is scored on "
            "the test split.") in messages[-1], messages
    assert summary.time_box == TimeBox(seconds=100.0, scored=True)
    best = summary.best
    finished = [t for p in ("random", "grid") for t in phase_trials(tmp_path, p)
                if t.state == optuna.trial.TrialState.COMPLETE]
    assert best["value"] == max(t.value for t in finished) and best["test_acc"] is not None  # scored on test
    summary = driver_for(spec, tmp_path).run()  # no box: the study goes on, and its end scores the winner again
    assert summary.complete
    assert_exactly_once(phase_trials(tmp_path, "grid"), grid_status["total"])
    assert summary.best["test_acc"] is not None
    assert "partial" not in StateTable(f"sqlite:///{tmp_path / 'study.db'}").get("tiny", "result")


def test_only_the_time_box_finalises_an_unfinished_study_and_never_under_phase(tmp_path):
    spec = write_spec(tmp_path)
    summary = driver_for(spec, tmp_path).run(Budget(max_trials=2, time_box=1e6))  # the trial count stopped it
    assert "test_acc" not in summary.best
    messages = []
    driver = Driver(load_spec(spec), f"sqlite:///{tmp_path / 'study.db'}", echo=messages.append)
    summary = driver.run(Budget(time_box=1e-6, clock=lambda: 0.0), only_phase="random")
    assert "test_acc" not in summary.best and summary.phases[0]["done"] == 3
    assert "after 1 trial, " in messages[-1] and messages[-1].endswith("; rerun the same command to go on."), messages


def test_a_time_box_counts_the_stored_trials_lengths_from_a_run_s_first_trial(tmp_path):
    spec = write_spec(tmp_path)
    driver_for(spec, tmp_path).run(Budget(max_trials=2))
    messages = []
    driver = Driver(load_spec(spec), f"sqlite:///{tmp_path / 'study.db'}", echo=messages.append)
    # no time passes (this run's trial lasts 0 s by its clock), but a box shorter than the stored trials leaves no
    # room for a second trial: the median of the two stored and this run's one is a stored one's length
    summary = driver.run(Budget(time_box=1e-6, clock=lambda: 0.0))
    assert summary.phases[0]["done"] == 3 and summary.best["test_acc"] is not None
    assert "after 1 trial, 1e-06 s before its end" in messages[-1]
    assert "): the best trial so far is scored on the test split" in messages[-1]


def test_every_run_starts_a_trial_however_short_its_time_box(tmp_path):
    """The same command rerun goes on with the study: each run's first trial starts, although every stored trial
    is longer than the box (and the box is gone before the run reaches its first trial)."""
    from hpsearch import api

    spec = write_spec(tmp_path, tracking={"enabled": False},
                      phases=[{"name": "grid", "sampler": "grid", "grid": {"hidden_size": [4, 8, 12]}}])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for run in (1, 2):
        result = api.run(spec, storage=storage, time_box=1e-6, echo=lambda m: None)
        assert result.summary.phases[0]["done"] == run and result.summary.time_box.scored
        assert not result.complete and result.test_scores
    assert api.run(spec, storage=storage, time_box=1e-6, echo=lambda m: None).complete


def test_changing_the_grid_is_refused_with_a_diff_and_the_storage_untouched(tmp_path):
    spec = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "grid": {"hidden_size": [4, 8]}}])
    driver_for(spec, tmp_path).run()
    before = (tmp_path / "study.db").read_bytes()
    changed = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "grid": {"hidden_size": [4, 12]}}])
    with pytest.raises(SpecError, match=r"phase 'grid' changed since it started: grid.hidden_size: \[4, 8\] -> \[4, 12\]"):
        driver_for(changed, tmp_path).run()
    assert (tmp_path / "study.db").read_bytes() == before
    summary = driver_for(changed, tmp_path, force_new_phase=True).run()
    assert summary.complete and summary.phases[0]["grid"] == {"hidden_size": [4, 12]}
    assert len(phase_trials(tmp_path, "grid")) == 2  # the old phase's trials are kept under their study


def test_changing_the_defaults_is_refused(tmp_path):
    spec = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "grid": {"hidden_size": [4]}}])
    driver_for(spec, tmp_path).run()
    changed = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "grid": {"hidden_size": [4]}}],
                         defaults={**TINY_STUDY["defaults"], "num_iters": 30})
    with pytest.raises(SpecError, match=r"defaults.num_iters: 20 -> 30"):
        driver_for(changed, tmp_path).run()


def test_a_study_stored_before_a_backend_option_existed_resumes_while_the_option_is_at_its_default(tmp_path):
    from hpsearch.storage.records import StateTable

    spec = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "grid": {"hidden_size": [4, 8]}}])
    driver_for(spec, tmp_path).run(Budget(max_trials=1))
    table = StateTable(f"sqlite:///{tmp_path / 'study.db'}")
    layout = table.get("tiny", "layout")
    del layout["context"]["defaults"]["dtype"]  # as an older hpsearch, whose backend had no 'dtype', stored it
    table.put("tiny", "layout", layout)
    assert driver_for(spec, tmp_path).run().complete  # float32 is the default: the same training as before
    table.put("tiny", "layout", layout)
    with pytest.raises(SpecError, match=r'defaults.dtype: added "float64"'):
        driver_for(write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "grid": {"hidden_size": [4, 8]}}],
                              defaults={**TINY_STUDY["defaults"], "dtype": "float64"}), tmp_path).run()


def test_tpe_phase_runs_n_trials(tmp_path):
    spec = write_spec(tmp_path, phases=[{**TINY_STUDY["phases"][0], "name": "tpe", "sampler": "tpe", "n_trials": 5}])
    summary = driver_for(spec, tmp_path).run()
    assert summary.complete and summary.phases[0]["complete"] + summary.phases[0]["pruned"] == 5


def test_pruning_reports_each_epoch(tmp_path):
    spec = write_spec(tmp_path, pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                      defaults={**TINY_STUDY["defaults"], "num_iters": 40},
                      phases=[{"name": "grid", "sampler": "grid", "grid": {"learning_rate": [0.3, 1e-5, 1e-5, 2e-5]}}])
    driver_for(spec, tmp_path).run()
    trials = phase_trials(tmp_path, "grid")
    epochs = 40 // (200 // 50)  # num_iters / iterations per epoch (200 rows in batches of 50)
    for t in trials:
        reported = sorted(t.intermediate_values)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert reported == list(range(epochs)), reported
        else:  # stopped right after the report of the epoch that lost to the median
            assert t.state == optuna.trial.TrialState.PRUNED and reported == list(range(len(reported))), reported
            assert 0 < len(reported) < epochs and t.user_attrs["failure"] == f"pruned at epoch {reported[-1]}"
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in trials)


def test_bad_storage_url(tmp_path):
    from hpsearch.storage.urls import resolve_storage_url

    with pytest.raises(StorageError, match="is not a database URL"):
        resolve_storage_url("not a url", None, "x")
    with pytest.raises(StorageError, match="unsupported database 'redis'"):
        resolve_storage_url("redis://localhost/0", None, "x")
    with pytest.raises(StorageError, match=r"'postgresql://u:\*\*\*@127.0.0.1:1/db' cannot be opened") as caught:
        Driver(load_spec(write_spec(tmp_path)), "postgresql://u:SECRET@127.0.0.1:1/db", echo=lambda m: None)
    assert "SECRET" not in str(caught.value) and "\n" not in str(caught.value)


def test_postgresql_urls_use_the_declared_psycopg_3_driver():
    import tomllib

    from sqlalchemy.engine import make_url

    from packaging.requirements import Requirement

    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    requirements = {r.name: r for r in map(Requirement, declared["project"]["dependencies"])}
    assert "psycopg2" not in requirements and requirements["psycopg"].specifier.contains("3.1")
    # SQLAlchemy 2.0 maps postgresql:// to psycopg2, which is not installed: the floor must exclude it
    assert not requirements["sqlalchemy"].specifier.contains("2.0.40")
    assert make_url("postgresql://me@127.0.0.1/studies").get_dialect().driver == "psycopg"


def test_derived_grid_needs_complete_source_trials(tmp_path):
    spec = write_spec(tmp_path)
    with pytest.raises(UserError, match="cannot derive its grid"):
        driver_for(spec, tmp_path).run(only_phase="grid")


def test_list_valued_categoricals_round_trip_through_the_storage(tmp_path):
    pytest.importorskip("torch")
    spec = write_spec(tmp_path, model={"backend": "torch"},
                      defaults={"hidden_sizes": [8], "num_epochs": 2, "batch_size": 50, "init": "kaiming",
                                "device": "cpu"},
                      phases=[{"name": "random", "sampler": "random", "n_trials": 3,
                               "space": {"hidden_sizes": {"type": "categorical", "choices": [[8], [8, 8], [4, 4, 4]]}}},
                              {"name": "grid", "sampler": "grid", "grid": {"from": "random", "top_k": 2, "points": 2}}])
    summary = driver_for(spec, tmp_path).run()
    assert summary.complete
    assert isinstance(summary.best["params"]["hidden_sizes"], list)
    assert all(isinstance(v, list) for v in summary.phases[1]["grid"]["hidden_sizes"])
    rows = driver_for(spec, tmp_path).trials()
    assert all(isinstance(r["params"]["hidden_sizes"], list) for r in rows)
    assert summary.best["config"]["hidden_sizes"] == summary.best["params"]["hidden_sizes"]

"""Budget ladders: the grouping of a phase's points, and a grid phase whose ladders train once."""

from __future__ import annotations

import optuna
import pytest

from hpsearch.engine.driver import Driver
from hpsearch.engine.training import load_data, train_once
from hpsearch.errors import SpecError
from hpsearch.search.ladders import ladders
from hpsearch.spec.build import load_spec
from hpsearch.storage.records import LADDER_STOPPED
from tests.conftest import (TINY_STUDY, assert_exactly_once, gated_study, kill_at_the_gate_and_rerun, study_trials,
                            write_spec)

# 200 training rows / 50 = 4 iterations an epoch: 6 stops inside the second epoch, 12 at the end of the third
GRID = {"learning_rate": [0.05, 0.3], "num_iters": [6, 12, 20]}
BUDGET_PHASE = {"name": "grid", "sampler": "grid", "budget": "num_iters", "grid": GRID}


def test_points_that_differ_only_in_the_budget_form_one_ladder():
    points = [{"lr": 0.1, "num_iters": 30}, {"lr": 0.1, "num_iters": 10}, {"lr": 0.2, "num_iters": 10},
              {"lr": 0.1, "num_iters": 20}, {"lr": 0.2}]
    found = ladders(points, "num_iters")
    assert found.rungs == ((1, 3, 0), (2,), (4,))  # ascending budget; a point without the budget stands alone
    assert found.of_point == (0, 0, 1, 0, 2)
    assert found.ladder(3) == (1, 3, 0)


@pytest.mark.parametrize("value", [0, -5, 2.5, True, "100"])
def test_a_budget_value_that_is_not_a_positive_whole_number_is_refused(value):
    with pytest.raises(ValueError, match="must be a whole number > 0 in every point"):
        ladders([{"num_iters": value}], "num_iters")


def run_study(tmp_path, **changes):
    spec = write_spec(tmp_path, **{"phases": [BUDGET_PHASE], **changes})
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary = Driver(load_spec(spec), url, echo=lambda m: None).run()
    return spec, summary, optuna.load_study(study_name="tiny.grid", storage=url).get_trials()


def test_every_rung_is_its_point_trained_alone_and_each_ladder_trains_once(tmp_path):
    spec, summary, trials = run_study(tmp_path)
    assert summary.complete
    assert_exactly_once(trials, 6)
    assert summary.examples == summary.phases[0]["examples"] == 2 * 20 * 50  # each ladder trains once
    loaded = load_spec(spec)
    data = load_data(loaded)
    for trial in trials:
        alone = train_once(loaded, data, trial.params, seed=trial.user_attrs["seed"])
        assert trial.value == alone.val_acc
        assert trial.user_attrs["metrics"] == alone.metrics
        assert trial.user_attrs["final_loss"] == alone.loss
        assert trial.user_attrs["epoch_history"]["val_acc"] == alone.val_acc_history
    by_rate = {}
    for trial in trials:
        by_rate.setdefault(trial.params["learning_rate"], []).append(trial)
    for rungs in by_rate.values():
        assert len({t.user_attrs["seed"] for t in rungs}) == 1  # a ladder's seed does not depend on the budget
        # each rung pays only for its stretch: the ladder costs its top rung, 20 iterations of 50 rows
        stretch = {t.params["num_iters"]: t.user_attrs["examples"] for t in rungs}
        assert stretch == {6: 6 * 50, 12: 6 * 50, 20: 8 * 50}


def test_a_grid_has_the_same_values_with_and_without_its_ladders(tmp_path):
    """Points that differ only in the trainable's budget share a seed in any grid phase: naming the budget changes
    what the grid costs, never what it finds."""
    (tmp_path / "ladders").mkdir()
    (tmp_path / "alone").mkdir()
    _, _, trials = run_study(tmp_path / "ladders")
    _, _, alone = run_study(tmp_path / "alone", phases=[{k: v for k, v in BUDGET_PHASE.items() if k != "budget"}])
    values = {tuple(sorted(t.params.items())): (t.value, t.user_attrs["seed"]) for t in trials}
    assert {tuple(sorted(t.params.items())): (t.value, t.user_attrs["seed"]) for t in alone} == values
    assert len({seed for _, seed in values.values()}) == 2  # one per ladder


def test_a_queued_trial_trains_with_the_seed_stored_with_it(tmp_path):
    """A phase queued by another version of hpsearch (or seeds derived otherwise) trains what its trials record."""
    from hpsearch.engine.budget import Budget

    spec = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "grid": GRID}])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    Driver(load_spec(spec), url, echo=lambda m: None).run(Budget(max_trials=1))
    storage = optuna.storages.RDBStorage(url)
    waiting = [t for t in optuna.load_study(study_name="tiny.grid", storage=storage).get_trials()
               if t.state == optuna.trial.TrialState.WAITING]
    storage.set_trial_user_attr(waiting[0]._trial_id, "seed", 12345)
    storage.engine.dispose()
    Driver(load_spec(spec), url, echo=lambda m: None).run()
    trial = next(t for t in optuna.load_study(study_name="tiny.grid", storage=url).get_trials()
                 if t.number == waiting[0].number)
    loaded = load_spec(spec)
    alone = train_once(loaded, load_data(loaded), trial.params, seed=12345)
    assert trial.user_attrs["seed"] == 12345
    assert (trial.value, trial.user_attrs["final_loss"]) == (alone.val_acc, alone.loss)


def test_a_grid_phase_seeded_per_point_keeps_its_seeds_and_says_so_once(tmp_path, monkeypatch):
    """A phase started before points that differ only in the budget shared a seed: a retried point trains with its
    first attempt's seed (a seed per point), not the shared one, and the run says so once."""
    from hpsearch.engine import phaserun
    from hpsearch.engine import trials as trials_module
    from hpsearch.engine.budget import Budget
    from hpsearch.search.grid import trial_seed

    spec = write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid", "max_retries": 1, "grid": GRID}])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with monkeypatch.context() as earlier:  # as the phase was seeded before
        earlier.setattr(phaserun.PhaseRunner, "_seed_identity", lambda self, phase, points, *rest: range(len(points)))
        Driver(load_spec(spec), url, echo=lambda m: None).run(Budget(max_trials=1))
    real, failed = trials_module.start_training, []

    def flaky(spec, data, params, **kwargs):
        if params == {"learning_rate": 0.3, "num_iters": 12} and not failed:
            failed.append(params)
            raise RuntimeError("transient")
        return real(spec, data, params, **kwargs)

    monkeypatch.setattr(trials_module, "start_training", flaky)
    messages = []
    assert Driver(load_spec(spec), url, echo=messages.append).run().complete and failed
    assert len([m for m in messages if "it keeps a seed per point" in m]) == 1, messages
    trials = optuna.load_study(study_name="tiny.grid", storage=url).get_trials()
    assert len(trials) == 7  # the retry among them
    assert all(t.user_attrs["seed"] == trial_seed(0, "grid", t.user_attrs["point"]) for t in trials)


def test_the_rungs_above_a_diverged_one_diverge_alike_without_training(tmp_path):
    from hpsearch.backends import DivergedError

    spec, summary, trials = run_study(
        tmp_path, defaults={**TINY_STUDY["defaults"], "std": 1.0},
        phases=[{**BUDGET_PHASE, "grid": {"learning_rate": [10.0, 0.05], "num_iters": [4, 12, 20]}}])
    assert summary.complete
    diverged = sorted((t for t in trials if t.params["learning_rate"] == 10.0), key=lambda t: t.params["num_iters"])
    assert [t.state for t in diverged] == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.PRUNED] * 2
    loaded = load_spec(spec)
    for trial in diverged[1:]:  # each one's stored history is what the point trained alone reports before it diverges
        reports = []
        with pytest.raises(DivergedError) as alone:
            train_once(loaded, load_data(loaded), trial.params, seed=trial.user_attrs["seed"],
                       on_epoch=lambda epoch, metrics: reports.append(metrics["val_acc"]))
        assert trial.user_attrs["failure"] == f"diverged: {alone.value}"
        assert trial.user_attrs["epoch_history"]["val_acc"] == reports and reports
    assert [t.user_attrs["examples"] for t in diverged][2] == 0  # it did not train


def test_a_rung_whose_training_fails_sends_the_rungs_above_back_to_the_queue(tmp_path, monkeypatch):
    from hpsearch.backends import numpy_twolayer

    advance = numpy_twolayer.Training.advance
    calls = []

    def failing_once(self, num_iters, **kwargs):
        calls.append(num_iters)
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        return advance(self, num_iters, **kwargs)

    monkeypatch.setattr(numpy_twolayer.Training, "advance", failing_once)
    _, summary, trials = run_study(tmp_path, phases=[{**BUDGET_PHASE, "grid": {"learning_rate": [0.05],
                                                                              "num_iters": [6, 12, 20]}}])
    assert summary.complete
    assert_exactly_once(trials, 3)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs["failure"] for t in failed] == ["RuntimeError: disk on fire", LADDER_STOPPED, LADDER_STOPPED]
    assert calls[:4] == [6, 6, 12, 20]  # the retries train as one ladder again (then the winner is retrained)


@pytest.mark.parametrize("phase, message", [
    ({**BUDGET_PHASE, "budget": "epochs"}, "'budget' must be one of the grid's parameters (learning_rate, num_iters)"),
    ({**BUDGET_PHASE, "grid": {**GRID, "hidden_size": [4, 8]}, "budget": "hidden_size"},
     "the budget must be 'num_iters', the parameter the numpy backend trains in stages along. Got 'hidden_size'"),
    ({"name": "random", "sampler": "random", "n_trials": 3, "budget": "num_iters",
      "space": {"num_iters": {"type": "int", "low": 5, "high": 20}}}, "'budget' goes with a schedule"),
    ([TINY_STUDY["phases"][0],  # a grid derived from it later: the budget's name is refused at once
      {**BUDGET_PHASE, "grid": {"from": "random", "top_k": 2, "points": 2}, "budget": "num_epochs"}],
     "the budget must be 'num_iters', the parameter the numpy backend trains in stages along. Got 'num_epochs'"),
])
def test_a_budget_the_trainable_cannot_train_in_stages_along_is_refused(tmp_path, phase, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(write_spec(tmp_path, phases=phase if isinstance(phase, list) else [phase]))


def test_a_torch_schedule_set_by_the_total_length_cannot_form_ladders(tmp_path):
    pytest.importorskip("torch")
    spec = write_spec(tmp_path, model={"backend": "torch"},
                      defaults={"hidden_sizes": [8], "schedule": "cosine", "device": "cpu", "num_epochs": 2},
                      phases=[{**BUDGET_PHASE, "budget": "num_epochs", "grid": {"num_epochs": [1, 2]}}])
    with pytest.raises(SpecError, match="budget 'num_epochs': schedule 'cosine' sets every step's learning rate"):
        load_spec(spec)


# A ladder's run killed between rungs --------------------------------------------------------------------------------

def test_a_killed_ladder_keeps_its_finished_rungs_and_its_others_run_exactly_once(tmp_path, gate):
    # a grace period no rerun outlasts: the rerun reaps the killed process's trials by its pid, never by an old beat
    spec = gated_study(tmp_path, "lad", free=1, budget="num_iters", grace_period=3600,
                       grid={"learning_rate": [0.1, 0.2], "num_iters": [10, 20, 30]})
    storage = f"sqlite:///{tmp_path / 'lad.db'}"
    # the ladder's first rung is stored and its second stage waits at the gate, the rungs above claimed: killed
    kill_at_the_gate_and_rerun(spec, storage, gate, calls=2, states={"COMPLETE": 1, "RUNNING": 2, "WAITING": 3})
    trials = study_trials(storage, "lad.grid")
    assert_exactly_once(trials, 6)
    failed = {t.params["num_iters"]: t.user_attrs["failure"] for t in trials if t.state.name == "FAIL"}
    assert failed.pop(30) == LADDER_STOPPED  # the rung above never trained: no retry used
    assert failed == {20: "worker died"}
    assert len(trials) == 8  # the first rung was not trained again
    for trial in trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == trial.params["learning_rate"] + trial.params["num_iters"] / 1000
    # the killed run's 2 stages, the two retried rungs as one ladder (2), the other ladder (3), the winner retrained
    assert (tmp_path / "calls").stat().st_size == 2 + 2 + 3 + 1


STEPS = '''
from hpsearch import trainable
from hpsearch.backends import TrainResult


class Run:
    def __init__(self, config):
        self.config, self.budget, self.examples = config, 0, 0

    def advance(self, steps, *, on_epoch=None):
        self.budget = self.examples = steps
        return TrainResult(metrics={"val_acc": steps / 100})

    def save(self, path):
        raise NotImplementedError


def start(config, data, *, seed, resume_from=None):
    return Run(config)


@trainable(metrics={"val_acc": "maximize"}, budget="steps", start=start)
def declared(config, data, *, seed, on_epoch=None):
    return start(config, data, seed=seed).advance(config.get("steps", 7))


@trainable(metrics={"val_acc": "maximize"}, start=start)  # trains in stages along whatever the phase names
def undeclared(config, data, *, seed, on_epoch=None):
    return start(config, data, seed=seed).advance(config.get("steps", 7))
'''


@pytest.mark.parametrize("backend, phase, values", [
    # the configuration leaves the budget to the function's own default: trained as a plain function
    ("declared", {"name": "grid", "sampler": "grid", "grid": {"lr": [1, 2]}}, [0.07, 0.07]),
    ("undeclared", {**BUDGET_PHASE, "budget": "steps", "grid": {"steps": [3, 5]}}, [0.03, 0.05]),
])
def test_a_user_s_trainable_in_stages(tmp_path, backend, phase, values):
    (tmp_path / f"steps_{backend}.py").write_text(STEPS)  # one module name a process: names are not reused
    spec = write_spec(tmp_path, model={"backend": f"steps_{backend}:{backend}"}, defaults={},
                      objective={"metric": "val_acc", "direction": "maximize"}, phases=[phase])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary = Driver(load_spec(spec), url, echo=lambda m: None).run()
    trials = optuna.load_study(study_name="tiny.grid", storage=url).get_trials()
    assert summary.complete and sorted(t.value for t in trials) == values

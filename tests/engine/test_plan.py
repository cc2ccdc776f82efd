"""The plan's arithmetic on a stubbed probe, and the probe itself: a throwaway study, not the user's storage."""

from __future__ import annotations

import dataclasses

import pytest

from hpsearch.backends import load_trainable
from hpsearch.engine.plan import PROBE_TRIALS, Probe, _probe_spec, measure_probe, plan
from hpsearch.engine.training import load_data, resolved_config
from hpsearch.spec.build import load_spec
from tests.conftest import TINY_STUDY, write_spec


def test_estimate_is_training_priced_by_the_probe_plus_overheads(tmp_path, monkeypatch):
    spec = load_spec(write_spec(tmp_path, phases=[{"name": "grid", "sampler": "grid",
                                                   "grid": {"hidden_size": [4, 8]}}]))
    data = load_data(spec)
    numpy = load_trainable("numpy")
    # the stub probe trained hidden_size 8 in 1 s; the net's compute is linear in hidden_size, so 4 takes 0.5 s
    probe = Probe(train_seconds=1.0, cost=numpy.cost(resolved_config(spec, {"hidden_size": 8}), data),
                  trial_overhead_seconds=0.5, fixed_seconds=3.0)
    report = plan(spec, data, probe)
    assert report["phases"][0]["trials"] == 2
    assert report["phases"][0]["estimated_seconds"] == pytest.approx(1.0 + 0.5 + 2 * 0.5)
    assert report["run_fixed_seconds"] == pytest.approx(3.0, abs=0.05)  # the winner's kept model is scored
    assert report["estimated_seconds"] == pytest.approx(2.5 + 3.0, abs=0.05) and not report["winner_trained_again"]
    assert report["probe"] == {"train_seconds": 1.0, "cost": probe.cost, "trial_overhead_seconds": 0.5,
                               "fixed_seconds": 3.0, "trials": PROBE_TRIALS, "start_seconds": 0.0}
    # 0.2 s of each training whatever its length: 0.8 s per 8 hidden units, each trial 0.2 s more
    started = plan(spec, data, Probe(**{**report["probe"], "start_seconds": 0.2}))
    assert started["phases"][0]["estimated_seconds"] == pytest.approx(0.2 + 0.8 + 0.2 + 0.4 + 2 * 0.5)
    # the command's own start-up (interpreter, imports, the data), which every run pays too
    started = plan(spec, data, probe, startup_seconds=2.0)
    assert started["run_fixed_seconds"] == pytest.approx(3.0 + 2.0, abs=0.05)
    assert started["estimated_seconds"] == pytest.approx(report["estimated_seconds"] + 2.0, abs=0.05)
    # a trainable that cannot save its models: the study's end trains the winner again, priced as a mean trial
    unsaved = dataclasses.replace(numpy, save_model=None)
    monkeypatch.setattr(type(spec), "trainable", property(lambda self: unsaved))
    again = plan(spec, data, probe)
    assert again["winner_trained_again"] and again["run_fixed_seconds"] == pytest.approx(3.0 + 0.75, abs=0.05)


def test_the_start_up_is_the_time_since_the_process_started():
    import time

    from hpsearch.engine.plan import since_process_start

    first = since_process_start()
    time.sleep(0.05)
    assert 0 < first < since_process_start()  # this test process started a while ago, and time moves on


def test_probe_spec_runs_the_probe_configuration_untracked_as_equal_points(tmp_path):
    spec = load_spec(write_spec(tmp_path, defaults={**TINY_STUDY["defaults"], "num_iters": 400}))
    probe_config = resolved_config(spec, load_trainable("numpy").probe(spec.config()))
    probe = _probe_spec(spec, probe_config)
    assert probe.defaults == probe_config and probe_config["num_iters"] == 50
    assert not probe.tracking.enabled and probe.storage is None
    (phase,) = probe.phases
    assert phase.sampler == "grid" and list(phase.grid.values()) == [[probe_config["hidden_size"]] * PROBE_TRIALS]


def test_measured_probe_times_real_trials_in_a_temporary_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(tmp_path, storage=f"sqlite:///{tmp_path / 'mine.db'}"))
    probe = measure_probe(spec, load_data(spec))
    assert probe.trials == PROBE_TRIALS and probe.train_seconds > 0 and probe.cost > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # neither the spec's storage nor ./runs


def test_a_diverging_probe_is_a_spec_error(tmp_path):
    from hpsearch.errors import SpecError

    spec = load_spec(write_spec(tmp_path, defaults={**TINY_STUDY["defaults"], "learning_rate": 1e30, "std": 1.0}))
    with pytest.raises(SpecError, match="the probe training with the spec's defaults diverged"):
        measure_probe(spec, load_data(spec))


@pytest.mark.parametrize("schedule, trained", [
    ({"first_rung": 3}, 9 * 3 + 3 * 3 + 1 * 6 + 1 * 8),  # ladders alive at each level times its stretch
    ({"levels": [3, 12]}, 9 * 3 + 3 * 9 + 1 * 8),  # 6 runs along with 12, 3 is a level below the grid
])
def test_a_halving_phase_is_priced_by_the_ladders_its_levels_keep(tmp_path, schedule, trained):
    rates = [0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0]
    spec = load_spec(write_spec(tmp_path, phases=[{
        "name": "grid", "sampler": "grid", "budget": "num_iters", "schedule": {"type": "halving", **schedule},
        "grid": {"learning_rate": rates, "num_iters": [6, 12, 20]}}]))
    data = load_data(spec)
    cost = load_trainable("numpy").cost
    probe = Probe(train_seconds=1.0, cost=cost(resolved_config(spec, {"num_iters": 20}), data),
                  trial_overhead_seconds=0.0, fixed_seconds=0.0)
    (phase,) = plan(spec, data, probe)["phases"]
    assert phase["trials"] == 9 * 4 and phase["ladders"] == 9
    assert phase["estimated_seconds"] == pytest.approx(trained / 20, abs=0.05)  # 1 s: one ladder to 20


@pytest.mark.parametrize("schedule, started", [
    ({"first_rung": 3}, 9 + 3 + 1 + 1),  # each rung a level: the ladders each level keeps
    ({"levels": [3, 12]}, 9 * 1 + 3 * 2 + 1 * 1),  # 6 and 12 train in one level, as two trials
])
def test_a_halving_phase_s_overhead_counts_the_rungs_that_train_only(tmp_path, schedule, started):
    """Not-promoted rungs end PRUNED together, without a trial's claim and training: they cost no trial overhead."""
    spec = load_spec(write_spec(tmp_path, phases=[{
        "name": "grid", "sampler": "grid", "budget": "num_iters", "schedule": {"type": "halving", **schedule},
        "grid": {"learning_rate": [0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0], "num_iters": [6, 12, 20]}}]))
    data = load_data(spec)
    probe = Probe(train_seconds=1e-9, cost=1.0, trial_overhead_seconds=1.0, fixed_seconds=0.0)
    (phase,) = plan(spec, data, probe)["phases"]
    assert phase["trials"] == 36 and phase["estimated_seconds"] == pytest.approx(started, abs=0.05)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_an_asha_phase_is_priced_by_the_rungs_its_configurations_climb(tmp_path, sampler):
    """Nine configurations over rungs 3, 9, 27: nine train to 3, three on to 9, one on to 27, 13 rungs in all; a
    TPE phase's are priced as random stand-ins for what it will propose."""
    spec = load_spec(write_spec(tmp_path, phases=[{
        "name": "asha", "sampler": sampler, "n_trials": 9, "budget": "num_iters",
        "schedule": {"type": "asha", "reduction_factor": 3, "min_budget": 3, "max_budget": 27},
        "space": {"learning_rate": {"type": "float", "low": 0.01, "high": 1.0, "log": True}}}]))
    data = load_data(spec)
    cost = load_trainable("numpy").cost
    probe = Probe(train_seconds=1.0, cost=cost(resolved_config(spec, {"num_iters": 27}), data),
                  trial_overhead_seconds=1.0, fixed_seconds=0.0)
    (phase,) = plan(spec, data, probe)["phases"]
    assert phase["trials"] == 9 * 3 and phase["ladders"] == 9 and phase["asha"] == 3
    assert phase["estimate_from_sample"] == (sampler == "tpe")
    trained = 9 * 3 + 3 * 6 + 1 * 18  # 1 s: one configuration to 27
    assert phase["estimated_seconds"] == pytest.approx(trained / 27 + 13 * 1.0, abs=0.05)


def test_a_derived_grid_that_halves_is_priced_from_stand_ins_of_its_source(tmp_path):
    spec = load_spec(write_spec(tmp_path, phases=[
        {"name": "random", "sampler": "random", "n_trials": 3,
         "space": {"num_iters": {"type": "int", "low": 4, "high": 12}}},
        {"name": "grid", "sampler": "grid", "budget": "num_iters", "schedule": {"type": "halving"},
         "grid": {"from": "random", "top_k": 2, "points": 2}}]))
    data = load_data(spec)
    probe = Probe(train_seconds=1.0, cost=1.0, trial_overhead_seconds=0.0, fixed_seconds=0.0)
    grid = plan(spec, data, probe)["phases"][1]
    assert grid["trials_upper_bound"] and grid["estimate_from_sample"] and grid["trials"] == 2

"""Successive halving over budget ladders: who goes on, what the others' rungs become, and what it costs."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import numpy as np
import optuna
import pytest

from hpsearch.backends import numpy_twolayer
from hpsearch.engine.driver import Budget, Driver
from hpsearch.engine.pausedruns import PausedRun
from hpsearch.engine.summary import PausedRuns
from hpsearch.engine.training import load_data, train_once
from hpsearch.engine.trials import _Stages
from hpsearch.errors import SpecError
from hpsearch.search.ladders import halve, ladders
from hpsearch.spec.build import load_spec
from hpsearch.storage.connections import runs_folder
from hpsearch.storage.records import WORKER_DIED
from tests.conftest import (REPO, assert_exactly_once, gated_study, kill_at_the_gate_and_rerun, paused_runs_left,
                            study_trials, write_spec)

# nine ladders of the tiny study's learning rates; 200 training rows / 50 = 4 iterations an epoch
RATES = [0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0]
HALVING_PHASE = {"name": "grid", "sampler": "grid", "budget": "num_iters",
                 "schedule": {"type": "halving", "reduction_factor": 3, "first_rung": 3},
                 "grid": {"learning_rate": RATES, "num_iters": [6, 12, 20]}}


def test_each_level_promotes_the_best_third_of_its_ladders():
    points = [{"lr": lr, "n": n} for lr in range(6) for n in (1, 2, 3)]  # six ladders, three levels
    found = ladders(points, "n")
    budgets = [p["n"] for p in points]
    first = {3 * ladder: value for ladder, value in enumerate([0.1, 0.5, 0.3, 0.5, None, 0.2])}
    state = halve(found, budgets, {0: 0.1, 3: 0.5}, reduction_factor=3, maximize=True)
    assert state.admitted == {3 * ladder for ladder in range(6)} and state.stopped == {}  # level 1 still running
    state = halve(found, budgets, first, reduction_factor=3, maximize=True)
    # ladders 1 and 3 tie at 0.5: both go on, ahead of 0.3; the one without a value (pruned) never does
    assert state.admitted == {*first, 4, 10}
    assert state.stopped == {p: 1 for ladder in (0, 2, 4, 5) for p in (3 * ladder + 1, 3 * ladder + 2)}
    state = halve(found, budgets, {**first, 4: 0.7, 10: 0.7}, reduction_factor=3, maximize=True)
    assert state.admitted == {*first, 4, 10, 5} and state.stopped[11] == 2  # the tie at level 2: the first ladder
    assert halve(found, budgets, first, reduction_factor=3, maximize=False).admitted == {*first, 1, 16}


def test_with_levels_a_level_ends_at_its_budget_and_the_rungs_between_run_along():
    points = [{"lr": lr, "n": n} for lr in range(6) for n in (1, 2, 3)]
    found = ladders(points, "n")
    budgets = [p["n"] for p in points]
    first = {3 * ladder: value for ladder, value in enumerate([0.1, 0.5, 0.3, 0.4, None, 0.2])}
    state = halve(found, budgets, first, reduction_factor=3, maximize=True, levels=[1, 3])
    # ladders 1 and 3 go on, each to both rungs above at once; the others' stop at 1
    assert state.admitted == {*first, 4, 5, 10, 11}
    assert state.stopped == {p: 1 for ladder in (0, 2, 4, 5) for p in (3 * ladder + 1, 3 * ladder + 2)}
    # levels [2, 3]: the first level is every ladder's rungs 1 and 2, undecided while one of them runs
    state = halve(found, budgets, {**first, 4: 0.6, 10: 0.9}, reduction_factor=2, maximize=True, levels=[2, 3])
    assert state.admitted == {p for p in range(18) if p % 3 != 2} and state.stopped == {}
    # then ranked by the rung at 2 alone (ladder 4 has no value at 1): the best ceil(6 / 2) go on
    at_2 = {1: 0.2, 4: 0.3, 7: 0.9, 10: 0.1, 13: 0.5, 16: 0.4}
    state = halve(found, budgets, {**first, **at_2}, reduction_factor=2, maximize=True, levels=[2, 3])
    assert state.admitted == {p for p in range(18) if p % 3 != 2} | {8, 14, 17}
    assert state.stopped == {2: 2, 5: 2, 11: 2}


def run_study(tmp_path, phase=HALVING_PHASE, echo=lambda line: None, **changes):
    spec = write_spec(tmp_path, **{"phases": [phase], **changes})
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary = Driver(load_spec(spec), url, echo=echo).run()
    return spec, url, summary, optuna.load_study(study_name="tiny.grid", storage=url).get_trials()


def ends(trials) -> dict:
    """Each point's end: {(learning rate, num_iters): (state, value)}."""
    return {(t.params["learning_rate"], t.params["num_iters"]): (t.state.name, t.value) for t in trials}


def test_halving_decides_every_point_once_and_each_value_is_the_point_trained_alone(tmp_path):
    spec, url, summary, trials = run_study(tmp_path)
    assert summary.complete
    assert_exactly_once(trials, len(RATES) * 4)  # first_rung 3 joins the grid's num_iters
    assert len(trials) == len(RATES) * 4
    by_budget = collections.defaultdict(list)
    for trial in trials:
        by_budget[trial.params["num_iters"]].append(trial)
    complete = {n: sorted(t.params["learning_rate"] for t in by_budget[n] if t.state.name == "COMPLETE")
                for n in (3, 6, 12, 20)}
    assert [len(complete[n]) for n in (3, 6, 12, 20)] == [9, 3, 1, 1]  # ceil(9 / 3), ceil(3 / 3)
    best_at_3 = sorted(by_budget[3], key=lambda t: (-t.value, RATES.index(t.params["learning_rate"])))
    assert complete[6] == sorted(t.params["learning_rate"] for t in best_at_3[:3])
    for trial in trials:
        if trial.state.name == "PRUNED":
            lr = trial.params["learning_rate"]
            stopped_at = 3 if lr not in complete[6] else 6
            assert trial.user_attrs["failure"] == f"not promoted at {stopped_at}"
            assert "examples" not in trial.user_attrs
    loaded = load_spec(spec)
    data = load_data(loaded)
    for trial in trials:
        if trial.state.name == "COMPLETE":  # a promoted run went on from where its level saved it
            alone = train_once(loaded, data, trial.params, seed=trial.user_attrs["seed"])
            assert trial.value == alone.val_acc
            assert trial.user_attrs["metrics"] == alone.metrics
            assert trial.user_attrs.get("epoch_history", {}).get("val_acc", []) == alone.val_acc_history
    # each ladder paid once for each stretch it trained: no run was trained again from its start
    reached = {lr: max(n for n in complete if lr in complete[n]) for lr in RATES}
    assert summary.examples == sum(reached.values()) * 50
    assert not paused_runs_left(url)  # every paused run was let go


def test_a_halving_phase_s_paused_runs_show_in_status_and_go_when_it_completes(tmp_path):
    """A stopped run keeps its ladders' runs (status says how much disk); a file a crash left among them, or a run
    no level takes up, is gone once the phase completes."""
    spec = write_spec(tmp_path, phases=[HALVING_PHASE])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary = Driver(load_spec(spec), url, echo=lambda line: None).run(Budget(max_trials=9))  # the first level
    folder = runs_folder(url) / "tiny.grid"
    kept = sum(path.stat().st_size for path in folder.iterdir())
    assert kept > 0 and summary.paused_runs == PausedRuns(bytes=kept, folder=str(runs_folder(url)))
    assert summary.phases[0]["paused_runs"] == kept
    (folder / "ladder-99").write_bytes(b"left by a crash")
    summary = Driver(load_spec(spec), url, echo=lambda line: None).run()
    assert summary.complete and not list(folder.glob("*")) and summary.paused_runs is None


def test_a_ladder_its_pruner_stopped_keeps_no_run(tmp_path, monkeypatch):
    """A level's rung the pruner ended has no value, so halving never promotes its ladder: its run is not saved."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    saved_after_pruning = []
    save = PausedRun.save

    def checked_save(self, training, epochs):
        rungs = [t for t in optuna.load_study(study_name="tiny.grid", storage=url).get_trials()
                 if t.params["learning_rate"] == self.params["learning_rate"] and t.state.is_finished()]
        last = max(rungs, key=lambda t: t.params["num_iters"])
        if last.state.name == "PRUNED":
            saved_after_pruning.append(last.params)
        return save(self, training, epochs)

    monkeypatch.setattr(PausedRun, "save", checked_save)
    digits = {"dataset": "digits", "num_train": 200, "num_val": 60, "num_test": 60}  # values that differ
    _, _, summary, trials = run_study(tmp_path, pruner={"type": "median", "n_startup_trials": 0}, data=digits)
    assert any(t.user_attrs.get("failure", "").startswith("pruned at epoch") for t in trials)  # the pruner did
    assert summary.complete and saved_after_pruning == []


def test_a_phase_with_levels_ranks_at_them_and_trains_the_rungs_between_along(tmp_path):
    schedule = {"type": "halving", "reduction_factor": 3, "levels": [3, 12]}  # 3 joins the grid; 6 runs along
    spec, url, summary, trials = run_study(tmp_path, phase={**HALVING_PHASE, "schedule": schedule})
    assert summary.complete
    assert_exactly_once(trials, len(RATES) * 4)
    complete = {n: sorted(t.params["learning_rate"] for t in trials
                          if t.params["num_iters"] == n and t.state.name == "COMPLETE") for n in (3, 6, 12, 20)}
    assert [len(complete[n]) for n in (3, 6, 12, 20)] == [9, 3, 3, 1]
    assert complete[6] == complete[12]
    best_at_12 = max((t for t in trials if t.params["num_iters"] == 12 and t.state.name == "COMPLETE"),
                     key=lambda t: (t.value, -RATES.index(t.params["learning_rate"])))
    assert complete[20] == [best_at_12.params["learning_rate"]]
    for trial in trials:
        if trial.state.name == "PRUNED":
            stopped_at = 3 if trial.params["learning_rate"] not in complete[6] else 12
            assert trial.user_attrs["failure"] == f"not promoted at {stopped_at}"
    loaded = load_spec(spec)
    data = load_data(loaded)
    for trial in trials:
        if trial.state.name == "COMPLETE":
            assert trial.value == train_once(loaded, data, trial.params, seed=trial.user_attrs["seed"]).val_acc
    reached = {lr: max(n for n in complete if lr in complete[n]) for lr in RATES}
    assert summary.examples == sum(reached.values()) * 50  # each ladder trained once, to where it stopped
    for change, message in [({"levels": [12, 3]}, r"levels must be budget values > 0 in ascending order\. Got \[12, 3"),
                            ({"levels": []}, r"levels must be budget values > 0 in ascending order\. Got \[\]"),
                            ({"levels": [True, 12]}, r"schedule\.levels\[0\]"),
                            ({"levels": [3, 30]}, r"schedule.levels must end at or below the grid's largest num_iters "
                                                  r"\(20\)"),
                            ({"first_rung": 3}, r"levels and 'first_rung' exclude each other")]:
        with pytest.raises(SpecError, match=message):
            load_spec(write_spec(tmp_path, phases=[{**HALVING_PHASE, "schedule": {**schedule, **change}}]))


@pytest.mark.parametrize("failure", ["save", "restore"])
def test_a_run_that_cannot_be_kept_between_levels_trains_again_to_the_same_numbers(tmp_path, monkeypatch, failure):
    def broken_save(self, path):
        if failure == "save":
            raise OSError("No space left on device")
        Path(path).write_bytes(b"not a saved run")  # taken up at the next level: the restore refuses it

    monkeypatch.setattr(numpy_twolayer.Training, "save", broken_save)
    monkeypatch.setattr(_Stages, "unsaved_told", False)
    said = []
    spec = write_spec(tmp_path, phases=[HALVING_PHASE])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary = Driver(load_spec(spec), url, echo=said.append).run()
    trials = optuna.load_study(study_name="tiny.grid", storage=url).get_trials()
    assert summary.complete and len(trials) == len(RATES) * 4
    loaded = load_spec(spec)
    data = load_data(loaded)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    for trial in complete:
        assert trial.value == train_once(loaded, data, trial.params, seed=trial.user_attrs["seed"]).val_acc
    # each promoted rung trained its run again from the start
    assert summary.examples == sum(t.params["num_iters"] for t in complete) * 50
    if failure == "save":
        assert sum("is not kept for its next level" in line and "No space left" in line for line in said) == 1
    else:
        assert sum("is not taken up" in line for line in said) == 3 + 1 + 1  # the levels 6, 12 and 20 began
    assert not paused_runs_left(url)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The ends of the halving phase's points in a run where every saved run was taken up as it was saved."""
    _, _, summary, trials = run_study(tmp_path_factory.mktemp("uninterrupted"))
    assert summary.complete
    return ends(trials)


def _rewritten(change):
    """A damage that rewrites the saved run (an .npz of the numpy backend's state) with ``change`` made to its arrays."""
    def damage(path: Path) -> None:
        with np.load(path) as saved:
            arrays = dict(saved)
        change(arrays)
        with path.open("wb") as file:
            np.savez(file, **arrays)

    return damage


def _cut_short(arrays: dict) -> None:
    # the minibatch order of the epoch under way (it loads, then fails the epoch), or at the end of an epoch, the
    # run's history of validation accuracy
    name = "order" if "order" in arrays else "history_val_acc"
    arrays[name] = arrays[name][:len(arrays[name]) // 2]


def _replaced(make):
    def damage(path: Path) -> None:
        path.unlink()
        make(path)

    return damage


PAUSED_RUN_DAMAGES = {
    "a folder in its place": _replaced(lambda path: (path.mkdir(), (path / "weights.npy").write_bytes(b""))),
    "a short but loadable array": _rewritten(_cut_short),
    "altered weights": _rewritten(lambda arrays: arrays.update(param_W1=-arrays["param_W1"])),
    "a FIFO in its place": _replaced(os.mkfifo),
}


@pytest.mark.parametrize("damage", PAUSED_RUN_DAMAGES)
def test_a_saved_run_that_is_not_as_it_was_saved_trains_from_its_start_to_the_same_numbers(
        tmp_path, monkeypatch, uninterrupted, damage):
    save = PausedRun.save

    def save_then_damage(run, training, epochs):
        save(run, training, epochs)
        PAUSED_RUN_DAMAGES[damage](run.path)

    monkeypatch.setattr(PausedRun, "save", save_then_damage)
    said = []
    _, url, summary, trials = run_study(tmp_path, echo=said.append)
    assert summary.complete
    assert_exactly_once(trials, len(RATES) * 4)
    assert len(trials) == len(RATES) * 4  # no rung failed
    assert ends(trials) == uninterrupted
    refused = [line for line in said if "is not taken up" in line]
    assert len(refused) == 3 + 1 + 1, said  # each time one of the levels 6, 12 and 20 began
    assert all(line.endswith("; it trains from the start") for line in refused), refused
    # each promoted rung trained its run again from the start
    complete = [n for (_, n), (state, _) in ends(trials).items() if state == "COMPLETE"]
    assert summary.examples == sum(complete) * 50
    assert not paused_runs_left(url)


def test_levels_can_be_ranked_by_another_metric_with_its_own_direction(tmp_path):
    schedule = {**HALVING_PHASE["schedule"], "rank_by": "val_loss"}
    _, _, summary, trials = run_study(tmp_path, phase={**HALVING_PHASE, "schedule": schedule})
    assert summary.complete
    first = sorted((t for t in trials if t.params["num_iters"] == 3), key=lambda t: t.user_attrs["metrics"]["val_loss"])
    promoted = sorted(t.params["learning_rate"] for t in trials
                      if t.params["num_iters"] == 6 and t.state.name == "COMPLETE")
    assert promoted == sorted(t.params["learning_rate"] for t in first[:3])  # the lowest losses go on
    with pytest.raises(SpecError, match="schedule.rank_by must be one of val_acc, val_loss, train_acc"):
        load_spec(write_spec(tmp_path, phases=[{**HALVING_PHASE, "schedule": {**schedule, "rank_by": "val_ac"}}]))


@pytest.mark.parametrize("rank_by", [None, "val_loss"])
def test_the_replay_benchmark_stops_what_the_halving_phase_it_replays_stops(tmp_path, monkeypatch, rank_by):
    """benchmarks/halving_replay.py replays a schedule on a ladders study's export: with the phase's own ranking
    metric and direction it stops the same points as the halving phase, a level between the grid's values too."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from halving_replay import replay

    (tmp_path / "ladders").mkdir()
    ladders_phase = {key: value for key, value in HALVING_PHASE.items() if key != "schedule"}
    spec = write_spec(tmp_path / "ladders", phases=[ladders_phase])
    spec.rename(spec.with_name("spec.yaml"))
    spec = spec.with_name("spec.yaml")
    ladders_run = Driver(load_spec(spec), f"sqlite:///{tmp_path / 'ladders' / 'study.db'}", echo=lambda line: None)
    ladders_run.run()
    export = tmp_path / "ladders" / "t.json"
    export.write_text(json.dumps(ladders_run.trials(), default=str))
    schedule = {"type": "halving", "reduction_factor": 3, "levels": [4, 12], **({"rank_by": rank_by} if rank_by else {})}
    _, _, summary, trials = run_study(tmp_path, phase={**HALVING_PHASE, "schedule": schedule})
    stopped = sorted(json.dumps(t.params, sort_keys=True) for t in trials if t.state.name == "PRUNED")
    replayed = replay(export, [4, 12], 3, rank_by)
    assert stopped and replayed["stopped"] == stopped
    assert replayed["best"] == summary.best["value"]


def test_a_halving_schedule_needs_a_budget_and_a_first_rung_below_the_grid(tmp_path):
    with pytest.raises(SpecError, match="'schedule' halves a grid's budget ladders: name the phase's 'budget'"):
        load_spec(write_spec(tmp_path, phases=[{k: v for k, v in HALVING_PHASE.items() if k != "budget"}]))
    late = {**HALVING_PHASE, "schedule": {"type": "halving", "first_rung": 6}}
    with pytest.raises(SpecError, match=r"'schedule.first_rung' \(6\) must be below the grid's smallest num_iters"):
        load_spec(write_spec(tmp_path, phases=[late]))


def test_a_derived_grid_s_levels_end_at_its_largest_budget(tmp_path):
    phases = [{"name": "random", "sampler": "random", "n_trials": 3,
               "space": {"num_iters": {"type": "int", "low": 4, "high": 12}}},
              {**HALVING_PHASE, "schedule": {"type": "halving", "levels": [2, 40]},
               "grid": {"from": "random", "top_k": 2, "points": 2}}]
    with pytest.raises(SpecError, match=r"schedule.levels must end at or below the grid's largest num_iters \(\d+\)"):
        run_study(tmp_path, phase=None, phases=phases)
    trials = optuna.load_study(study_name="tiny.random", storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # the phase before keeps what it found


def test_a_first_rung_above_a_derived_grid_is_refused_before_the_phase_is_stored(tmp_path):
    """Refused before the halving phase's record is written: the corrected spec then runs without
    --force-new-phase (it used to be refused as a changed phase)."""
    random = {"name": "random", "sampler": "random", "n_trials": 3,
              "space": {"num_iters": {"type": "int", "low": 4, "high": 12}}}
    halving = {**HALVING_PHASE, "grid": {"from": "random", "top_k": 2, "points": 2}}
    late = {**halving, "schedule": {"type": "halving", "first_rung": 20}}
    with pytest.raises(SpecError, match=r"schedule.first_rung \(20\) must be below every num_iters of the grid"):
        run_study(tmp_path, phase=None, phases=[random, late])
    _, _, summary, trials = run_study(tmp_path, phase=None, phases=[random, halving])
    assert summary.complete and trials


def test_a_derived_grid_without_the_budget_cannot_be_halved(tmp_path):
    phases = [{"name": "random", "sampler": "random", "n_trials": 3,
               "space": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True}}},
              {**HALVING_PHASE, "grid": {"from": "random", "top_k": 2, "points": 2}}]
    with pytest.raises(SpecError, match="halving needs 'num_iters' in the grid; the derived grid has learning_rate"):
        run_study(tmp_path, phase=None, phases=phases)


def test_max_retries_of_a_halving_phase_cannot_change_under_it(tmp_path):
    """When a point has failed for good decides a level: a rerun with another max_retries is a changed phase."""
    spec, url, _, _ = run_study(tmp_path)
    write_spec(tmp_path, phases=[{**HALVING_PHASE, "max_retries": 5}])
    with pytest.raises(SpecError, match="phase 'grid' changed since it started: max_retries"):
        Driver(load_spec(spec), url, echo=lambda m: None).run()


# A halving phase killed inside a promoted run ------------------------------------------------------------------------

def test_a_killed_halving_phase_resumes_its_schedule_and_its_saved_runs(tmp_path, gate):
    rates = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # the gate's val_acc: learning rate + num_iters / 1000
    spec = gated_study(tmp_path, "hal", free=7, budget="num_iters", grid={"learning_rate": rates,
                                                                       "num_iters": [10, 20, 30]},
                       schedule={"type": "halving", "reduction_factor": 3},
                       grace_period=3600)  # reaped by its pid, never by an old beat, however slow the rerun
    storage = f"sqlite:///{tmp_path / 'hal.db'}"
    # six ladders trained to 10, the best two promoted; one trained on to 20, the other waits at the gate: killed
    kill_at_the_gate_and_rerun(spec, storage, gate, calls=8, states={"COMPLETE": 7, "RUNNING": 1, "PRUNED": 8})
    trials = study_trials(storage, "hal.grid")
    assert_exactly_once(trials, 18)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["failure"] == WORKER_DIED
    complete = {(t.params["learning_rate"], t.params["num_iters"]): t for t in trials if t.state.name == "COMPLETE"}
    assert sorted(complete) == sorted([(lr, 10) for lr in rates] + [(0.5, 20), (0.6, 20), (0.6, 30)])
    for (lr, n), trial in complete.items():
        assert trial.value == pytest.approx(lr + n / 1000)
        # every stretch was trained once: the killed rung's retry and the top rung went on from the saved runs
        assert trial.user_attrs["examples"] == 10
    reasons = collections.Counter(t.user_attrs["failure"] for t in trials if t.state.name == "PRUNED")
    assert reasons == {"not promoted at 10": 8, "not promoted at 20": 1}
    # the killed run's 8 stages, the retried rung, the top rung, the winner retrained
    assert (tmp_path / "calls").stat().st_size == 8 + 1 + 1 + 1
    assert not paused_runs_left(storage)



def test_a_halving_phase_killed_inside_a_level_of_several_rungs_resumes_it(tmp_path, gate):
    rates = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    spec = gated_study(tmp_path, "hal", free=7, budget="num_iters", grid={"learning_rate": rates,
                                                                       "num_iters": [10, 20, 30]},
                       schedule={"type": "halving", "reduction_factor": 3, "levels": [10, 30]})
    storage = f"sqlite:///{tmp_path / 'hal.db'}"
    # six ladders trained to 10, the best two promoted to 20 and 30 at once; the first claimed trained to 20, then
    # waits at the gate on its way to 30: killed there, with the other ladder's two rungs still queued
    kill_at_the_gate_and_rerun(spec, storage, gate, calls=8,
                               states={"COMPLETE": 7, "RUNNING": 1, "WAITING": 2, "PRUNED": 8})
    trials = study_trials(storage, "hal.grid")
    assert_exactly_once(trials, 18)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].params["num_iters"] == 30
    complete = {(t.params["learning_rate"], t.params["num_iters"]): t for t in trials if t.state.name == "COMPLETE"}
    assert sorted(complete) == sorted([(lr, 10) for lr in rates] + [(lr, n) for lr in (0.5, 0.6) for n in (20, 30)])
    for (lr, n), trial in complete.items():
        assert trial.value == pytest.approx(lr + n / 1000)
    reasons = collections.Counter(t.user_attrs["failure"] for t in trials if t.state.name == "PRUNED")
    assert reasons == {"not promoted at 10": 8}
    # the killed rung went on from the run its ladder saved at 10 (its 20 was done, but not saved apart): 20
    # examples; every other stretch was trained once
    retried = complete[failed[0].params["learning_rate"], 30]
    assert retried.user_attrs["examples"] == 20
    assert sum(t.user_attrs["examples"] for t in complete.values()) == 6 * 10 + 2 * 10 + 10 + 20
    # the killed run's 8 stages, the retried rung, the other ladder's two, the winner retrained
    assert (tmp_path / "calls").stat().st_size == 8 + 1 + 2 + 1
    assert not paused_runs_left(storage)

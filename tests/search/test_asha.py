"""ASHA: the rule (``hpsearch.search.asha``) as pure code (rungs, promotions from stored values alone, what a phase of
ladders queues and stops, the rung TPE models and the price of a phase), held against its definition by simulated
pools of processes that finish rungs in a random order; then random phases that run it, whole, in this process and
in two processes of which one is killed, and the specs it refuses."""

from __future__ import annotations

import collections
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpsearch.search.asha import Admission, Promotion, admit, model_rung, next_step, rungs, work
from hpsearch.search.ladders import ladders


@pytest.mark.parametrize(("low", "high", "factor", "expected"), [
    (100, 2700, 3, (100, 300, 900, 2700)),
    (100, 3000, 3, (100, 300, 900, 2700, 3000)),  # the top rung trains to max_budget
    (1, 15, 2, (1, 2, 4, 8, 15)),
    (5, 5, 3, (5,)),
])
def test_rungs_grow_by_the_reduction_factor_up_to_the_maximum(low, high, factor, expected):
    assert rungs(low, high, factor) == expected


@pytest.mark.parametrize(("low", "high", "factor", "message"), [
    (0, 10, 3, "0 < min_budget <= max_budget"),
    (20, 10, 3, "0 < min_budget <= max_budget"),
    (1, 10, 1, "reduction_factor must be at least 2"),
    (1.5, 10, 3, "min_budget must be a whole number"),
    (True, 10, 3, "min_budget must be a whole number"),
])
def test_rungs_refuse_what_makes_no_ladder(low, high, factor, message):
    with pytest.raises(ValueError, match=message):
        rungs(low, high, factor)


def step(values, promoted, maximize=True):
    return next_step(values, promoted, reduction_factor=3, maximize=maximize)


def test_a_rung_promotes_its_best_third_once_three_have_ended():
    nothing = [set(), set(), set()]
    assert step([{}, {}, {}], nothing) is None  # start a new configuration
    assert step([{0: 0.5, 1: 0.9}, {}, {}], nothing) is None  # two ended: floor(2 / 3) = 0 go on
    assert step([{0: 0.5, 1: 0.9, 2: 0.7}, {}, {}], nothing) == Promotion(1, 1)
    assert step([{0: 0.5, 1: 0.9, 2: 0.7}, {}, {}], [{1}, set(), set()]) is None  # already on its way
    assert step([{0: 0.5, 1: 0.9, 2: 0.7}, {}, {}], nothing, maximize=False) == Promotion(0, 1)


def test_the_highest_rung_with_a_promotion_goes_first_and_the_top_rung_sends_no_one_on():
    values = [{k: k / 10 for k in range(9)}, {8: 0.9, 7: 0.8, 6: 0.7}, {8: 0.95, 7: 0.1, 6: 0.2}]
    assert step(values, [{8, 7, 6}, set(), {8}]) == Promotion(8, 2)  # rung 1's best, before rung 0's next
    assert step(values, [{8, 7, 6}, {8}, set()]) is None  # rung 2 is the top: nothing above it


def test_a_configuration_that_ended_without_a_value_counts_but_never_goes_on():
    assert step([{0: None, 1: None, 2: 0.1}, {}], [set(), set()]) == Promotion(2, 1)
    assert step([{0: None, 1: None, 2: None}, {}], [set(), set()]) is None


def test_ties_go_to_the_configuration_started_first():
    assert step([{5: 0.5, 3: 0.5, 4: 0.5}, {}], [set(), set()]) == Promotion(3, 1)


def test_tpe_models_the_highest_rung_with_a_value_per_parameter_and_one():
    assert model_rung([10, 4, 1], n_params=3) == 1
    assert model_rung([10, 4, 4], n_params=3) == 2
    assert model_rung([2, 0, 0], n_params=3) == 0  # none has enough: the lowest, where TPE starts at random


def test_the_price_of_a_phase_is_what_each_rung_s_survivors_train_on_from_the_rung_below():
    # 27 configurations to 100, 9 on to 300, 3 on to 900, 1 on to 2700
    assert work(27, (100, 300, 900, 2700), 3) == (27 * 100 + 9 * 200 + 3 * 600 + 1 * 1800, 27 + 9 + 3 + 1)
    assert work(2, (100, 300), 3) == (200, 2)  # none promoted


@settings(max_examples=100, deadline=None)
@given(n_configs=st.integers(1, 40), processes=st.integers(1, 5), depth=st.integers(1, 4),
       data=st.data())
def test_a_pool_of_processes_ends_with_every_rung_s_best_third_promoted(n_configs, processes, depth, data):
    """Processes take the next step whenever one is free and end their rungs in an order the test draws. Every
    promotion was among its rung's best third when it was made, no configuration trains a rung twice, and once
    nothing is left to promote, every rung's best floor(n / 3) of its n went on."""
    value = {(config, rung): data.draw(st.one_of(st.none(), st.floats(0, 1)), label="value")
             for config in range(n_configs) for rung in range(depth)}
    values: list[dict[int, float | None]] = [{} for _ in range(depth)]
    promoted: list[set[int]] = [set() for _ in range(depth)]
    running: list[tuple[int, int]] = []
    started = 0
    trained = set()
    while True:
        while len(running) < processes:
            found = step(values, promoted)
            if found is not None:
                below = values[found.rung - 1]
                best = sorted((c for c, v in below.items() if v is not None), key=lambda c: (-below[c], c))
                assert found.config in best[:len(below) // 3]
                promoted[found.rung - 1].add(found.config)
                running.append((found.config, found.rung))
            elif started < n_configs:
                running.append((started, 0))
                started += 1
            else:
                break  # nothing to do until a running rung ends
        if not running:
            break
        config, rung = running.pop(data.draw(st.integers(0, len(running) - 1), label="ends"))
        assert (config, rung) not in trained
        trained.add((config, rung))
        values[rung][config] = value[config, rung]
    assert started == n_configs
    for rung in range(depth - 1):
        ended = values[rung]
        best = sorted((c for c, v in ended.items() if v is not None), key=lambda c: (-ended[c], c))
        assert set(best[:len(ended) // 3]) <= promoted[rung]
        assert promoted[rung] <= set(best)


def asha_ladders(n_configs: int, depth: int):
    """The points of ``n_configs`` configurations at ``depth`` rungs (budgets 1, 3, 9, ...), point c * depth + r
    being configuration c's rung r, grouped into ladders (ladder c: configuration c)."""
    points = [{"config": config, "num_iters": 3 ** rung} for config in range(n_configs) for rung in range(depth)]
    return ladders(points, "num_iters"), [point["num_iters"] for point in points]


def admitted(found, budgets, decided, queued, starts=1, maximize=True, keep_waiting=None) -> Admission:
    return admit(found, budgets, decided, queued, reduction_factor=3, maximize=maximize, starts=starts,
                 keep_waiting=keep_waiting)


def test_a_phase_starts_one_configuration_at_a_time_until_a_rung_promotes():
    found, budgets = asha_ladders(4, 3)  # points 0-2: configuration 0's rungs, 3-5: configuration 1's, ...
    assert admitted(found, budgets, {}, set()) == Admission((), (0,), {})
    assert admitted(found, budgets, {}, set(), starts=2) == Admission((), (0, 3), {})
    assert admitted(found, budgets, {0: 0.2, 3: 0.9}, {0, 3, 6}) == Admission((), (9,), {})
    # three ended rung 0: the best (configuration 1) goes on to rung 1, before the last configuration starts
    assert admitted(found, budgets, {0: 0.2, 3: 0.9, 6: 0.5}, {0, 3, 6}) == Admission((4,), (9,), {})


def test_the_rung_below_closes_when_every_configuration_ended_it_and_the_rest_stop_there():
    found, budgets = asha_ladders(4, 3)
    decided = {0: 0.2, 3: 0.9, 6: 0.5, 9: 0.1}
    # configuration 1 on its way to rung 1: rung 0 is closed, the others stop at budget 1
    assert admitted(found, budgets, decided, {0, 3, 6, 9, 4}) == Admission((), (), {1: 1, 2: 1, 7: 1, 8: 1, 10: 1,
                                                                                       11: 1})
    # while configuration 3 has not ended rung 0, configuration 0 may still be among the best floor(4 / 3)
    assert admitted(found, budgets, {0: 0.2, 3: 0.9, 6: 0.5}, {0, 3, 6, 9, 4}).stopped == {}
    # a rung ended without a value stops at once
    assert admitted(found, budgets, {0: None, 3: 0.9}, {0, 3, 6}).stopped == {1: 1, 2: 1}


def test_the_runs_of_configurations_waiting_behind_a_rung_s_best_few_are_let_go():
    found, budgets = asha_ladders(9, 3)
    rung0 = {3 * config: config / 10 for config in range(7)}  # seven ended rung 0: 6 best, then 5, 4, ...
    queued = set(rung0) | {3 * 6 + 1, 3 * 5 + 1}  # 6 and 5 went on; 4, 3, 2, 1, 0 wait (two more may end it)
    now = admitted(found, budgets, rung0, queued, keep_waiting=2)
    # 4 and 3 keep their runs; 2, 1 and 0 wait at rung 0 (points 6, 3 and 0) without
    assert now.promote == () and now.start == (21,) and now.let_go == (0, 3, 6)
    assert admitted(found, budgets, rung0, queued).let_go == ()  # every run kept
    # one waiting ended without a value: it stops, and is no one's to let go
    assert admitted(found, budgets, {**rung0, 0: None}, queued, keep_waiting=2).let_go == (3, 6)
    # at rung 1 as well: 6, 5 and 4 ended it, 6 went on; with one kept per rung, 4 waits there without its run
    # (point 13), and at rung 0 only 3 keeps one
    on = admitted(found, budgets, {**rung0, 19: 0.9, 16: 0.1, 13: 0.05}, queued | {13, 20}, keep_waiting=1)
    assert on.let_go == (0, 3, 6, 13)


def test_a_higher_rung_s_promotion_is_queued_first():
    found, budgets = asha_ladders(9, 3)
    rung0 = {3 * config: config / 10 for config in range(9)}  # configuration 8 best, then 7, 6
    # 8, 7 and (promoted early, among the best third of the few ended then) 5 went on to rung 1; 6 has not yet
    queued = set(rung0) | {3 * 8 + 1, 3 * 7 + 1, 3 * 5 + 1}
    decided = {**rung0, 3 * 8 + 1: 0.1, 3 * 7 + 1: 0.3, 3 * 5 + 1: 0.2}
    # rung 1's best (configuration 7) to rung 2 first, then configuration 6 to rung 1
    assert admitted(found, budgets, decided, queued).promote == (3 * 7 + 2, 3 * 6 + 1)
    decided.pop(3 * 5 + 1)  # with two of rung 1 ended, it promotes no one yet
    assert admitted(found, budgets, decided, queued).promote == (3 * 6 + 1,)


@settings(max_examples=100, deadline=None)
@given(n_configs=st.integers(1, 30), processes=st.integers(1, 4), depth=st.integers(1, 4), data=st.data())
def test_a_queue_of_asha_ladders_agrees_with_the_rule_and_ends_every_rung_once(n_configs, processes, depth, data):
    """A queue as a phase keeps it: a free process asks :func:`admit` (new configurations only when nothing is
    queued), queues what it says, and claims the oldest queued rung; rungs end in an order the test draws. The first
    promotion is always the one :func:`next_step` makes; a rung said to stop never runs and stays stopped; at the end
    every rung ran once or stopped at the budget its configuration reached, and every rung's best floor(n / 3) went
    on."""
    found, budgets = asha_ladders(n_configs, depth)
    value = {point: data.draw(st.one_of(st.none(), st.floats(0, 1)), label="value") for point in range(len(budgets))}
    decided: dict[int, float | None] = {}
    queued: list[int] = []  # in the order queued
    waiting: list[int] = []
    running: list[int] = []
    stopped: dict[int, int] = {}
    while True:
        while len(running) < processes:
            now = admitted(found, budgets, decided, set(queued), starts=0 if waiting else 1, keep_waiting=2)
            assert stopped.items() <= now.stopped.items()  # a stopped rung stays stopped, at the same budget
            for rung in range(depth - 1):  # the runs kept of those waiting at a rung: its best two
                ended = {c: decided[c * depth + rung] for c in range(n_configs) if c * depth + rung in decided}
                on = [c for c in sorted(ended, key=lambda c: (-(ended[c] or 0), c)) if ended[c] is not None
                      and c * depth + rung + 1 not in queued and c * depth + rung + 1 not in now.stopped
                      and c * depth + rung + 1 not in now.promote]
                let_go = {point // depth for point in now.let_go if point % depth == rung}
                assert [c for c in on if c not in let_go] == on[:2] and set(on[2:]) <= let_go
            stopped = now.stopped
            new = [*now.promote, *([] if now.promote else now.start)]
            assert not set(new) & (set(queued) | set(stopped))
            if now.promote:
                config, rung = divmod(now.promote[0], depth)
                values = [{c: decided[c * depth + r] for c in range(n_configs) if c * depth + r in decided}
                          for r in range(depth)]
                promoted = [{c for c in range(n_configs) if c * depth + r + 1 in queued} for r in range(depth)]
                assert next_step(values, promoted, reduction_factor=3, maximize=True) == Promotion(config, rung)
            queued += new
            waiting += new
            if not waiting:
                break  # nothing to do until a running rung ends
            running.append(waiting.pop(0))
        if not running:
            break
        point = running.pop(data.draw(st.integers(0, len(running) - 1), label="ends"))
        decided[point] = value[point]
    assert sorted([*queued, *stopped]) == list(range(len(budgets)))  # each rung ran once or stopped
    for config in range(n_configs):
        ran = [r for r in range(depth) if config * depth + r in decided]
        assert ran == list(range(len(ran))) and ran
        assert {config * depth + r: budgets[config * depth + ran[-1]] for r in range(len(ran), depth)}.items() <= \
            stopped.items()
    for rung in range(depth - 1):
        ended = {c: decided[c * depth + rung] for c in range(n_configs) if c * depth + rung in decided}
        best = sorted((c for c, v in ended.items() if v is not None), key=lambda c: (-ended[c], c))
        went_on = {c for c in range(n_configs) if c * depth + rung + 1 in decided}
        assert set(best[:len(ended) // 3]) <= went_on <= set(best)


ASHA_PHASE = {"name": "random", "sampler": "random", "n_trials": 9, "budget": "num_iters",
              "schedule": {"type": "asha", "reduction_factor": 3, "min_budget": 3, "max_budget": 27},
              "space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 2.0, "log": True},
                        "hidden_size": {"type": "int", "low": 4, "high": 16, "step": 4}}}


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_an_asha_phase_runs_every_rung_once_each_the_configuration_trained_alone(tmp_path, sampler):
    """A whole phase in this process: nine configurations (drawn ahead, or proposed by TPE as each starts) over rungs
    3, 9 and 27 iterations. Each rung that ran has the values of its configuration trained straight to its budget (a
    promoted run went on from its saved rung), the others ended PRUNED where their configuration stopped, every
    rung's best third went on, and no run trained a stretch twice."""
    from hpsearch.engine.driver import Driver
    from hpsearch.engine.training import load_data, train_once
    from hpsearch.spec.build import load_spec
    from tests.conftest import assert_exactly_once, paused_runs_left, study_trials, write_spec

    spec = write_spec(tmp_path, phases=[{**ASHA_PHASE, "name": sampler, "sampler": sampler}])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary = Driver(load_spec(spec), url, echo=lambda line: None).run()
    trials = study_trials(url, f"tiny.{sampler}")
    assert summary.complete
    assert_exactly_once(trials, 9 * 3)
    config_of = {point: point // 3 for point in range(27)}  # point c * 3 + r: configuration c at rung r
    ends = {t.user_attrs["point"]: t for t in trials}
    loaded = load_spec(spec)
    data = load_data(loaded)
    for point, trial in ends.items():
        assert trial.params["num_iters"] == (3, 9, 27)[point % 3]
        if trial.state.name == "COMPLETE":
            alone = train_once(loaded, data, trial.params, seed=trial.user_attrs["seed"])
            assert trial.value == alone.val_acc and trial.user_attrs["metrics"] == alone.metrics
        else:
            below = ends[point - 1]
            stopped_at = below.params["num_iters"] if below.state.name == "COMPLETE" else \
                int(below.user_attrs["failure"].rsplit(" ", 1)[1])
            assert trial.state.name == "PRUNED" and trial.user_attrs["failure"] == f"not promoted at {stopped_at}"
    seeds = {config_of[p]: set() for p in ends}
    for point, trial in ends.items():
        seeds[config_of[point]].add(trial.user_attrs["seed"])
    assert all(len(found) == 1 for found in seeds.values())  # a configuration's rungs share one seed
    for rung in range(2):
        ended = {config_of[p]: t.value for p, t in ends.items() if p % 3 == rung and t.state.name == "COMPLETE"}
        best = sorted(ended, key=lambda c: (-ended[c], c))
        went_on = {config_of[p] for p, t in ends.items() if p % 3 == rung + 1 and t.state.name == "COMPLETE"}
        assert set(best[:len(ended) // 3]) <= went_on <= set(best)
    # one process runs one trial at a time: a promotion's trial was made after every trial numbered below it ended,
    # and its configuration was then among the best floor(n / 3) of the n that had ended the rung below
    ran = [t for t in sorted(trials, key=lambda t: t.number) if not t.user_attrs.get("failure", "").startswith("not")]
    for trial in ran:
        rung = trial.user_attrs["point"] % 3
        if rung:
            below = {config_of[t.user_attrs["point"]]: t.value for t in ran
                     if t.number < trial.number and t.user_attrs["point"] % 3 == rung - 1}
            best = sorted((c for c, v in below.items() if v is not None), key=lambda c: (-below[c], c))
            assert config_of[trial.user_attrs["point"]] in best[:len(below) // 3]
    reached = {config_of[p]: t.params["num_iters"] for p, t in sorted(ends.items()) if t.state.name == "COMPLETE"}
    assert summary.examples == sum(reached.values()) * 50  # each configuration trained once to where it stopped
    assert not paused_runs_left(url)  # every paused run was let go


def test_a_long_asha_phase_keeps_the_runs_of_a_few_waiting_per_rung_and_trains_the_rest_again_if_promoted(
        tmp_path, monkeypatch):
    """In this process: 27 configurations over rungs 3, 9 and 27, one waiting run kept per rung. Never more than a
    few paused runs lie on disk at once (every configuration waiting at rung 0 would keep one otherwise), and every
    rung still has its configuration's values trained alone: one promoted after its run was let go trained again
    from its start."""
    from hpsearch.engine import pausedruns
    from hpsearch.engine.driver import Driver
    from hpsearch.engine.training import load_data, train_once
    from hpsearch.spec.build import load_spec
    from tests.conftest import assert_exactly_once, paused_runs_left, study_trials, write_spec

    monkeypatch.setattr("hpsearch.engine.phaserun.KEPT_WAITING", 1)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    on_disk = []
    save = pausedruns.PausedRun.save

    def counted(self, training, epochs):
        save(self, training, epochs)
        on_disk.append(sum(not path.name.endswith(".json") for path in paused_runs_left(url)))

    monkeypatch.setattr(pausedruns.PausedRun, "save", counted)
    spec = write_spec(tmp_path, phases=[{**ASHA_PHASE, "n_trials": 27}])
    summary = Driver(load_spec(spec), url, echo=lambda line: None).run()
    trials = study_trials(url, "tiny.random")
    assert summary.complete
    assert_exactly_once(trials, 27 * 3)
    # one kept waiting at each of the two rungs below the top, the one just saved, and promotions queued at once
    assert on_disk and max(on_disk) <= 5, on_disk
    loaded = load_spec(spec)
    data = load_data(loaded)
    for trial in trials:
        if trial.state.name == "COMPLETE":
            alone = train_once(loaded, data, trial.params, seed=trial.user_attrs["seed"])
            assert trial.value == alone.val_acc and trial.user_attrs["metrics"] == alone.metrics
    reached = {t.user_attrs["point"] // 3: t.params["num_iters"] for t in sorted(trials, key=lambda t: t.number)
               if t.state.name == "COMPLETE"}
    assert summary.examples > sum(reached.values()) * 50  # some trained again: their runs had been let go
    assert not paused_runs_left(url)


@pytest.mark.parametrize(("change", "message"), [
    ({"schedule": {"type": "asha", "min_budget": 3}}, "asha needs 'min_budget' and 'max_budget'"),
    ({"schedule": {"type": "asha", "min_budget": 30, "max_budget": 3}}, r"'min_budget' \(30\) must be at most"),
    ({"schedule": {"type": "asha", "min_budget": 3, "max_budget": 27, "first_rung": 1}}, "are halving's"),
    ({"schedule": {"type": "halving", "min_budget": 3}}, "'min_budget' and 'max_budget' are asha's"),
    ({"schedule": {"type": "halving"}}, r"'schedule: \{type: halving\}' does not fit a random phase"),
    ({"budget": None}, "'schedule: asha' trains each configuration in rungs of a budget"),
    ({"space": {**ASHA_PHASE["space"], "num_iters": {"type": "int", "low": 3, "high": 9}}},
     "'space' must not search the budget 'num_iters'"),
    ({"sampler": "tpe", "budget": None}, "'schedule: asha' trains each configuration in rungs of a budget"),
    ({"sampler": "tpe", "schedule": None}, "'budget' goes with a schedule"),
    ({"schedule": None}, "'budget' goes with a schedule"),
    ({"budget": "num_epochs"}, "the budget must be 'num_iters'"),
    ({"n_trials": 400_000}, r"n_trials \(400,000\) times 3 rungs makes 1,200,000 points; a phase runs at most"),
])
def test_an_asha_phase_the_spec_cannot_run_is_refused_in_one_line(tmp_path, change, message):
    from typer.testing import CliRunner

    from hpsearch.cli.app import app
    from tests.conftest import write_spec

    spec = write_spec(tmp_path, phases=[{**ASHA_PHASE, **change}])
    result = CliRunner().invoke(app, ["run", str(spec), "--storage", f"sqlite:///{tmp_path / 'study.db'}"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "study.db").exists()


def test_a_grid_phase_halves_and_does_not_take_asha(tmp_path):
    from hpsearch.errors import SpecError
    from hpsearch.spec.build import load_spec
    from tests.conftest import write_spec

    grid = {"name": "grid", "sampler": "grid", "budget": "num_iters",
            "grid": {"learning_rate": [0.1], "num_iters": [3]}, "schedule": ASHA_PHASE["schedule"]}
    with pytest.raises(SpecError, match="'asha' is for random and tpe phases"):
        load_spec(write_spec(tmp_path, phases=[grid]))


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_two_processes_share_an_asha_phase_and_one_killed_inside_a_rung_loses_nothing(tmp_path, gate, sampler):
    """Subprocesses, as users run workers: two `hpsearch run` on one SQLite study, both held at the gate inside
    their sixth and seventh rung; one is killed (SIGKILL) there, the other goes on alone, takes the killed rung up
    again from the run saved below it, and ends the phase. Every rung is decided once, each stretch of training is
    paid once, and every rung's best third went on. Under TPE the processes train the configurations either one
    proposed, read from the storage."""
    import signal
    import subprocess
    import sys

    import yaml

    from hpsearch.storage.records import WORKER_DIED
    from tests.conftest import assert_exactly_once, gated_study, paused_runs_left, study_trials

    spec = gated_study(tmp_path, "asha", free=5, budget="num_iters", grid={"learning_rate": [0.1], "num_iters": [1]},
                       schedule={"type": "halving"}, grace_period=3600)  # reaped by its pid, never by an old beat
    raw = yaml.safe_load(spec.read_text())
    raw["phases"] = [{"name": "random", "sampler": sampler, "n_trials": 9, "budget": "num_iters",
                      "schedule": {"type": "asha", "reduction_factor": 3, "min_budget": 10, "max_budget": 90},
                      "space": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.99}}}]
    spec.write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path / 'asha.db'}"
    command = [sys.executable, "-m", "hpsearch", "run", str(spec), "--storage", storage]
    first, second = (subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(2))
    gate.watch(first, second)
    calls = tmp_path / "calls"

    def held() -> bool:
        states = collections.Counter(t.state.name for t in study_trials(storage, "asha.random"))
        return calls.exists() and calls.stat().st_size == 7 and states["COMPLETE"] == 5 and states["RUNNING"] == 2

    while not held():  # both processes wait at the gate: nothing moves until it opens
        assert first.poll() is None and second.poll() is None, (first.communicate(), second.communicate())
    first.send_signal(signal.SIGKILL)
    first.communicate()
    gate.open()
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    trials = study_trials(storage, "asha.random")
    assert_exactly_once(trials, 27)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["failure"] == WORKER_DIED
    ends = {t.user_attrs["point"]: t for t in trials if t.state.name in ("COMPLETE", "PRUNED")}
    for point, trial in ends.items():
        if trial.state.name == "COMPLETE":
            budget = trial.params["num_iters"]
            assert trial.value == pytest.approx(trial.params["learning_rate"] + budget / 1000)
            # the killed rung's retry went on from the run saved at the rung below, as every promotion did
            assert trial.user_attrs["examples"] == budget - {10: 0, 30: 10, 90: 30}[budget]
        else:
            assert trial.user_attrs["failure"].startswith("not promoted at ")
    for rung in range(2):
        ended = {p // 3: t.value for p, t in ends.items() if p % 3 == rung and t.state.name == "COMPLETE"}
        best = sorted(ended, key=lambda c: (-ended[c], c))
        went_on = {p // 3 for p, t in ends.items() if p % 3 == rung + 1 and t.state.name == "COMPLETE"}
        assert set(best[:len(ended) // 3]) <= went_on <= set(best)
    assert not paused_runs_left(storage)


def test_a_configuration_stopped_before_more_started_never_goes_on_nor_holds_the_others_up():
    found, budgets = asha_ladders(6, 2)  # configuration c: points 2c (rung 0) and 2c + 1 (rung 1)
    # three configurations ended rung 0; 0 went on, 1 and 2 stopped there; then the phase grew by three more
    decided = {0: 0.9, 2: 0.5, 4: 0.1, 6: 0.2, 8: 0.05, 10: 0.01}
    queued = {0, 1, 2, 4, 6, 8, 10}
    now = admit(found, budgets, decided, queued, reduction_factor=3, maximize=True, starts=1, stopped_before={3, 5})
    # floor(6 / 3) = 2: 0 and 1 are the best, but 1 stopped and 0 went on: nothing to promote, the rest stop
    assert now.promote == () and now.start == () and now.stopped == {7: 1, 9: 1, 11: 1}


def test_an_asha_phase_whose_n_trials_is_raised_goes_on_with_the_new_configurations(tmp_path):
    """In this process: a finished phase of six configurations, rerun with nine; the drawn configurations are equal
    (one value to draw), each still its own ladder and seed."""
    from hpsearch.engine.driver import Driver
    from hpsearch.spec.build import load_spec
    from tests.conftest import assert_exactly_once, study_trials, write_spec

    phase = {**ASHA_PHASE, "n_trials": 6, "space": {"hidden_size": {"type": "categorical", "choices": [8]}}}
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = write_spec(tmp_path, phases=[phase])
    assert Driver(load_spec(spec), url, echo=lambda line: None).run().complete
    assert_exactly_once(study_trials(url, "tiny.random"), 6 * 3)
    spec = write_spec(tmp_path, phases=[{**phase, "n_trials": 9}])
    assert Driver(load_spec(spec), url, echo=lambda line: None).run().complete
    trials = study_trials(url, "tiny.random")
    assert_exactly_once(trials, 9 * 3)
    seeds = {}
    for trial in trials:
        seeds.setdefault(trial.user_attrs["point"] // 3, set()).add(trial.user_attrs["seed"])
    assert all(len(found) == 1 for found in seeds.values()) and len({s for found in seeds.values() for s in found}) == 9


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_configuration_the_trainable_cannot_train_in_stages_is_refused_before_anything_runs(tmp_path, sampler):
    """Every configuration an asha phase will draw (each choice TPE may propose) is held against the trainable as the
    spec loads: a Torch schedule set by the total length, one of the choices, is refused then, not when the phase
    opens after others ran."""
    pytest.importorskip("torch")
    from hpsearch.errors import SpecError
    from hpsearch.spec.build import load_spec
    from tests.conftest import write_spec

    phase = {**ASHA_PHASE, "sampler": sampler, "budget": "num_epochs",
             "schedule": {"type": "asha", "reduction_factor": 3, "min_budget": 1, "max_budget": 3},
             "space": {"schedule": {"type": "categorical", "choices": ["step", "cosine"]}}}
    spec = write_spec(tmp_path, model={"backend": "torch"}, defaults={"hidden_sizes": [8], "device": "cpu"},
                      phases=[phase])
    with pytest.raises(SpecError, match="budget 'num_epochs': schedule 'cosine' sets every step's learning rate"):
        load_spec(spec)


def test_a_grid_is_not_derived_from_an_asha_phase(tmp_path):
    from hpsearch.errors import SpecError
    from hpsearch.spec.build import load_spec
    from tests.conftest import write_spec

    derived = {"name": "grid", "sampler": "grid", "grid": {"from": "random", "top_k": 2, "points": 2}}
    with pytest.raises(SpecError, match="whose asha rungs rank configurations at different budgets"):
        load_spec(write_spec(tmp_path, phases=[ASHA_PHASE, derived]))

"""The phase runner (``hpsearch.engine.phaserun``) on a real SQLite storage, in-process: a phase run until done or
out of budget, the reaping of a dead process's trial, a TPE phase's asking, and the seeds of points that differ only
in training length. Two drivers on one storage stand for two processes; a process that died is a pid above the
kernel's largest."""

from __future__ import annotations

import collections
import socket
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.engine.budget import Budget
from hpsearch.engine.driver import Driver
from hpsearch.engine.listener import StudyListener
from hpsearch.engine.pointqueue import owner
from hpsearch.search import grid as grids
from hpsearch.spec.build import load_spec
from hpsearch.storage.records import SEED, WORKER_DIED
from hpsearch.storage.trialstore import trial_id_of
from tests.conftest import TINY_STUDY, assert_exactly_once, write_spec

GRID = {"name": "grid", "sampler": "grid", "grid": {"learning_rate": [0.02, 0.04, 0.06, 0.08]}}
NO_SUCH_PID = 2**22 + 1  # above Linux's largest pid (pid_max is at most 2**22): no process has it


class Reaped(StudyListener):
    def __init__(self) -> None:
        self.reaped: list[tuple[int, str]] = []

    def on_trial_reaped(self, phase, trial, reason) -> None:
        self.reaped.append((trial.number, reason))


class Process:
    """One process's driver on the study, its phase opened as a run opens it."""

    def __init__(self, tmp_path, phase: dict, listener: StudyListener | None = None, **defaults) -> None:
        self.lines: list[str] = []
        spec = load_spec(write_spec(tmp_path, defaults={**TINY_STUDY["defaults"], **defaults}, phases=[phase]))
        self.driver = Driver(spec, f"sqlite:///{tmp_path / 'study.db'}", listener=listener, echo=self.lines.append)
        self.driver.phases.layout.check_context(self.driver.data.fingerprint)
        self.phase = spec.phases[0]
        self.study, self.record, self.view = self.driver.open_phase(self.phase, self.driver.results.snapshot())

    def run(self, budget: Budget | None = None) -> bool:
        return self.driver.phase_runner.run(self.phase, self.study, self.record, self.view, budget or Budget())

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)


@pytest.fixture
def processes(tmp_path):
    made: list[Process] = []

    def start(phase: dict = GRID, listener: StudyListener | None = None, **defaults) -> Process:
        made.append(Process(tmp_path, phase, listener, **defaults))
        return made[-1]

    yield start
    for process in made:
        process.driver.close()


def test_a_phase_runs_until_its_budget_is_spent_and_another_process_finishes_it_each_point_once(processes):
    first = processes()
    assert first.run(Budget(max_trials=2)) is False  # out of budget: the phase is not done
    states = collections.Counter(t.state for t in first.trials())
    assert states == {TrialState.COMPLETE: 2, TrialState.WAITING: 2}  # the rest queued, for any process to take
    second = processes()
    assert second.run() is True
    assert_exactly_once(second.trials(), 4)
    assert second.view.status()["state"] == "complete" and second.view.status()["done"] == 4


def test_a_dead_process_s_trial_is_reaped_once_and_its_point_run_again(processes):
    first = processes()
    first.run(Budget(max_trials=1))
    waiting = next(t for t in first.trials() if t.state == TrialState.WAITING)
    # a process that claimed the point and died: RUNNING, owned by a pid no process has
    first.driver.storage.set_trial_state_values(trial_id_of(waiting), TrialState.RUNNING)
    first.driver.store.own(trial_id_of(waiting), {**owner(), "host": socket.gethostname(), "pid": NO_SUCH_PID})
    listener = Reaped()
    second = processes(listener=listener)
    assert second.run() is True
    trials = second.trials()
    dead = next(t for t in trials if t.number == waiting.number)
    assert (dead.state, dead.user_attrs["failure"]) == (TrialState.FAIL, WORKER_DIED)
    assert listener.reaped == [(waiting.number, WORKER_DIED)]
    assert (f"[grid] trial {waiting.number} (point {waiting.user_attrs['point']}) failed: {WORKER_DIED}; its point "
            "will be retried") in second.lines
    assert_exactly_once(trials, 4)  # the point ran again, in a trial of its own


def test_a_tpe_phase_asks_no_trial_past_its_n_trials_and_a_resumed_one_draws_anew(processes):
    tpe = {"name": "tpe", "sampler": "tpe", "n_trials": 3, "space": TINY_STUDY["phases"][0]["space"]}
    first = processes(tpe)
    assert first.run(Budget(max_trials=2)) is False
    second = processes(tpe)
    assert second.run() is True
    trials = second.trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len({t.params["learning_rate"] for t in trials}) == 3  # the resumed process did not replay a draw
    assert [t.user_attrs[SEED] for t in trials] == [grids.trial_seed(0, "tpe", n) for n in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert second.driver.phase_runner._ask(second.phase, second.study, owner()) is None  # 3 taken: no 4th


def test_points_that_differ_only_in_training_length_share_a_seed(processes):
    process = processes({"name": "grid", "sampler": "grid",
                         "grid": {"learning_rate": [0.02, 0.04], "num_iters": [10, 20]}})
    assert process.run() is True
    seeds = collections.defaultdict(set)
    for trial in process.trials():
        seeds[trial.params["learning_rate"]].add(trial.user_attrs[SEED])
    assert all(len(shared) == 1 for shared in seeds.values()) and len(set().union(*seeds.values())) == 2

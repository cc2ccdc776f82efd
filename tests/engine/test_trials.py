"""The trial runner (``hpsearch.engine.trials``) on a real SQLite storage, in-process: how one trial's end is judged,
stored once, told to the listener and the console, and what a failing, silent, diverging or interrupted trainable
leaves behind. The phase around it is opened by a driver; the trials are asked of Optuna directly."""

from __future__ import annotations

import math
import re
import sys
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.backends import TrainResult
from hpsearch.engine.driver import Driver
from hpsearch.engine.interrupt import Interrupted
from hpsearch.engine.listener import StudyListener, TrialInfo
from hpsearch.engine.trials import RunningTrial
from hpsearch.errors import SpecError
from hpsearch.spec.build import load_spec
from hpsearch.storage.records import INTERRUPTED, SEED, WORKER_DIED
from hpsearch.storage.trialstore import Row, trial_id_of
from tests.conftest import write_spec


class Recorder(StudyListener):
    def __init__(self) -> None:
        self.started: list[int] = []
        self.ended: list[tuple[int, str, str | None]] = []
        self.progress: list[dict] = []

    def on_trial_start(self, phase, trial, config, seed, replaces) -> None:
        self.started.append(trial.number)

    def on_trial_end(self, phase, trial, result, reason, progress) -> None:
        self.ended.append((trial.number, trial.state, trial.failure))
        self.progress.append(progress)


TRAIN: list = []  # what the trainable below does, set by each test


def train(config, data, *, seed, on_epoch=None):
    """The study's trainable (a plain function: one call a trial): the test's."""
    return TRAIN[0](config, data, seed=seed, on_epoch=on_epoch)


class Opened:
    """A one-phase grid study opened by a driver: its Optuna study and view, a recording listener and the console."""

    def __init__(self, tmp_path, monkeypatch, train) -> None:
        monkeypatch.setattr(sys.modules[__name__], "TRAIN", [train])
        spec = load_spec(write_spec(tmp_path, model={"backend": f"{__name__}:train"}, defaults={"learning_rate": 0.1},
                                    objective={"metric": "val_acc", "direction": "maximize"},
                                    phases=[{"name": "grid", "sampler": "grid",
                                             "grid": {"learning_rate": [0.1, 0.2, 0.3]}}]), allow_import=True)
        self.lines: list[str] = []
        self.listener = Recorder()
        self.driver = Driver(spec, f"sqlite:///{tmp_path / 'study.db'}", listener=self.listener,
                             echo=self.lines.append)
        self.phase = spec.phases[0]
        self.driver.phases.layout.check_context(self.driver.data.fingerprint)  # as a run starts
        self.study, _, self.view = self.driver.open_phase(self.phase, self.driver.results.snapshot())

    def trial(self, learning_rate: float) -> RunningTrial:
        """A RUNNING trial of this process, as the phase runner hands it over."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "heartbeat is meant for optimize": the runner beats
            asked = self.study.ask({"learning_rate": optuna.distributions.CategoricalDistribution([0.1, 0.2, 0.3])})
        asked.set_user_attr(SEED, 7)
        trial_id = trial_id_of(asked)
        self.view.apply(Row(trial_id, asked.number, "RUNNING", None, self.driver.store.now(), None))
        return RunningTrial(self.phase, self.view, TrialInfo(trial_id, asked.number, None,
                                                             {"learning_rate": learning_rate}, 7))

    def run(self, *rungs: RunningTrial) -> None:
        self.driver.runner.run(list(rungs), self.study)

    def stored(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)


@pytest.fixture
def opened(tmp_path, monkeypatch):
    made = []

    def make(train) -> Opened:
        made.append(Opened(tmp_path, monkeypatch, train))
        return made[-1]

    yield make
    for each in made:
        each.driver.close()


def test_a_finished_training_is_stored_once_with_its_metrics_and_told_to_the_listener_and_the_console(opened):
    def train(config, data, *, seed, on_epoch=None):
        on_epoch(0, {"val_acc": 0.5})
        on_epoch(1, {"val_acc": config["learning_rate"]})
        return TrainResult(metrics={"val_acc": config["learning_rate"]}, loss_history=[2.0, 1.5], seconds=0.25,
                           examples=400)

    study = opened(train)
    study.run(study.trial(0.3))
    (stored,) = study.stored()
    assert (stored.state, stored.value) == (TrialState.COMPLETE, 0.3)
    attrs = stored.user_attrs
    assert attrs["metrics"] == {"val_acc": 0.3} and attrs["epoch_history"] == {"val_acc": [0.5, 0.3]}
    assert (attrs["final_loss"], attrs["seconds"], attrs["examples"]) == (1.5, 0.25, 400) and "failure" not in attrs
    assert study.listener.started == [0] and study.listener.ended == [(0, "COMPLETE", None)]
    assert study.listener.progress[0]["study_best_value"] == 0.3 and study.listener.progress[0]["complete"] == 1
    (line,) = study.lines  # done counts points, and this trial was asked for none; the ETA is the trial's length
    assert re.fullmatch(r"\[grid\] 0/3 trial 0 val_acc 0\.3000, best 0\.3000, ETA [0-9.]+ m?s", line), line


@pytest.mark.parametrize("value, state, failure", [
    (math.nan, TrialState.PRUNED, "diverged: val_acc is nan"),
    (math.inf, TrialState.PRUNED, "diverged: val_acc is inf"),
])
def test_a_value_that_is_not_finite_is_pruned_never_a_winner(opened, value, state, failure):
    study = opened(lambda config, data, *, seed, on_epoch=None: TrainResult(metrics={"val_acc": value}))
    study.run(study.trial(0.1))
    (stored,) = study.stored()
    assert (stored.state, stored.value, stored.user_attrs["failure"]) == (state, None, failure)
    assert study.view.best() is None


def test_a_failing_trainable_fails_its_trial_with_one_line_and_its_traceback(opened):
    def train(config, data, *, seed, on_epoch=None):
        raise RuntimeError("boom\nsecond line")

    study = opened(train)
    study.run(study.trial(0.1))
    (stored,) = study.stored()
    assert stored.state == TrialState.FAIL and stored.user_attrs["failure"] == "RuntimeError: boom second line"
    assert 'raise RuntimeError("boom\\nsecond line")' in stored.user_attrs["traceback"]
    assert study.listener.ended == [(0, "FAIL", "RuntimeError: boom second line")]
    assert "FAIL (RuntimeError: boom second line)" in study.lines[0]


def test_a_trainable_that_never_reports_the_objective_stops_the_study_with_the_metrics_it_has(opened):
    study = opened(lambda config, data, *, seed, on_epoch=None: TrainResult(metrics={"val_loss": 0.7}))
    with pytest.raises(SpecError, match="set objective.metric to one of the metrics it reports"):
        study.run(study.trial(0.1))
    (stored,) = study.stored()
    assert stored.state == TrialState.FAIL and "'val_acc' (it reported: val_loss)" in stored.user_attrs["failure"]


def test_a_signal_inside_training_fails_the_trial_as_interrupted_and_names_it(opened):
    def train(config, data, *, seed, on_epoch=None):
        raise KeyboardInterrupt

    study = opened(train)
    with pytest.raises(Interrupted):
        study.run(study.trial(0.1))
    (stored,) = study.stored()
    assert (stored.state, stored.user_attrs["failure"]) == (TrialState.FAIL, INTERRUPTED)
    assert study.driver.interruption.stopped == ["trial 0 of phase 'grid'"]


def test_a_result_that_comes_after_a_reaper_failed_the_trial_is_discarded_not_stored(opened):
    """The storage's one transaction decides: a late result overwrites neither the state nor the reason."""
    holder: dict[str, Opened] = {}

    def train(config, data, *, seed, on_epoch=None):
        reaper = holder["study"].driver.store  # another process found this one dead meanwhile
        assert reaper.finish(holder["trial"].info.trial_id, TrialState.FAIL, None, {"failure": WORKER_DIED})
        return TrainResult(metrics={"val_acc": 0.9})

    study = holder["study"] = opened(train)
    holder["trial"] = study.trial(0.1)
    study.run(holder["trial"])
    (stored,) = study.stored()
    assert (stored.state, stored.value, stored.user_attrs["failure"]) == (TrialState.FAIL, None, WORKER_DIED)
    assert "metrics" not in stored.user_attrs and study.listener.ended == []
    assert study.lines == ["[grid] trial 0: result discarded, the trial was already failed (its point was handed "
                           "to another worker)"]

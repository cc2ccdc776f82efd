"""One training run from a spec (``hpsearch.engine.training``), in-process on the tiny synthetic study: the
configuration a trial trains with, a trial never seeing the test split, a staged run equal to one straight through,
and the winner's scores on the test split."""

from __future__ import annotations

import numpy as np
import pytest

from hpsearch.engine.training import (load_data, resolved_config, score_test_split, start_training, train_once,
                                      without_test)
from hpsearch.errors import SpecError
from hpsearch.spec.build import load_spec
from tests.conftest import TINY_STUDY, write_spec


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path))


def test_the_configuration_is_the_backend_s_defaults_then_the_spec_s_then_the_trial_s(spec):
    config = resolved_config(spec, {"learning_rate": 0.2})
    assert config["learning_rate"] == 0.2 and config["hidden_size"] == TINY_STUDY["defaults"]["hidden_size"]
    assert config["reg"] == resolved_config(spec)["reg"]  # not in the spec: the backend's own default
    with pytest.raises(SpecError, match="learning_rate"):
        resolved_config(spec, {"learning_rate": -1.0})


SEEN: list = []


def watching(config, data, *, seed, on_epoch=None):
    """A trainable that notes what it was handed."""
    SEEN.append((data.X_test, seed, config["scale"]))
    return {"val_acc": 0.5}


def test_a_trial_trains_without_the_test_split_and_the_same_seed_trains_the_same(spec, tmp_path):
    data = load_data(spec)
    assert data.X_test is not None and without_test(data).X_test is None and without_test(data).X_train is data.X_train
    first = train_once(spec, data, {"learning_rate": 0.1}, seed=3)
    again = train_once(spec, data, {"learning_rate": 0.1}, seed=3)
    assert first.metrics == again.metrics and first.loss_history == again.loss_history
    users = load_spec(write_spec(tmp_path, "own", model={"backend": f"{__name__}:watching"}, defaults={"scale": 2},
                                 objective={"metric": "val_acc", "direction": "maximize"}), allow_import=True)
    SEEN.clear()
    assert train_once(users, data, {"scale": 3}).metrics == {"val_acc": 0.5}
    assert SEEN == [(None, 0, 3)]  # no test split; the spec's seed where the trial gives none; the trial's value


def test_a_run_in_stages_ends_where_one_trained_straight_through_does(spec):
    data = load_data(spec)
    straight = train_once(spec, data, {"num_iters": 20}, seed=5)
    staged = start_training(spec, data, {"num_iters": 20}, seed=5)
    staged.advance(10)
    assert staged.advance(20).metrics == straight.metrics


def test_a_batch_larger_than_the_training_split_is_one_line(spec):
    with pytest.raises(SpecError, match=r"batch_size 5000 is larger than the training split \(200 samples\)"):
        train_once(spec, load_data(spec), {"batch_size": 5000})


def test_the_winner_is_scored_on_the_test_split_only_where_there_is_one(spec):
    data = load_data(spec)
    result = train_once(spec, data, seed=0)
    scores = score_test_split(spec, data, result)
    assert set(scores) == {"test_acc", "test_loss"} and 0.0 <= scores["test_acc"] <= 1.0
    assert scores["test_acc"] == pytest.approx(float(np.mean(result.model.predict(data.X_test) == data.y_test)))
    assert score_test_split(spec, without_test(data), result) is None

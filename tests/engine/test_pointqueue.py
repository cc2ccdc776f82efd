"""The point queue of a grid or random phase: what a signal during a big enqueue leaves behind."""

from __future__ import annotations

import collections
import os
import signal

import optuna
import pytest

import hpsearch
from hpsearch.engine import pointqueue
from hpsearch.engine.interrupt import Interrupted, Interruption
from hpsearch.storage.trialstore import TrialStore
from tests.conftest import TINY_STUDY

GRID_SPEC = {**TINY_STUDY, "name": "queue", "tracking": {"enabled": False},
             "phases": [{"name": "grid", "sampler": "grid",
                         "grid": {"learning_rate": [0.01 * (k + 1) for k in range(12)]}}]}


def test_a_signal_stops_an_enqueue_between_batches_and_a_rerun_enqueues_the_rest_once(tmp_path, monkeypatch):
    """In process: the signal is this process's own SIGTERM, sent while the first batch is written."""
    monkeypatch.setattr(pointqueue, "ENQUEUE_BATCH", 5)
    storage = f"sqlite:///{tmp_path / 'queue.db'}"
    real_enqueue = TrialStore.enqueue

    def enqueue_then_signal(self, study_id, trials, **kwargs):
        enqueued = real_enqueue(self, study_id, trials, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return enqueued

    monkeypatch.setattr(TrialStore, "enqueue", enqueue_then_signal)
    interruption = Interruption()
    with interruption.installed(), pytest.raises(Interrupted):
        hpsearch.run(GRID_SPEC, storage=storage, max_trials=0, interruption=interruption, echo=lambda line: None)
    trials = optuna.load_study(study_name="queue.grid", storage=storage).get_trials(deepcopy=False)
    assert len(trials) == 5  # the first batch, whole; the 7 points left were never written

    monkeypatch.setattr(TrialStore, "enqueue", real_enqueue)
    hpsearch.run(GRID_SPEC, storage=storage, max_trials=0, echo=lambda line: None)
    trials = optuna.load_study(study_name="queue.grid", storage=storage).get_trials(deepcopy=False)
    assert collections.Counter(t.user_attrs["point"] for t in trials) == {point: 1 for point in range(12)}
    assert {t.state.name for t in trials} == {"WAITING"}

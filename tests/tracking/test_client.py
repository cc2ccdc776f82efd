"""The MLflow plumbing (``hpsearch.tracking.client.MlflowBase``) in-process, against a recording client: batches of
at most MLflow's 1000 metrics, a failure reported once and never raised, the write lock taken once however deep the
calls nest. No MLflow store is made: what is checked is the calls."""

from __future__ import annotations

import math

import pytest

from hpsearch.spec.build import load_spec
from hpsearch.tracking.client import MAX_METRICS_PER_BATCH, MlflowBase
from tests.conftest import write_spec


class RecordingClient:
    def __init__(self, fail: Exception | None = None) -> None:
        self.batches: list[tuple[str, int, list, list]] = []
        self.fail = fail

    def log_batch(self, run_id, metrics=(), params=(), tags=()) -> None:
        if self.fail is not None:
            raise self.fail
        self.batches.append((run_id, len(metrics), list(params), list(tags)))


@pytest.fixture
def base(tmp_path):
    lines: list[str] = []
    spec = load_spec(write_spec(tmp_path, "tracked", tracking={"enabled": True}))
    made = MlflowBase(spec, f"sqlite:///{tmp_path / 'mlflow.db'}", echo=lines.append)
    made._client = RecordingClient()
    made.lines = lines
    return made


def test_metrics_go_in_batches_of_at_most_1000_with_the_params_and_tags_in_the_first(base):
    from mlflow.entities import Metric, Param, RunTag

    metrics = [Metric("val_acc", 0.5, 0, step) for step in range(2 * MAX_METRICS_PER_BATCH + 345)]
    params, tags = [Param("lr", "0.1")], [RunTag("state", "COMPLETE")]
    base._log_batches("logging", "run1", metrics, params, tags)
    assert base._client.batches == [("run1", 1000, params, tags), ("run1", 1000, [], []), ("run1", 345, [], [])]


@pytest.mark.parametrize("metrics, params, calls", [(0, 0, 0), (0, 1, 1), (1000, 0, 1), (1001, 0, 2)])
def test_a_batch_is_sent_only_for_something_to_log(base, metrics, params, calls):
    from mlflow.entities import Metric, Param

    base._log_batches("logging", "run1", [Metric("m", 1.0, 0, s) for s in range(metrics)],
                      [Param("p", "1")] * params)
    assert len(base._client.batches) == calls


def test_a_failing_mlflow_is_reported_once_in_one_line_pauses_tracking_and_never_raises(base):
    failing = RecordingClient(fail=ConnectionError("refused by http://user:SECRET@mlflow:5000\nand more"))
    base._client = failing
    assert base._safe("logging metrics", lambda: failing.log_batch("run1")) is None
    (line,) = base.lines
    assert line.startswith("tracking: MLflow at sqlite:///")
    assert "failed while logging metrics (refused by http://user:" in line
    assert "SECRET" not in line and line.endswith("fills MLflow in afterwards")
    assert base._down_until > 0
    base._down_until = math.inf  # within the pause, however long the test takes: not even tried
    calls = []
    assert base._safe("logging metrics", lambda: calls.append(1)) is None and calls == []
    base._down_until = 0.0  # the pause over: tried again; failing again is not reported again
    assert base._safe("logging metrics", lambda: failing.log_batch("run1")) is None and len(base.lines) == 1
    base._down_until = 0.0
    assert base._safe("logging metrics", lambda: calls.append(1) or "done") == "done" and calls == [1]


def test_the_write_lock_of_a_sqlite_store_is_taken_once_however_deep_the_calls_nest(base, monkeypatch):
    from hpsearch.tracking import client

    taken = []
    real = client.storage_lock

    def counting(url, name):
        taken.append(name)
        return real(url, name)

    monkeypatch.setattr(client, "storage_lock", counting)
    assert base._safe("outer", lambda: base._safe("inner", lambda: base._safe("innermost", lambda: 3))) == 3
    assert taken == ["mlflow-write"] and base._lock_depth == 0

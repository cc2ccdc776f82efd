"""The MLflow plumbing (``hpsearch.tracking.client.MlflowBase``) in-process, against a recording client: batches of
at most MLflow's 1000 metrics, a failure reported once and never raised, the write lock taken once however deep the
calls nest; and MLflow's HTTP client as hpsearch sets it up, against a small server in a thread. No MLflow store is
made: what is checked is the calls."""

from __future__ import annotations

import http.server
import json
import math
import threading

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


def test_a_notice_says_what_went_wrong_without_the_request_s_url(base):
    from mlflow.exceptions import MlflowException

    long_url = "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/" + "0" * 200 + "/artifacts/plot.png"
    failure = MlflowException(f"API request to {long_url} failed with exception HTTPConnectionPool(host='127.0.0.1', "
                              "port=5000): Max retries exceeded (Caused by ProtocolError('Connection aborted.'))")
    base._safe("logging the plots", lambda: (_ for _ in ()).throw(failure))
    (line,) = base.lines
    assert "failed while logging the plots (HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries" in line
    assert "0" * 200 not in line


class KeepAliveEnder(http.server.BaseHTTPRequestHandler):
    """Answers a connection's first request, kept alive, and ends the connection when its second arrives, as a server
    whose keep-alive time ran out just as the request went out."""

    protocol_version = "HTTP/1.1"
    seen: list[int] = []  # for each request, how many the connection had before it
    end_all = False  # end every connection, its first request too

    def setup(self) -> None:
        super().setup()
        self.on_connection = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(self.on_connection)
        self.on_connection += 1
        if self.on_connection > 1 or self.end_all:
            self.close_connection = True
            return
        body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_kept_alive_connection_the_server_ended_costs_one_retry_not_tracking():
    from mlflow import MlflowClient  # MLflow's HTTP retries as hpsearch.tracking.client, imported above, sets them

    KeepAliveEnder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveEnder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mlflow = MlflowClient(tracking_uri=f"http://127.0.0.1:{server.server_address[1]}")
        assert mlflow.get_experiment_by_name("a") is None
        assert mlflow.get_experiment_by_name("b") is None  # ended on its kept-alive connection, answered on a new one
        assert KeepAliveEnder.seen == [0, 1, 0]
        KeepAliveEnder.end_all = True  # a server that never answers: two attempts, not MLflow's default eight
        with pytest.raises(Exception, match="Remote end closed connection without response"):
            mlflow.get_experiment_by_name("c")
    finally:
        KeepAliveEnder.end_all = False
        server.shutdown()
        server.server_close()
    assert len(KeepAliveEnder.seen) == 5

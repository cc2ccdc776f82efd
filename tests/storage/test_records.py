"""hpsearch's own table in a study storage, and the encoding of its trials' params: against a real SQLite storage
and, where it differs (the upsert statement), a PostgreSQL one; in-process."""

from __future__ import annotations

import pickle
import threading

import pytest
import sqlalchemy as sa

from hpsearch.storage.records import (
    INTERRUPTED, LADDER_STOPPED, WITHDRAWN, WORKER_DIED, SharedState, StateTable, counts_as_failure, decode_params,
    encode_param,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("pg_database")


def test_a_value_reads_back_as_written_and_a_put_replaces_it_in_one_row(url):
    table = StateTable(url)
    assert table.get("s", "layout") is None  # no table yet: nothing stored, nothing created
    table.put("s", "layout", {"generation": 1, "phases": {"a": [1, 2.5, None, "x"]}})
    table.put("s", "layout", {"generation": 2})
    assert table.get("s", "layout") == {"generation": 2}
    with table.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM hpsearch_state")).scalar() == 1


def test_put_many_writes_every_value_and_keys_reads_a_prefix_of_one_study(url):
    table = StateTable(url)
    table.put_many("s", {"shared:a": 1, "shared:b": [2], "layout": {}})
    table.put_many("s", {"shared:a": 3})
    table.put("other", "shared:a", "not this study's")
    table.put("s", "sharedXa", "no match for a prefix with a LIKE wildcard in it")
    assert table.keys("s", "shared:") == {"shared:a": 3, "shared:b": [2]}
    assert table.keys("s", "shared_") == {}  # '_' is a letter of the prefix, not SQL's any-letter


def test_add_keeps_the_first_value_and_returns_the_one_stored(url):
    table = StateTable(url)
    assert table.add("s", "result", {"by": "first"}) == {"by": "first"}
    assert table.add("s", "result", {"by": "second"}) == {"by": "first"}


def test_get_or_create_calls_one_factory_among_racing_threads(url):
    """Eight threads ask for one shared value at once: one factory runs, all get its value."""
    state = SharedState(url, "s")
    state.put("warm", 0)  # the table made before the race: the race is on the value, not the schema
    calls: list[int] = []
    barrier = threading.Barrier(8)
    got: list[object] = []

    def ask(k: int) -> None:
        barrier.wait()
        got.append(SharedState(url, "s").get_or_create("run", lambda: calls.append(k) or f"run-{k}"))

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and got == [f"run-{calls[0]}"] * 8


def test_shared_state_travels_to_another_process_without_its_connection(url):
    state = SharedState(url, "s")
    state.put("k", {"v": 1})
    copy = pickle.loads(pickle.dumps(state))
    assert copy._table is None and copy.get("k") == {"v": 1}


def test_list_params_travel_as_json_text_and_read_back_as_lists():
    params = {"hidden_sizes": [64, 32], "lr": 0.1, "name": "[not json", "opts": {"a": 1}}
    stored = {name: encode_param(value) for name, value in params.items()}
    assert stored["hidden_sizes"] == "[64, 32]" and stored["lr"] == 0.1
    assert decode_params(stored) == params


@pytest.mark.parametrize("failure, counted", [
    (WORKER_DIED, True), ("ValueError: diverged", True),
    (INTERRUPTED, False), (WITHDRAWN, False), (LADDER_STOPPED, False),
])
def test_which_failures_use_up_a_retry(failure, counted):
    assert counts_as_failure("FAIL", failure) is counted
    assert counts_as_failure("COMPLETE", failure) is False

"""What hpsearch keeps in a study storage besides Optuna's trials: attribute names, param encoding, and its own table.

Each phase is an Optuna study whose trials carry a few user attributes (``point``, ``attempt``, ``seed``, the owner
process, the failure reason). Everything else hpsearch needs — what a study was started with, which Optuna study serves
each phase, the final result, the MLflow run ids that every process must share — lives in one small table,
``hpsearch_state``, keyed by study and name. A value is one row, written in one statement: a record that must change
together (the context and the phases, say) is one value, so no crash can leave half of it behind.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from typing import Any, Callable

import sqlalchemy as sa

from hpsearch.storage.connections import engine_for, storage_lock
from hpsearch.storage.urls import sqlite_path

__all__ = [
    "ATTEMPT", "DEVICE", "EXAMPLES", "FAILURE", "FINISHED_STATES", "HEARTBEAT_LOST", "INTERRUPTED",
    "LADDER_STOPPED", "NEVER_STARTED", "OWNER",
    "POINT", "REAPED", "SEED", "SharedState", "StateTable", "TRACEBACK", "WITHDRAWN", "WORKER_DIED", "decode_param",
    "decode_params", "encode_param", "has_state_table",
]

POINT, ATTEMPT, SEED, FAILURE, OWNER = "point", "attempt", "seed", "failure", "hpsearch:owner"
FINISHED_STATES = ("COMPLETE", "PRUNED")
INTERRUPTED = "interrupted"
WITHDRAWN = "withdrawn: its point left the phase"  # n_trials was lowered after the point was queued
HEARTBEAT_LOST, WORKER_DIED, NEVER_STARTED = "heartbeat lost", "worker died", "claimed by a process that never started it"
REAPED = (HEARTBEAT_LOST, WORKER_DIED, NEVER_STARTED)  # failures of trials whose process is gone
LADDER_STOPPED = "not run: a lower rung of its ladder failed"  # the rung goes back in the queue
NOT_COUNTED = (INTERRUPTED, WITHDRAWN, LADDER_STOPPED)  # failures that use up no retry
EXAMPLES = "examples"  # training examples a trial processed (a ladder's rung: what its run trained since the last)
TRACEBACK = "traceback"  # where a trainable raised, beside the one-line FAILURE
DEVICE = "device"  # what a trial trained on (cpu, cuda:2), where its trainable said


def encode_param(value: Any) -> Any:
    """Optuna stores only primitive categoricals: lists (e.g. hidden_sizes) travel as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def decode_param(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params as the user wrote them: lists back from their JSON text."""
    return {name: decode_param(value) for name, value in params.items()}


def counts_as_failure(state: str, failure: str | None) -> bool:
    """A failed trial that uses up one of its point's retries."""
    return state == "FAIL" and failure not in NOT_COUNTED


_metadata = sa.MetaData()
_table = sa.Table(
    "hpsearch_state", _metadata,
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def has_state_table(url: str) -> bool:
    """Whether a run has begun to write its study to the storage at ``url`` (hpsearch's table exists), looked at
    without creating anything there: a SQLite file opened read-only, a server's database on a connection of its own.
    False where it cannot be read now."""
    path = sqlite_path(url)
    try:
        if path is not None:
            if not path.exists():
                return False
            with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
                return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                    (_table.name,)).fetchone() is not None
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            return sa.inspect(engine).has_table(_table.name)
        finally:
            engine.dispose()
    except Exception:  # noqa: BLE001 - not readable now (locked, unreachable): not begun, as far as anyone can tell
        return False


class StateTable:
    """The ``hpsearch_state`` table of one storage: JSON values by (study, key), one row per value."""

    def __init__(self, url: str, engine: sa.Engine | None = None) -> None:
        self.url = url
        self.engine = engine if engine is not None else engine_for(url)
        self._exists = False

    def _table_exists(self) -> bool:
        if not self._exists:
            self._exists = sa.inspect(self.engine).has_table(_table.name)
        return self._exists

    def _ensure(self) -> None:
        if not self._table_exists():
            with storage_lock(self.url, "schema"):
                _metadata.create_all(self.engine, checkfirst=True)
            self._exists = True

    def get(self, study: str, key: str) -> Any:
        if not self._table_exists():
            return None  # a storage no hpsearch process wrote to yet (or a read-only look at one)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_table.c.value).where(_table.c.study == study, _table.c.key == key)).first()
        return json.loads(row[0]) if row is not None else None

    def put(self, study: str, key: str, value: Any) -> None:
        """Write one value in one statement (an upsert): readers see the old value or the new one, never a mix."""
        self.put_many(study, {key: value})

    def put_many(self, study: str, values: dict[str, Any]) -> None:
        """Write several values in one statement (an upsert): readers see all of them old or all new."""
        self._ensure()
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(_table).values([{"study": study, "key": key, "value": json.dumps(value)}
                                           for key, value in values.items()])
        with self.engine.begin() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["study", "key"],
                                                         set_={"value": statement.excluded.value}))

    def add(self, study: str, key: str, value: Any) -> Any:
        """Insert ``value`` unless the key has one; returns the value stored (this one, or the one that won)."""
        self._ensure()
        with contextlib.suppress(sa.exc.IntegrityError), self.engine.begin() as conn:
            conn.execute(sa.insert(_table).values(study=study, key=key, value=json.dumps(value)))
        return self.get(study, key)

    def keys(self, study: str, prefix: str = "") -> dict[str, Any]:
        if not self._table_exists():
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_table.c.key, _table.c.value).where(
                _table.c.study == study, _table.c.key.startswith(prefix, autoescape=True))).all()
        return {key: json.loads(value) for key, value in rows}


class SharedState:
    """Values a listener keeps in the study storage, visible to every process working on the study.

    Picklable: it carries the storage URL, not a connection, so a tracking process opens its own.
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.study_name = study_name
        self._table: StateTable | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "study_name": self.study_name, "_table": None}

    @property
    def table(self) -> StateTable:
        if self._table is None:
            self._table = StateTable(self.url)
        return self._table

    def get(self, key: str) -> Any:
        """The value stored under ``key`` (None: none yet)."""
        return self.table.get(self.study_name, "shared:" + key)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``, in place of what was there."""
        self.table.put(self.study_name, "shared:" + key, value)

    def get_or_create(self, key: str, factory: Callable[[], Any]) -> Any:
        """The value stored under ``key``, created by exactly one process (under the storage lock)."""
        value = self.get(key)
        if value is not None:
            return value
        with storage_lock(self.url, f"{self.study_name}:shared:{key}"):
            value = self.get(key)
            if value is None:
                value = factory()
                if value is not None:  # a factory returning None only looks
                    self.put(key, value)
            return value

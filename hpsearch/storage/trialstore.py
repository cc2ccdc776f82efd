"""The one adapter over Optuna's storage tables: every private Optuna call hpsearch makes is here.

Optuna's public API reads a study's trials whole and writes one attribute per transaction; a driver built on it pays
per trial for the size of the study. These few statements on Optuna's own schema (``optuna.storages._rdb.models``)
keep a trial's storage work constant instead:

- ``enqueue``: a batch of WAITING trials, with their params, attributes and numbers, in one transaction.
- ``claim``: one statement moves the oldest WAITING trial to RUNNING (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
  workers never queue behind each other; SQLite runs one writer at a time), in the transaction that records its owner
  and first heartbeat; in a phase of ladders, the same transaction takes the ladder's other queued rungs.
- ``finish``: RUNNING -> final state only if still RUNNING, with its value and attributes, in one transaction; a
  trial already failed by a reaper is left alone, so no late result is ever counted.
- ``rows``: light tuples (no params, no histories) of a study's trials, or of those changed since a moment.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, Trial, TrialState

from hpsearch.errors import UserError

__all__ = ["OPTUNA_TABLES", "SCHEMA_VERSION", "Row", "SchemaMismatch", "TrialReader", "TrialStore", "trial_id_of"]

# The version of Optuna's storage schema (``optuna.storages._rdb.models.SCHEMA_VERSION``) these statements were
# written and tested for; the columns they read and write, by table. tests/storage/test_trialstore.py holds both
# against the installed Optuna, and a storage is refused at run time on any other schema version: a statement on a
# schema it was not written for could write trials Optuna then misreads.
SCHEMA_VERSION = 12
OPTUNA_TABLES = frozenset(models.BaseModel.metadata.tables) | {"alembic_version"}  # its version stamp among them
COLUMNS = {
    "trials": {"trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"},
    "trial_user_attributes": {"trial_id", "key", "value_json"},
    "trial_values": {"trial_id", "objective", "value", "value_type"},
    "trial_params": {"trial_id", "param_name", "param_value", "distribution_json"},
    "trial_heartbeats": {"trial_id", "heartbeat"},
    "studies": {"study_id"},
}


class SchemaMismatch(UserError):
    """The installed Optuna keeps its trials in a schema this hpsearch was not written for."""


def check_schema() -> None:
    """SchemaMismatch unless the installed Optuna keeps its trials in :data:`SCHEMA_VERSION`."""
    if models.SCHEMA_VERSION != SCHEMA_VERSION:
        import optuna

        raise SchemaMismatch(f"optuna {optuna.__version__} stores trials in schema version {models.SCHEMA_VERSION}; "
                             f"this hpsearch writes schema {SCHEMA_VERSION} only. Install the optuna version "
                             "pyproject.toml names (pip install -e .).")


def trial_id_of(trial: Trial | FrozenTrial) -> int:
    """The storage's id of a trial, as ``study.ask()`` or ``get_trials`` hands it (Optuna keeps it private)."""
    return trial._trial_id

T, A, V, P, H = (models.TrialModel, models.TrialUserAttributeModel, models.TrialValueModel,
                 models.TrialParamModel, models.TrialHeartbeatModel)
ROW_ATTRS = ("point", "failure", "hpsearch:owner", "attempt", "examples")


def utcnow() -> datetime.datetime:
    """Optuna 5 stores trial times as naive UTC."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


@dataclass
class Row:
    """A trial without its params and histories: enough to count, rank, claim and reap."""

    trial_id: int
    number: int
    state: str
    value: float | None
    start: datetime.datetime | None  # naive UTC
    complete: datetime.datetime | None
    point: int | None = None
    failure: str | None = None
    owner: dict[str, Any] | None = None
    attempt: int | None = None
    examples: int | None = None  # training examples the trial processed

    @property
    def seconds(self) -> float | None:
        return (self.complete - self.start).total_seconds() if self.start and self.complete else None


def _state(stored: Any) -> TrialState:
    """A trial's state as the driver hands it back (an enum, or its name on some databases)."""
    return stored if isinstance(stored, TrialState) else TrialState[str(stored)]


def _value(stored: Any, kind: Any) -> float:
    """A trial's value from its stored form (``inf`` and ``nan`` are stored as a kind, not a number)."""
    return V.stored_repr_to_value(stored, kind if isinstance(kind, V.TrialValueType) else V.TrialValueType[kind])


class TrialReader:
    """Statements that read the trials of an Optuna ``RDBStorage``: light rows, counts, whole trials by id."""

    def __init__(self, storage: RDBStorage) -> None:
        check_schema()
        self.storage = storage
        self.engine: sa.Engine = storage.engine
        self.postgres = self.engine.dialect.name == "postgresql"
        self._claimed: dict[int, int] = {}  # per study, the last trial this process claimed

    def study_id(self, study_name: str) -> int:
        """The storage's id of the Optuna study named ``study_name``; KeyError when there is none."""
        return self.storage.get_study_id_from_name(study_name)

    def stale(self, study_id: int) -> set[int]:
        """RUNNING trials whose heartbeat is older than the grace period (Optuna's own test of it)."""
        return set(self.storage._get_stale_trial_ids(study_id))

    def rows(self, study_id: int, *, since: datetime.datetime | None = None, after_id: int | None = None,
             states: tuple[TrialState, ...] | None = None) -> list[Row]:
        """The study's trials as :class:`Row` s; with ``since``/``after_id``, only those started or finished since
        then or created after that id (what a view of the study needs to catch up)."""
        t = T.__table__
        query = (sa.select(t.c.trial_id, t.c.number, t.c.state, V.value, V.value_type, t.c.datetime_start,
                           t.c.datetime_complete)
                 .outerjoin(V.__table__, sa.and_(V.trial_id == t.c.trial_id, V.objective == 0))
                 .where(t.c.study_id == study_id))
        if since is not None or after_id is not None:
            changed = []
            if since is not None:
                changed += [t.c.datetime_start >= since, t.c.datetime_complete >= since]
            if after_id is not None:
                changed.append(t.c.trial_id > after_id)
            query = query.where(sa.or_(*changed))
        if states is not None:
            query = query.where(t.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            found = {}
            for trial_id, number, state, value, kind, start, complete in conn.execute(query):
                value = _value(value, kind) if value is not None or kind is not None else None
                found[trial_id] = Row(trial_id, number, _state(state).name, value, start, complete)
            if found:
                ids = sa.select(t.c.trial_id).where(t.c.study_id == study_id)
                if len(found) < 500:
                    ids = list(found)
                attrs = conn.execute(sa.select(A.trial_id, A.key, A.value_json)
                                     .where(A.trial_id.in_(ids), A.key.in_(ROW_ATTRS)))
                for trial_id, key, value in attrs:
                    row = found.get(trial_id)
                    if row is not None:
                        setattr(row, {"hpsearch:owner": "owner"}.get(key, key), json.loads(value))
        return sorted(found.values(), key=lambda r: r.number)

    def state_counts(self, study_id: int) -> dict[str, int]:
        """How many of the study's trials are in each state: one small query, whatever the study's size, to check a
        view caught up by time (a clock behind by more than the catch-up's slack would hide a change from it)."""
        t = T.__table__
        with self.engine.connect() as conn:
            counted = conn.execute(sa.select(t.c.state, sa.func.count()).where(t.c.study_id == study_id)
                                   .group_by(t.c.state)).all()
        return {_state(state).name: n for state, n in counted}

    def frozen_trials(self, trial_ids: list[int]) -> list[FrozenTrial]:
        """The trials ``trial_ids`` whole (params, attributes, value), as Optuna's ``get_trial`` reads them one at a
        time: here four queries per 500 trials."""
        found: list[FrozenTrial] = []
        for start in range(0, len(trial_ids), 500):
            chunk = trial_ids[start:start + 500]
            t = T.__table__
            with self.engine.connect() as conn:
                base = conn.execute(sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start,
                                              t.c.datetime_complete).where(t.c.trial_id.in_(chunk))).all()
                values = {trial_id: _value(value, kind) for trial_id, value, kind in conn.execute(
                              sa.select(V.trial_id, V.value, V.value_type)
                              .where(V.trial_id.in_(chunk), V.objective == 0))}
                params: dict[int, dict[str, Any]] = {}
                distributions: dict[int, dict[str, BaseDistribution]] = {}
                for trial_id, name, internal, encoded in conn.execute(
                        sa.select(P.trial_id, P.param_name, P.param_value, P.distribution_json)
                        .where(P.trial_id.in_(chunk))):
                    distribution = json_to_distribution(encoded)
                    params.setdefault(trial_id, {})[name] = distribution.to_external_repr(internal)
                    distributions.setdefault(trial_id, {})[name] = distribution
                attrs: dict[int, dict[str, Any]] = {}
                for trial_id, key, value in conn.execute(sa.select(A.trial_id, A.key, A.value_json)
                                                         .where(A.trial_id.in_(chunk))):
                    attrs.setdefault(trial_id, {})[key] = json.loads(value)
            for trial_id, number, state, started, completed in base:
                found.append(FrozenTrial(
                    number=number, state=_state(state), value=values.get(trial_id), datetime_start=started,
                    datetime_complete=completed, params=params.get(trial_id, {}),
                    distributions=distributions.get(trial_id, {}), user_attrs=attrs.get(trial_id, {}),
                    system_attrs={}, intermediate_values={}, trial_id=trial_id))
        return found

    def user_attr(self, trial_ids: list[int], key: str) -> dict[int, Any]:
        """The user attribute ``key`` of those of ``trial_ids`` that have it (a query per 500 trials)."""
        found: dict[int, Any] = {}
        if not trial_ids:
            return found
        with self.engine.connect() as conn:
            for start in range(0, len(trial_ids), 500):
                chunk = trial_ids[start:start + 500]
                for trial_id, value in conn.execute(sa.select(A.trial_id, A.value_json)
                                                    .where(A.trial_id.in_(chunk), A.key == key)):
                    found[trial_id] = json.loads(value)
        return found

    def now(self) -> datetime.datetime:
        return utcnow()


class TrialStore(TrialReader):
    """The statements that write: enqueue, claim, own, finish, heartbeat; and those of :class:`TrialReader`."""


    def _upsert_attrs(self, conn: sa.Connection, trial_id: int, attrs: dict[str, Any]) -> None:
        if not attrs:
            return
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(A.__table__)
        conn.execute(statement.on_conflict_do_update(index_elements=["trial_id", "key"],
                                                     set_={"value_json": statement.excluded.value_json}),
                     [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                      for key, value in attrs.items()])

    # ---- the queue -------------------------------------------------------------------------------------------

    def enqueue(self, study_id: int, trials: Iterable[tuple[dict[str, tuple[Any, BaseDistribution]],
                                                            dict[str, Any]]],
                state: TrialState = TrialState.WAITING) -> int:
        """Add WAITING trials ``(params, user_attrs)`` in one transaction; params map names to (value, distribution).
        ``state=PRUNED``: trials decided without running (rungs halving did not promote), started and ended now.

        The caller holds the phase's points lock, so no other process numbers trials of this study meanwhile.
        """
        trials = list(trials)
        if not trials:
            return 0
        now = None if state == TrialState.WAITING else self.now()
        with self.engine.begin() as conn:
            if self.postgres:  # Optuna's own trial creation locks the study row too
                conn.execute(sa.select(models.StudyModel.study_id).where(models.StudyModel.study_id == study_id)
                             .with_for_update())
            first = conn.execute(sa.select(sa.func.count()).select_from(T.__table__)
                                 .where(T.study_id == study_id)).scalar_one()
            created = conn.execute(
                sa.insert(T.__table__).returning(T.__table__.c.trial_id, sort_by_parameter_order=True),
                [{"number": first + k, "study_id": study_id, "state": state,
                  "datetime_start": now, "datetime_complete": now} for k in range(len(trials))],
            ).scalars().all()
            params, attrs = [], []
            for trial_id, (values, user_attrs) in zip(created, trials):
                for name, (value, distribution) in values.items():
                    params.append({"trial_id": trial_id, "param_name": name,
                                   "param_value": distribution.to_internal_repr(value),
                                   "distribution_json": distribution_to_json(distribution)})
                attrs.extend({"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                             for key, value in user_attrs.items())
            if params:
                conn.execute(sa.insert(P.__table__), params)
            if attrs:
                conn.execute(sa.insert(A.__table__), attrs)
        return len(trials)

    def claim(self, study_id: int, owner: dict[str, Any],
              rungs: Callable[[int], tuple[set[int], int]] | None = None) -> list[tuple[int, int, int | None]]:
        """Move the oldest WAITING trial to RUNNING, owned by ``owner``, and with ``rungs`` the WAITING trials of the
        points ``rungs(its point)`` names among the next trials (a ladder's rungs, enqueued right behind it), in the
        same transaction. Returns (trial id, number, point) of each trial claimed, the oldest first; [] when none.

        Every process claims the oldest first, so no trial older than the last one this process claimed is still
        waiting (retries are enqueued as new, younger trials): the search starts there, not at the study's first
        trial, and a claim costs the same at the 10,000th trial as at the first.
        """
        hint = self._claimed.get(study_id, 0)
        found = self._claim(study_id, owner, hint, rungs)
        if not found and hint:
            found = self._claim(study_id, owner, 0, rungs)  # once more from the start, to be sure nothing is left
        if found:
            self._claimed[study_id] = found[0][0]
        return found

    def _claim(self, study_id: int, owner: dict[str, Any], after: int,
               rungs: Callable[[int], tuple[set[int], int]] | None) -> list[tuple[int, int, int | None]]:
        t = T.__table__
        oldest = (sa.select(t.c.trial_id)
                  .where(T.study_id == study_id, T.state == TrialState.WAITING, t.c.trial_id > after)
                  .order_by(t.c.trial_id).limit(1))
        if self.postgres:
            oldest = oldest.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            claimed = conn.execute(
                sa.update(t)
                .where(t.c.trial_id == oldest.scalar_subquery(), T.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, datetime_start=utcnow())
                .returning(t.c.trial_id, t.c.number)
            ).first()
            if claimed is None:
                return []
            trial_id, number = claimed
            self._own(conn, trial_id, owner)
            point = conn.execute(sa.select(A.value_json).where(A.trial_id == trial_id, A.key == "point")).scalar()
            first = (trial_id, number, json.loads(point) if point is not None else None)
            if rungs is None or first[2] is None:
                return [first]
            points, window = rungs(first[2])
            return [first, *self._claim_following(conn, study_id, trial_id, points, window, owner)]

    def _claim_following(self, conn: sa.Connection, study_id: int, after: int, points: set[int], window: int,
                         owner: dict[str, Any]) -> list[tuple[int, int, int]]:
        """Claim the WAITING trials of ``points`` among the trials numbered up to ``window`` after trial ``after``."""
        if not points:
            return []
        t = T.__table__
        following = (sa.select(t.c.trial_id, A.value_json)
                     .join(A.__table__, sa.and_(A.trial_id == t.c.trial_id, A.key == "point"))
                     .where(t.c.study_id == study_id, T.state == TrialState.WAITING,
                            t.c.trial_id > after, t.c.trial_id <= after + window,
                            A.value_json.in_([json.dumps(p) for p in sorted(points)]))
                     .order_by(t.c.trial_id))
        if self.postgres:
            following = following.with_for_update(of=t, skip_locked=True)  # only the wanted rows are locked
        wanted = {trial_id: json.loads(point) for trial_id, point in conn.execute(following)}
        if not wanted:
            return []
        claimed = conn.execute(
            sa.update(t).where(t.c.trial_id.in_(list(wanted)), T.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=utcnow())
            .returning(t.c.trial_id, t.c.number)
        ).all()
        for trial_id, _ in claimed:
            self._own(conn, trial_id, owner)
        return sorted((trial_id, number, wanted[trial_id]) for trial_id, number in claimed)

    def _own(self, conn: sa.Connection, trial_id: int, owner: dict[str, Any]) -> None:
        """A claimed trial's owner and first heartbeat, in the claim's transaction."""
        self._upsert_attrs(conn, trial_id, {"hpsearch:owner": owner})
        conn.execute(sa.insert(H.__table__).values(trial_id=trial_id, heartbeat=sa.func.current_timestamp()))

    def own(self, trial_id: int, owner: dict[str, Any]) -> None:
        """Mark a trial created RUNNING (a TPE trial) with its owner and first heartbeat."""
        with self.engine.begin() as conn:
            self._upsert_attrs(conn, trial_id, {"hpsearch:owner": owner})
        self.storage.record_heartbeat(trial_id)

    def finish(self, trial_id: int, state: TrialState, value: float | None, attrs: dict[str, Any],
               from_state: TrialState = TrialState.RUNNING) -> bool:
        """RUNNING -> ``state`` with ``value`` and ``attrs``, atomically; False (and nothing written) when the trial
        is no longer RUNNING, e.g. a reaper failed it while this process was frozen."""
        with self.engine.begin() as conn:
            done = self._finish(conn, trial_id, state, value, attrs, from_state)
            if not done:
                conn.rollback()
        return done

    def fail_together(self, failures: list[tuple[int, dict[str, Any]]]) -> set[int]:
        """Fail RUNNING trials with their ``attrs`` in one transaction (a dead process's rungs of a ladder: another
        reaper sees all of them failed or none); returns the ids that were still RUNNING."""
        with self.engine.begin() as conn:
            return {trial_id for trial_id, attrs in failures
                    if self._finish(conn, trial_id, TrialState.FAIL, None, attrs, TrialState.RUNNING)}

    def _finish(self, conn: sa.Connection, trial_id: int, state: TrialState, value: float | None,
                attrs: dict[str, Any], from_state: TrialState) -> bool:
        done = conn.execute(
            sa.update(T.__table__).where(T.__table__.c.trial_id == trial_id, T.state == from_state)
            .values(state=state, datetime_complete=utcnow())
        ).rowcount
        if done != 1:
            return False
        if value is not None:
            stored, kind = V.value_to_stored_repr(value)
            conn.execute(sa.insert(V.__table__).values(trial_id=trial_id, objective=0, value=stored, value_type=kind))
        self._upsert_attrs(conn, trial_id, attrs)
        return True

    def heartbeat(self, *trial_ids: int) -> None:
        """Beat for the trials; a ladder's rungs in one statement, so that they share one time and never go stale
        one by one (a reaper must see them all alive or all gone)."""
        if len(trial_ids) == 1:
            self.storage.record_heartbeat(trial_ids[0])
        elif trial_ids:
            with self.engine.begin() as conn:  # the claim wrote each rung's first beat
                conn.execute(sa.update(H.__table__).where(H.trial_id.in_(trial_ids))
                             .values(heartbeat=sa.func.current_timestamp()))



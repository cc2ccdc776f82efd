"""The one door to Optuna's private schema: what :mod:`hpsearch.storage.trialstore` relies on, held against the
installed Optuna, so that an Optuna release that changes it fails here before it can write a trial Optuna misreads."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest
from optuna.storages._rdb import models
from optuna.trial import TrialState

from hpsearch.storage import trialstore
from hpsearch.storage.trialstore import COLUMNS, SCHEMA_VERSION, SchemaMismatch, TrialStore, trial_id_of

PACKAGE = Path(trialstore.__file__).resolve().parents[1]


def test_the_installed_optuna_has_the_schema_version_the_statements_were_written_for():
    assert models.SCHEMA_VERSION == SCHEMA_VERSION


def test_every_column_the_statements_use_is_in_optuna_s_tables():
    tables = {table.name: table for table in models.BaseModel.metadata.sorted_tables}
    missing = [f"{name}.{column}" for name, columns in COLUMNS.items() for column in sorted(columns)
               if name not in tables or column not in tables[name].c]
    assert not missing


def test_the_private_optuna_names_used_exist():
    assert callable(getattr(optuna.storages.RDBStorage, "_get_stale_trial_ids", None))
    study = optuna.create_study(storage=optuna.storages.RDBStorage("sqlite://"))
    trial = study.ask()
    assert trial_id_of(trial) == study._storage.get_trial_id_from_study_id_trial_number(study._study_id, 0)


def test_a_storage_of_another_schema_version_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(models, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(SchemaMismatch, match=f"schema version {SCHEMA_VERSION + 1}; this hpsearch writes schema"):
        TrialStore(optuna.storages.RDBStorage("sqlite://"))


def _private_optuna_uses(path: Path) -> list[str]:
    """Imports of Optuna's private modules, and attributes of Optuna's own private names, in one module."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optuna") and any(
                part.startswith("_") for part in node.module.split(".")):
            found.append(f"{path.name}:{node.lineno}: from {node.module}")
        ours = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
        if isinstance(node, ast.Attribute) and not ours and node.attr in {
                "_trial_id", "_study_id", "_storage", "_backend", "_get_stale_trial_ids", "_rdb"}:
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def test_no_other_module_names_a_private_optuna_symbol():
    uses = [use for path in sorted(PACKAGE.rglob("*.py")) if path != Path(trialstore.__file__).resolve()
            for use in _private_optuna_uses(path)]
    assert not uses, "\n".join(uses)


# The statements, on a real SQLite storage, in-process ---------------------------------------------------------------

@pytest.fixture
def store(tmp_path) -> tuple[TrialStore, int, optuna.Study]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'store.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    store = TrialStore(storage)
    return store, store.study_id("s"), study


def _points(n: int) -> list[tuple[dict, dict]]:
    one_of = optuna.distributions.CategoricalDistribution
    return [({"lr": (0.1 * (k + 1), one_of([0.1 * (k + 1)]))}, {"point": k}) for k in range(n)]


def test_enqueued_trials_are_waiting_with_their_params_and_attrs_as_optuna_reads_them(store):
    trials, study_id, study = store
    assert trials.enqueue(study_id, _points(3)) == 3
    frozen = study.get_trials(deepcopy=False)
    assert [(t.number, t.state.name, t.params, t.user_attrs) for t in frozen] == [
        (k, "WAITING", {"lr": 0.1 * (k + 1)}, {"point": k}) for k in range(3)]
    assert [row.point for row in trials.rows(study_id)] == [0, 1, 2]


def test_claims_take_the_oldest_waiting_trial_once_each_with_its_owner(store):
    trials, study_id, study = store
    trials.enqueue(study_id, _points(3))
    first, second = trials.claim(study_id, {"pid": 1}), trials.claim(study_id, {"pid": 2})
    assert [(number, point) for _, number, point in first + second] == [(0, 0), (1, 1)]
    third = trials.claim(study_id, {"pid": 1})
    assert [point for _, _, point in third] == [2] and trials.claim(study_id, {"pid": 1}) == []
    rows = trials.rows(study_id)
    assert [row.state for row in rows] == ["RUNNING"] * 3 and [row.owner for row in rows] == [
        {"pid": 1}, {"pid": 2}, {"pid": 1}]


def test_a_result_is_stored_once_and_a_late_one_after_a_reaper_is_not_counted(store):
    trials, study_id, study = store
    trials.enqueue(study_id, _points(2))
    (done, _, _), = trials.claim(study_id, {"pid": 1})
    (reaped, _, _), = trials.claim(study_id, {"pid": 1})
    assert trials.finish(done, TrialState.COMPLETE, 0.75, {"metrics": {"val_acc": 0.75}})
    assert trials.fail_together([(reaped, {"failure": "worker died"})]) == {reaped}
    assert not trials.finish(reaped, TrialState.COMPLETE, 0.99, {"metrics": {"val_acc": 0.99}})  # too late
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert (frozen[0].state.name, frozen[0].value, frozen[0].user_attrs["metrics"]) == (
        "COMPLETE", 0.75, {"val_acc": 0.75})
    assert (frozen[1].state.name, frozen[1].value, frozen[1].user_attrs["failure"]) == ("FAIL", None, "worker died")
    assert "metrics" not in frozen[1].user_attrs


def test_rows_since_a_look_are_the_trials_started_finished_or_created_since(store):
    trials, study_id, study = store
    trials.enqueue(study_id, _points(3))
    (claimed, _, _), = trials.claim(study_id, {"pid": 1})
    look, last_id = trials.now(), max(row.trial_id for row in trials.rows(study_id))
    assert trials.rows(study_id, since=look, after_id=last_id) == []
    trials.finish(claimed, TrialState.COMPLETE, 0.5, {})
    trials.enqueue(study_id, _points(1))
    changed = trials.rows(study_id, since=look, after_id=last_id)
    assert sorted((row.number, row.state) for row in changed) == [(0, "COMPLETE"), (3, "WAITING")]

"""The one door to Optuna's private schema: what :mod:`hpsearch.storage.trialstore` relies on, held against the
installed Optuna, so that an Optuna release that changes it fails here before it can write a trial Optuna misreads."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest
from optuna.storages._rdb import models

from hpsearch.storage import trialstore
from hpsearch.storage.trialstore import COLUMNS, SCHEMA_VERSION, SchemaMismatch, TrialStore, asked_trial_id

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
    assert asked_trial_id(trial) == study._storage.get_trial_id_from_study_id_trial_number(study._study_id, 0)


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

"""A local MLflow store in SQLite: where its artifacts go, and the store made whole before MLflow opens it (copied
from an empty one MLflow made, made again where a killed process left it half made, in write-ahead-log mode)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable

from hpsearch.files import cache_dir
from hpsearch.storage.urls import sqlite_path

__all__ = ["artifact_location", "made_whole"]


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store go in ``mlartifacts/`` beside it, whatever the working directory."""
    database = sqlite_path(uri)
    return (database.parent.resolve() / "mlartifacts").as_uri() if database is not None else None


def made_whole(database: Path) -> None:
    """Ready ``database`` for MLflow, under a lock the caller holds against other processes making it: a store a
    killed process left half made goes, a new one is copied from the template, and the file is in write-ahead-log
    mode. MLflow itself makes whatever is still missing when it opens the store."""
    _remove_half_made(database)
    _from_template(database)
    _write_ahead_log(database)


def _write_ahead_log(database: Path) -> None:
    """A local MLflow store in SQLite's write-ahead-log mode: each commit syncs once instead of three times, which
    halves what MLflow costs per trial; readers (`mlflow ui`) never wait for the writer. The mode stays with the
    file."""
    import sqlite3

    with contextlib.suppress(sqlite3.Error):
        connection = sqlite3.connect(database, timeout=60)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()


def _remove_half_made(database: Path) -> None:
    """Remove a local MLflow store that a killed process left half made: MLflow's tables begun but never stamped
    with their schema's version, and no run in them (a store with runs is never touched)."""
    import sqlite3

    if not database.is_file() or database.stat().st_size == 0:
        return
    try:
        connection = sqlite3.connect(database, timeout=60)
        try:
            tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables or ("alembic_version" in tables
                              and connection.execute("SELECT COUNT(*) FROM alembic_version").fetchone()[0]):
                return
            if "runs" in tables and connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]:
                return
        finally:
            connection.close()
    except sqlite3.Error:
        return  # not a database MLflow made: MLflow says what is wrong with it
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        path.unlink(missing_ok=True)


def _from_template(database: Path) -> None:
    """A new local MLflow store made as a copy of an empty one (:func:`_template`): MLflow makes its tables through
    some fifty schema migrations, three seconds of a study's first run on two cores, a copy a few milliseconds. Its
    Default experiment keeps its artifacts in ``mlartifacts/`` beside the database, as the study's experiment does.
    Where no template can be made (a read-only cache folder), MLflow makes the store itself. The copy is made under
    a temporary name and linked into place, so a store that exists is never replaced; a template that cannot be read
    or has no Default experiment is removed, and the next study makes it again."""
    import sqlite3

    if database.exists():
        return
    _sweep(database.parent.glob(f".{database.name}.*.partial"))  # left by processes killed while copying
    template = _template()
    if template is None:
        return
    fd, partial = tempfile.mkstemp(dir=database.parent, prefix=f".{database.name}.", suffix=".partial")
    os.close(fd)
    try:
        shutil.copyfile(template, partial)
        shutil.copymode(template, partial)  # the mode SQLite gave it (mkstemp's is the owner's alone)
        connection = sqlite3.connect(partial)
        try:
            with connection:
                default, now = artifact_location(f"sqlite:///{database}") + "/0", int(time.time() * 1000)
                updated = connection.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                                             "last_update_time = ? WHERE experiment_id = 0", (default, now, now))
                whole = updated.rowcount == 1
        finally:
            connection.close()
        if not whole:
            raise sqlite3.DatabaseError("the template has no Default experiment")
        with contextlib.suppress(FileExistsError):  # made meanwhile by a process without the storage's lock
            os.link(partial, database)
    except sqlite3.Error:
        template.unlink(missing_ok=True)  # damaged: MLflow makes this store, and the next study the template
    except OSError:
        return  # MLflow makes the store, as it would without a template
    finally:
        Path(partial).unlink(missing_ok=True)


def _template() -> Path | None:
    """An empty MLflow store that this MLflow made, kept in hpsearch's cache folder under MLflow's version and the
    names of its schema migrations (made here the first time, written atomically); None where it cannot be made."""
    import sqlite3
    import zlib

    import mlflow
    from mlflow import MlflowClient

    migrations = Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions"
    names = sorted(path.name for path in migrations.glob("*.py")) if migrations.is_dir() else []
    if not names:
        return None  # a layout of MLflow's other than the one this knows
    schema = zlib.crc32("\n".join(names).encode())
    template = cache_dir() / f"mlflow-{mlflow.__version__}-{schema:08x}-empty.db"
    if template.is_file():
        return template
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        _sweep(template.parent.glob(".mlflow-template.*"))  # left by processes killed while making one
        with tempfile.TemporaryDirectory(dir=template.parent, prefix=".mlflow-template.") as folder:
            made = Path(folder) / "empty.db"
            MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments(max_results=1)
            connection = sqlite3.connect(made)
            try:
                stamped = connection.execute("SELECT COUNT(*) FROM alembic_version").fetchone()[0]
            finally:
                connection.close()
            if not stamped:
                return None
            os.replace(made, template)
    except Exception:  # noqa: BLE001 - MLflow's errors vary: the caller's MLflow then makes the store and says them
        return None
    return template


def _sweep(leftovers: Iterable[Path], age: float = 600.0) -> None:
    """Remove what killed processes left (files or folders) once it is ``age`` seconds old: one younger may be a
    live process's work."""
    for path in leftovers:
        with contextlib.suppress(OSError):
            if time.time() - path.lstat().st_mtime > age:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()

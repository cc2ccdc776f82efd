"""What every process using one storage shares on this machine: its files, its locks, its database engine.

A lock is held among all processes on a storage, on this machine or others (PostgreSQL's advisory locks); an engine
is made once per storage and process, and :func:`dispose_engines` lets a library user close them all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import zlib
from pathlib import Path
from typing import Iterator

from hpsearch.files import cache_dir
from hpsearch.storage.urls import sqlite_path

__all__ = ["dispose_engines", "engine_for", "runs_folder", "storage_files", "storage_lock"]


def storage_files(url: str) -> list[Path]:
    """Everything the storage at ``url`` keeps on this machine: a SQLite database with its rollback journal,
    write-ahead log and shared memory, and its locks folder; the folder of paused runs (of any database)."""
    path = sqlite_path(url)
    if path is None:
        return [runs_folder(url)]
    companions = [path.with_name(f"{path.name}{suffix}") for suffix in ("-journal", "-wal", "-shm")]
    return [path, *companions, _locks_folder(path), runs_folder(url)]


def _locks_folder(database: Path) -> Path:
    return database.parent / f".{database.name}.locks"


def runs_folder(url: str) -> Path:
    """Where runs paused between halving levels are kept for the storage at ``url``: ``.<database>.runs/`` beside a
    SQLite database; for a server database, a folder per storage in ``runs/`` of hpsearch's cache folder
    (``$HPSEARCH_CACHE_DIR``, default ``$XDG_CACHE_HOME/hpsearch``, else ``~/.cache/hpsearch``): a worker on another
    machine does not find the file and trains the run again from its start, to the same numbers."""
    path = sqlite_path(url)
    if path is not None:
        return path.parent / f".{path.name}.runs"
    return cache_dir() / "runs" / f"{zlib.crc32(url.encode()):08x}"


@contextlib.contextmanager
def storage_lock(url: str, name: str) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` among all processes using the storage at ``url``.

    PostgreSQL: a session advisory lock, so processes on other machines take part. SQLite: an ``flock`` on a file
    per lock name in ``.<database>.locks/`` beside the database, since SQLite databases are local files anyway.
    """
    key = zlib.crc32(name.encode())
    path = sqlite_path(url)
    if path is not None:
        folder = _locks_folder(path)
        try:
            folder.mkdir(exist_ok=True)
            handle = open(folder / f"{key}.lock", "a")
        except OSError:
            if os.access(path.parent, os.W_OK):
                raise
            yield  # a folder this process cannot write to: it cannot write the database either, so it only reads
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if url.startswith("postgresql"):
        import sqlalchemy

        with engine_for(url).connect() as conn:  # a pooled connection: no new engine per lock
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
        return
    yield  # other databases: a single process is assumed


_engines: dict[tuple[int, str], object] = {}
_engines_lock = threading.Lock()  # a process's threads (a run and its progress view) share one engine per storage


def _engine_key(url: str) -> tuple[int, str]:
    """This process and the URL with a SQLite path made absolute: a relative path means the working directory of
    now, not of when the engine was made."""
    path = sqlite_path(url)
    if path is not None:
        from sqlalchemy.engine import make_url

        url = make_url(url).set(database=str(path.resolve())).render_as_string(hide_password=False)
    return os.getpid(), url


def engine_for(url: str):
    """One pooled SQLAlchemy engine per storage URL and process, for hpsearch's own statements and locks."""
    import sqlalchemy

    key = _engine_key(url)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            url = key[1]
            connect_args = {"timeout": 60} if url.startswith("sqlite") else {}
            engine = sqlalchemy.create_engine(url, connect_args=connect_args,
                                              pool_pre_ping=not url.startswith("sqlite"))
            _engines[key] = engine
    return engine


def dispose_engines(url: str | None = None) -> None:
    """Close this process's pooled connections to the storage at ``url`` (to every storage when None), so that a
    library user's process keeps none open after a study; a later :func:`engine_for` makes a new engine."""
    chosen = None if url is None else _engine_key(url)
    with _engines_lock:
        keys = [key for key in _engines if key[0] == os.getpid() and (chosen is None or key == chosen)]
        engines = [_engines.pop(key) for key in keys]
    for engine in engines:
        engine.dispose()

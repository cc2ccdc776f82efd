"""Study storage URLs: where they come from, how they are shown, and a lock shared by every process using one.

A URL comes from ``--storage``, else ``$HPSEARCH_STORAGE``, else the spec's ``storage``, else
``sqlite:///runs/<study>.db`` (relative to the working directory, as SQLAlchemy reads ``sqlite:///`` paths).
Passwords are masked wherever a URL is shown.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import zlib
from pathlib import Path
from typing import Iterator

from hpsearch.errors import UserError

__all__ = ["StorageError", "engine_for", "mask_url", "resolve_storage_url", "sqlite_path", "storage_lock"]

ENV_STORAGE = "HPSEARCH_STORAGE"


class StorageError(UserError):
    """A storage URL that is malformed, unsupported or unreachable."""


_PASSWORD_IN_NETLOC = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)")
_PASSWORD_IN_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<secret>[^&\s]*)", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with every password of a URL in it replaced by ``***`` (user:SECRET@ and ?password=SECRET)."""
    text = _PASSWORD_IN_NETLOC.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _PASSWORD_IN_QUERY.sub(lambda m: f"{m['head']}***", text)


def resolve_storage_url(cli_value: str | None, spec_value: str | None, study_name: str) -> str:
    url = cli_value or os.environ.get(ENV_STORAGE) or spec_value or f"sqlite:///runs/{study_name}.db"
    _check(url)
    return url


def _check(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage {mask_url(url)!r} is not a database URL (e.g. sqlite:///runs/study.db).") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(
            f"storage {mask_url(url)!r}: unsupported database {parsed.get_backend_name()!r}; use sqlite or postgresql."
        )
    path = sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage {url!r}: cannot create {path.parent} ({exc.strerror}).") from None
        if not os.access(path.parent, os.W_OK):
            raise StorageError(f"storage {url!r}: {path.parent} is not writable.")


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, None for other databases and in-memory SQLite."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


@contextlib.contextmanager
def storage_lock(url: str, name: str) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` among all processes using the storage at ``url``.

    PostgreSQL: a session advisory lock, so processes on other machines take part. SQLite: an ``flock`` on a file
    per lock name in ``.<database>.locks/`` beside the database, since SQLite databases are local files anyway.
    """
    key = zlib.crc32(name.encode())
    path = sqlite_path(url)
    if path is not None:
        folder = path.parent / f".{path.name}.locks"
        folder.mkdir(exist_ok=True)
        with open(folder / f"{key}.lock", "a") as handle:
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


def engine_for(url: str):
    """One pooled SQLAlchemy engine per storage URL and process, for hpsearch's own statements and locks."""
    import sqlalchemy

    path = sqlite_path(url)
    if path is not None:  # a relative path means the working directory of now, not of when the engine was made
        from sqlalchemy.engine import make_url

        url = make_url(url).set(database=str(path.resolve())).render_as_string(hide_password=False)
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        connect_args = {"timeout": 60} if url.startswith("sqlite") else {}
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, pool_pre_ping=not url.startswith("sqlite"))
        _engines[key] = engine
    return engine

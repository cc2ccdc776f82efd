"""Where derived data is cached, and how an entry is written so that a crash never leaves half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

CACHE_ENV = "HPSEARCH_CACHE_DIR"


def cache_dir() -> Path:
    """``$HPSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpsearch``, else ``~/.cache/hpsearch``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hpsearch"


def save_atomically(target: Path, array: np.ndarray, mode: int = 0o644) -> None:
    """``np.save`` to a temporary name in ``target``'s folder (created if needed), then ``os.replace``: readers see
    no entry or a whole one. mode: the file's permission bits. Raises OSError (a read-only folder, a full disk)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp creates the file private to its owner
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (created with its folder), held for the block; without one when it
    cannot be created (a read-only cache: each process then does the work itself)."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield

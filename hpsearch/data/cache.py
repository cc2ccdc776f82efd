"""Where derived data is cached, how an entry is written so that a crash never leaves half of one, and how it is read
so that a damaged one is rebuilt rather than trusted."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from hpsearch.files import data_bound, open_regular, read_npy_header

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


def load_entry(path: Path, *, mmap: bool = False) -> np.ndarray | None:
    """The array of the cache entry at ``path`` (memory-mapped read-only when ``mmap``), or None when there is none
    to trust: absent, not a regular file (a FIFO is never waited on), larger than data may be, or a header that is
    not ``np.save``'s or declares other data than the file holds (truncated, absurd sizes). The caller then rebuilds
    the entry; nothing is allocated for what a header declares before the file is known to hold it."""
    try:
        with open_regular(path, data_bound("a cache entry")) as f:
            header = read_npy_header(f)
            if header.dtype.hasobject or header.nbytes != os.fstat(f.fileno()).st_size - header.offset:
                return None
            order = "F" if header.fortran_order else "C"
            if mmap:
                return np.memmap(f, dtype=header.dtype, mode="r", offset=header.offset, shape=header.shape,
                                 order=order)
            return np.fromfile(f, dtype=header.dtype, count=math.prod(header.shape)).reshape(header.shape,
                                                                                             order=order)
    except (OSError, ValueError, EOFError):
        return None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (created with its folder), held for the block; without one when it
    cannot be created or is not a regular file (a read-only cache, a FIFO in its place: each process then does the
    work itself)."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_NONBLOCK: a FIFO in the lock's place is refused (ENXIO) rather than waited on
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError:
        yield
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

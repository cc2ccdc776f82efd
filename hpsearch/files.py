"""Reading a file that hpsearch did not just write: a user's spec or data, a cache entry, a paused run.

Only a regular file is read: a FIFO would block the reader until something writes to it, a device such as
``/dev/zero`` never ends, a folder is not a file. Each kind of file has a bound on its size, checked before a byte is
read, and an ``.npy`` array's header is read before its data, so that what it declares is checked before anything
is allocated for it. Knows files only: what a refusal means (an error, an entry to rebuild) is the caller's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from hpsearch.formatting import format_bytes

CACHE_ENV = "HPSEARCH_CACHE_DIR"

__all__ = ["CACHE_ENV", "SPEC", "FileRefused", "FileTooLarge", "NotRegularFile", "NpyHeader", "SizeBound",
           "cache_dir", "data_bound", "disk_use", "file_checksum", "machine_memory", "process_start", "open_regular",
           "read_bounded", "read_npy_header"]

_KINDS = (
    (stat.S_ISDIR, "a folder, not a file"),
    (stat.S_ISFIFO, "a FIFO (named pipe), not a regular file"),
    (stat.S_ISCHR, "a character device, not a regular file"),
    (stat.S_ISBLK, "a block device, not a regular file"),
    (stat.S_ISSOCK, "a socket, not a regular file"),
)


class FileRefused(OSError):
    """A file that is not read, for one of the reasons below; the message is for the caller to put after the file's
    name."""


class NotRegularFile(FileRefused):
    """A folder, a FIFO, a device or a socket; the message says which in a few words ("a FIFO (named pipe), not a
    regular file"), for the caller to say what the file should have been."""


class FileTooLarge(FileRefused):
    """A file larger than its bound; the message is a sentence ("a spec must be at most 1 MiB. Got 2 GiB instead.")."""


@dataclass(frozen=True)
class SizeBound:
    """The most a kind of file may hold: ``limit`` bytes for ``what`` ("a spec"); ``why`` says what the bound is,
    where the number alone would not."""

    what: str
    limit: int
    why: str = ""

    def check(self, size: int) -> None:
        """Raise FileTooLarge when ``size`` bytes are more than the bound."""
        if size > self.limit:
            why = f" ({self.why})" if self.why else ""
            raise FileTooLarge(f"{self.what} must be at most {format_bytes(self.limit)}{why}. Got "
                               f"{format_bytes(size)} instead.")


SPEC = SizeBound("a spec", 2**20)  # a page of YAML; a megabyte is thousands of grid values


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot, as ``/proc`` says (None where it cannot tell): with
    the pid, a process's identity (a pid is reused; its start is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def machine_memory() -> int:
    """This machine's memory in bytes (16 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 16 * 2**30


def data_bound(what: str) -> SizeBound:
    """The most a dataset's file may hold (an ``.npz``'s arrays as declared, once decompressed), and a cache entry
    or a paused run: a quarter of this machine's memory. Loading makes copies (the splits, a cast to float, the
    preprocessing), so data of that size already need most of the memory."""
    return SizeBound(what, machine_memory() // 4, "a quarter of this machine's memory")


@contextlib.contextmanager
def open_regular(path: str | Path, bound: SizeBound) -> Iterator[BinaryIO]:
    """``path`` opened for reading in binary, if it is a regular file within ``bound``. Raises FileRefused, or the
    OSError of a file that cannot be opened.

    A FIFO is opened without waiting for a writer, and the checks are made on the opened file, so a file swapped in
    between the check and the read is checked too.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(next((kind for is_kind, kind in _KINDS if is_kind(info.st_mode)),
                                      "not a regular file"))
        bound.check(info.st_size)
        os.set_blocking(fd, True)
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file


def read_bounded(path: str | Path, bound: SizeBound) -> bytes:
    """The bytes of the regular file ``path`` within ``bound`` (see :func:`open_regular`); a file that grew past the
    bound while it was read is refused too."""
    with open_regular(path, bound) as file:
        content = file.read(bound.limit + 1)
    bound.check(len(content))
    return content


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` array's header declares, and where its data begin (``offset`` bytes into the stream)."""

    shape: tuple[int, ...]
    dtype: Any  # numpy.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """The bytes of data the header declares."""
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(stream: BinaryIO) -> NpyHeader:
    """The header of the ``.npy`` array at the start of ``stream``, read and no further; ValueError when the stream
    holds no array header of a format ``np.save`` writes (1.0 or 2.0)."""
    import numpy as np

    start = stream.tell()
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"an .npy format {version}, which np.save does not write")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    return NpyHeader(tuple(shape), dtype, fortran_order, stream.tell() - start)


def file_checksum(path: str | Path, payload: Any, *, what: str) -> str:
    """The SHA-256 of the regular file ``path`` (within :func:`data_bound`) and of ``payload``, as sorted JSON: what
    a file saved with a record of itself (a paused run and its reports, a kept winner and its metrics) is checked
    against when it is taken up. ``what``: the file, as a refusal names it."""
    with open_regular(path, data_bound(what)) as file:
        digest = hashlib.file_digest(file, "sha256")
    digest.update(json.dumps(payload, sort_keys=True).encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where hpsearch keeps what it can make again (derived data, MLflow's empty store, a server storage's paused
    runs): ``$HPSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpsearch``, else ``~/.cache/hpsearch``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hpsearch"


def disk_use(folder: Path) -> int:
    """Bytes the regular files under ``folder`` take (0 when it is absent); links are not followed."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):  # removed meanwhile
                info = os.lstat(os.path.join(root, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total

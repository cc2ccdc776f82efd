"""Fixtures of the data tests: a cache entry damaged in the ways a cache meets (``damage_entry``)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest


def _absurd_header(path: Path) -> None:
    """The entry's header rewritten to declare 2**40 rows of its values (TiBs), its data left as they were."""
    with path.open("rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)  # what np.save writes for these arrays
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        data = f.read()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": fortran_order, "shape": (2**40, *shape[1:])})
    path.write_bytes(header.getvalue() + data)


def _truncated(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2])


def _replaced(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def replace(path: Path) -> None:
        path.unlink()
        make(path)

    return replace


DAMAGES = {"absurd header": _absurd_header, "truncated": _truncated, "fifo": _replaced(os.mkfifo),
           "folder": _replaced(Path.mkdir)}


@pytest.fixture(params=sorted(DAMAGES))
def damage_entry(request) -> Callable[[Path], None]:
    """Each of :data:`DAMAGES` in turn: a function that damages the cache entry at a path that way."""
    return DAMAGES[request.param]

"""Cache entries: read back whole, or treated as missing; never a crash, a wait or an allocation of what a header
claims."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hpsearch.data.cache import load_entry, save_atomically

ARRAYS = hnp.arrays(dtype=st.sampled_from([np.uint8, np.int64, np.float32, np.float64]),
                    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6),
                    elements={"allow_nan": False})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=ARRAYS, cut=st.floats(0, 1, exclude_max=True), mmap=st.booleans())
def test_an_entry_is_the_array_saved_or_none_once_cut_short(tmp_path, array, cut, mmap):
    entry = tmp_path / "entry.npy"
    save_atomically(entry, array)
    np.testing.assert_array_equal(load_entry(entry, mmap=mmap), array)
    content = entry.read_bytes()
    entry.write_bytes(content[:int(cut * len(content))])
    assert load_entry(entry, mmap=mmap) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=ARRAYS, rows=st.integers(1, 2**60), mmap=st.booleans())
def test_an_entry_whose_header_declares_other_rows_than_it_holds_is_none(tmp_path, array, rows, mmap):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                  "fortran_order": False, "shape": (rows, *array.shape[1:])})
    entry = tmp_path / "entry.npy"
    entry.write_bytes(header.getvalue() + array.tobytes())
    loaded = load_entry(entry, mmap=mmap)
    if rows == len(array):
        np.testing.assert_array_equal(loaded, array)
    else:
        assert loaded is None

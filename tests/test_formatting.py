from __future__ import annotations

import pytest

from hpsearch.formatting import format_bytes, format_duration


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (0, "0 ms"), (0.0364, "36 ms"), (0.0996, "0.1 s"), (0.42, "0.4 s"), (9.94, "9.9 s"), (9.96, "10 s"), (58.2, "58 s"), (59.7, "1 min"),
        (60, "1 min"), (200, "3 min 20 s"), (3599.4, "59 min 59 s"), (3599.6, "1 h"), (3600, "1 h"),
        (20188, "5 h 36 min"), (86400, "1 d"), (200000, "2 d 8 h"),
    ],
)
def test_durations_read_as_people_write_them(seconds, shown):
    assert format_duration(seconds) == shown


def test_a_negative_duration_is_a_bug():
    with pytest.raises(ValueError, match="must be >= 0. Got -1 instead"):
        format_duration(-1)


@pytest.mark.parametrize("size, shown", [
    (0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (1024, "1 KiB"), (1536, "1.5 KiB"), (2**20, "1 MiB"),
    (2**20 + 1, "1.0 MiB"), (3 * 2**30 // 2, "1.5 GiB"), (2**43, "8 TiB"),
])
def test_sizes_read_in_the_largest_unit_they_reach(size, shown):
    assert format_bytes(size) == shown


def test_values_print_as_people_read_them_in_lines_of_at_most_100_columns():
    from hpsearch.formatting import format_value, wrap_items

    assert format_value(0.24201854326478553) == "0.242019" and format_value(1e-05) == "1e-05"
    assert format_value([100, 0.30012399999]) == "[100, 0.300124]" and format_value("relu") == "relu"
    items = [f"p{k}={format_value(k / 7)}" for k in range(40)]
    lines = wrap_items("  config:", items)
    assert len(lines) > 1 and all(len(line) <= 100 for line in lines)
    assert " ".join(line.strip() for line in lines) == "config: " + ", ".join(items)

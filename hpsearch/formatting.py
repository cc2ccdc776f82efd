"""Numbers as people read them. Every duration the CLI prints goes through :func:`format_duration`, every size of a
file through :func:`format_bytes`; every duration a person writes is read by :func:`seconds`."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["format_bytes", "format_duration", "format_value", "seconds", "wrap_items"]

WIDTH = 100  # columns a line the CLI prints for people stays within

_DURATION = re.compile(r"\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(s|m|min|h)?\s*")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def seconds(value: Any) -> float:
    """A duration: a number of seconds, or a string such as ``'90s'``, ``'55m'`` or ``'1.5h'``.

    Raises ValueError with the end of a message ("must be a duration ... Got '5d' instead"); the caller names the field.
    """
    found = None if isinstance(value, bool) else _DURATION.fullmatch(str(value))
    if found is None:
        raise ValueError(f"must be a duration such as 3300, '55m' or '1h'. Got {value!r} instead")
    number = float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    if not 0 < number < float("inf"):
        raise ValueError(f"must be a finite duration greater than 0. Got {value!r} instead")
    return number


def format_duration(seconds: float) -> str:
    """``36 ms``, ``0.4 s``, ``58 s``, ``3 min 20 s``, ``5 h 36 min``, ``2 d 3 h``: two units at most, the smaller one dropped
    when it is zero, and each rounded to its last unit (so 59.7 s reads ``1 min``, never ``60 s``)."""
    if seconds < 0:
        raise ValueError(f"a duration must be >= 0. Got {seconds} instead.")
    if round(seconds, 3) < 0.1:
        return f"{seconds * 1000:.0f} ms"
    if round(seconds, 1) < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return _two_units(*divmod(whole, 60), "min", "s")
    minutes = round(seconds / 60)
    if minutes < 24 * 60:
        return _two_units(*divmod(minutes, 60), "h", "min")
    return _two_units(*divmod(round(seconds / 3600), 24), "d", "h")


def _two_units(large: int, small: int, large_unit: str, small_unit: str) -> str:
    return f"{large} {large_unit}" + (f" {small} {small_unit}" if small else "")


def format_bytes(size: int) -> str:
    """``512 bytes``, ``1 MiB``, ``2.5 GiB``: the largest binary unit the size reaches, one decimal unless it is a
    whole number of them (so a size just past a bound never reads as the bound)."""
    value, unit = float(size), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    if unit == "bytes":
        return f"{size} byte{'' if size == 1 else 's'}"
    return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"


def format_value(value: object) -> str:
    """A configuration value as people read it: floats to 6 significant digits (``0.242019``, ``1e-05``), lists and
    mappings as JSON of such values, the rest as it prints. For reading only: ``hpsearch best`` gives exact values."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {format_value(item)}" for key, item in value.items()) + "}"
    return str(value)


def wrap_items(head: str, items: list[str], width: int = WIDTH, indent: int = 4) -> list[str]:
    """``head`` then ``items`` separated by commas, in lines of at most ``width`` columns (an item longer than a
    line gets one of its own); lines after the first are indented by ``indent``."""
    lines, line = [], head
    for k, item in enumerate(items):
        piece = item + ("," if k < len(items) - 1 else "")
        if line.strip() and len(line) + 1 + len(piece) > width and line != head:
            lines.append(line)
            line = " " * indent + piece
        else:
            line = f"{line} {piece}" if line and not line.endswith(" ") else line + piece
    lines.append(line)
    return lines

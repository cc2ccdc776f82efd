"""The arguments of a run, read and checked once for every way in: the command line's options, the Python API's
keywords and, for durations, the spec.

Each check returns the value it accepts, or raises :class:`~hpsearch.errors.UserError` with one line in the template
every invalid value uses, naming the argument as its caller spells it (``--max-trials`` on the command line,
``max_trials`` in Python): "max_trials must be a whole number >= 0. Got 1.5 instead." Light to import: the command
line's callbacks run before any command.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from pathlib import Path
from typing import Any, Mapping

from hpsearch.errors import UserError
from hpsearch.formatting import seconds

__all__ = ["duration", "flag", "optional_function", "optional_path", "optional_text", "overrides", "seconds",
           "spec_source", "time_limit", "trial_count"]

_repr = reprlib.Repr()  # a value quoted back in an error: at most a line's worth of it
_repr.maxstring = _repr.maxother = 60
_shown = _repr.repr

def _number(value: Any) -> bool:
    """A real number that is no bool (``True`` is the int 1 to Python, and a mistake here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def time_limit(value: Any, name: str) -> float | None:
    """``timeout``: seconds after which no trial starts, finite and >= 0; None for no limit."""
    if value is None:
        return None
    if not (_number(value) and math.isfinite(value) and value >= 0):
        raise UserError(f"{name} must be a number of seconds >= 0. Got {_shown(value)} instead.")
    return float(value)


def trial_count(value: Any, name: str) -> int | None:
    """``max_trials``: a whole number >= 0 (an int, not 1.5 nor '3'); None for no limit."""
    if value is None:
        return None
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0):
        raise UserError(f"{name} must be an integer >= 0. Got {_shown(value)} instead.")
    return int(value)


def duration(value: Any, name: str) -> float | None:
    """``time_box``: seconds, or a string such as ``'55m'``; None for the spec's."""
    if value is None:
        return None
    if not (_number(value) or isinstance(value, str)):
        raise UserError(f"{name} must be a duration such as 3300, '55m' or '1h'. Got {_shown(value)} instead.")
    try:
        return seconds(value)
    except ValueError as exc:
        raise UserError(f"{name} {exc}.") from None


def optional_text(value: Any, name: str, what: str = "a string") -> str | None:
    """A string or None (a storage URL, a tracking URI, a phase's name)."""
    if value is not None and not isinstance(value, str):
        raise UserError(f"{name} must be {what} or None. Got {_shown(value)} instead.")
    return value


def optional_path(value: Any, name: str) -> str | Path | None:
    """A folder's or file's path (a string or a Path) or None."""
    if value is not None and (not isinstance(value, (str, Path)) or value == ""):
        raise UserError(f"{name} must be a path (a string or a Path) or None. Got {_shown(value)} instead.")
    return value


def optional_function(value: Any, name: str) -> Any:
    """A function (``echo``: called with each progress line) or None."""
    if value is not None and not callable(value):
        raise UserError(f"{name} must be a function or None. Got {_shown(value)} instead.")
    return value


def flag(value: Any, name: str, *, optional: bool = False) -> bool | None:
    """True or False (or None where ``optional``): ``'no'`` is a string, and true to Python."""
    if not (isinstance(value, bool) or (optional and value is None)):
        choices = "True, False or None" if optional else "True or False"
        raise UserError(f"{name} must be {choices}. Got {_shown(value)} instead.")
    return value


def overrides(value: Any, name: str) -> list[str]:
    """``KEY.PATH=VALUE`` strings, as ``--set`` takes them: a list of them, not one string read a letter at a time."""
    if value is None:
        return []
    if isinstance(value, str):
        raise UserError(f"{name} must be a list of 'KEY.PATH=VALUE' strings, such as [{_shown(value)}], not one "
                        f"string. Got {_shown(value)} instead.")
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise UserError(f"{name} must be a list of 'KEY.PATH=VALUE' strings. Got {_shown(value)} instead.")
    return list(value)


def spec_source(value: Any, name: str = "spec") -> Any:
    """What a study is loaded from: a YAML file's path, a mapping of the same keys, or a loaded StudySpec."""
    from hpsearch.spec.models import StudySpec

    if not isinstance(value, (str, Path, Mapping, StudySpec)) or value == "":
        raise UserError(f"{name} must be a path to a YAML file, a mapping of its keys or a StudySpec. Got "
                        f"{_shown(value)} instead.")
    return value

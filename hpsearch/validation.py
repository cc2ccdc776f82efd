"""The base of every configuration a user writes (spec sections, dataset options, backend configurations).

Pydantic's lax mode takes ``true`` for the number 1 and ``.inf`` for a float; in a configuration both are mistakes
that would train something other than what the user meant, so they are refused, as are unknown keys.
:func:`validation_message` puts what pydantic refuses in one line, with its YAML path.
"""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

__all__ = ["UserConfig", "format_error", "validation_message"]


def _numeric(annotation: Any) -> bool:
    """An int or float field, optional or not, or a list of them: one where ``true`` is a mistake."""
    if get_origin(annotation) is list:
        return _numeric(get_args(annotation)[0])
    args = get_args(annotation)
    if args:  # a union such as ``int | None`` or ``int | Literal["auto"]``
        return bool not in args and any(arg in (int, float) for arg in args)
    return annotation in (int, float)


class UserConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        items = value if isinstance(value, list) else [value]
        if field is not None and _numeric(field.annotation) and any(isinstance(item, bool) for item in items):
            raise ValueError(f"must be a number, not true or false. Got {value!r} instead")
        return value


_UNION_MEMBERS = ("dict[str,list[any]]", "DerivedGrid")  # pydantic's names for a grid's two forms


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in (*_UNION_MEMBERS, "function-after[_sampler_fits(), PhaseSpec]"):
            continue  # pydantic's names for union members, not part of the YAML path
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def format_error(error: dict[str, Any]) -> str:
    """One pydantic error as a line: its YAML path (with ``loc``), what is wrong, and what was given."""
    path = _format_loc(tuple(error["loc"]))
    message = error["msg"]
    message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    if message.startswith("Input should be "):
        message = "must be " + message[len("Input should be "):]
    if error["type"] == "extra_forbidden":
        return f"unknown key {path!r}"
    if error["type"] == "missing":
        return f"{path} is required"
    got = error.get("input")
    shown = f" Got {got!r} instead." if error["type"] not in ("value_error",) and not isinstance(got, dict) else ""
    text = f"{path + ' ' if path else ''}{message}"
    return f"{text}{'' if text.endswith('.') else '.'}{shown}"


def _likelier_member(errors: list[Any]) -> list[Any]:
    """``errors`` with those of a union's (explicit grid | derived grid) members kept for the member with the fewest
    only: the one the value was meant as (``{from: random, points: -1}``: DerivedGrid's one, not the dict's three)."""
    def member(error: Any) -> tuple[Any, ...] | None:
        loc = tuple(error["loc"])
        found = [k for k, item in enumerate(loc) if item in _UNION_MEMBERS]
        return loc[:found[0] + 1] if found else None

    counts: dict[tuple[Any, ...], int] = {}
    for error in errors:
        if (where := member(error)) is not None:
            counts[where] = counts.get(where, 0) + 1
    kept = {}  # per union: the member with the fewest errors (the first of equals)
    for where, count in counts.items():
        union = where[:-1]
        if union not in kept or count < counts[kept[union]]:
            kept[union] = where
    return [error for error in errors if member(error) is None or member(error) in kept.values()]


def validation_message(source: str, exc: ValidationError) -> str:
    """One line for a pydantic error: the first problem, and how many more there are."""
    errors = _likelier_member(exc.errors())
    first = format_error(errors[0])
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{source}: {first}{more}"

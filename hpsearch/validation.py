"""The base of every configuration a user writes (spec sections, dataset options, backend configurations).

Pydantic's lax mode takes ``true`` for the number 1 and ``.inf`` for a float; in a configuration both are mistakes
that would train something other than what the user meant, so they are refused, as are unknown keys.
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

__all__ = ["UserConfig"]


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

"""Trainables: the built-in backends and the user's own, found the same way.

``model.backend`` is a name registered in the ``hpsearch.backends`` entry-point group (hpsearch registers ``numpy``
and ``torch`` there; any installed package can add its own) or a ``package.module:function`` reference. Backend
modules are imported on demand, so that the NumPy path never imports torch.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from pathlib import Path

from hpsearch.backends.base import DivergedError, ModelFileError, TrainableError, TrainResult, Trainable, trainable
from hpsearch.errors import SpecError
from hpsearch.plugins import is_reference, load_reference

__all__ = ["ENTRY_POINT_GROUP", "DivergedError", "ModelFileError", "TrainResult", "Trainable", "TrainableError",
           "load_trainable", "registered", "trainable"]

ENTRY_POINT_GROUP = "hpsearch.backends"


def registered() -> dict[str, str]:
    """Registered backend names -> the ``module:attribute`` each stands for."""
    return {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}


@functools.cache
def load_trainable(name: str, *, where: str = "model.backend", base_dir: str | Path | None = None,
                   allow_import: bool = False) -> Trainable:
    """The trainable ``name`` stands for: a registered name, or a reference imported under hpsearch.plugins' rules."""
    if is_reference(name):
        target = load_reference(name, where=where, base_dir=base_dir, allow_import=allow_import)
    else:
        points = [point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == name]
        if not points:
            known = ", ".join(sorted(registered())) or "none"
            raise SpecError(f"{where} must be one of {known}, or 'package.module:function'. Got {name!r} instead.")
        try:
            target = points[0].load()
        except Exception as exc:  # noqa: BLE001 - an installed plug-in may fail to import
            raise SpecError(f"{where} {name!r}: loading {points[0].value} failed: {type(exc).__name__}: {exc}") \
                from None
    if isinstance(target, Trainable):
        return target.named(name)
    if callable(target):
        return Trainable(name=name, train=target)
    raise SpecError(f"{where} {name!r} is a {type(target).__name__}, not a training function.")

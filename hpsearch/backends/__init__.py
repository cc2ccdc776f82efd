"""Trainables: the built-in backends and the user's own, found the same way.

``model.backend`` is a name registered in the ``hpsearch.backends`` entry-point group (hpsearch registers ``numpy``
and ``torch`` there; any installed package can add its own) or a ``package.module:function`` reference. Backend
modules are imported on demand, so that the NumPy path never imports torch.
"""

from __future__ import annotations

import functools
from pathlib import Path

from hpsearch.backends.base import DivergedError, ModelFileError, TrainableError, TrainResult, Trainable, trainable
from hpsearch.errors import SpecError, one_line
from hpsearch.plugins import installed_entry_points, is_reference, load_reference

__all__ = ["ENTRY_POINT_GROUP", "DivergedError", "ModelFileError", "TrainResult", "Trainable", "TrainableError",
           "load_trainable", "registered", "trainable"]

ENTRY_POINT_GROUP = "hpsearch.backends"


def registered() -> dict[str, str]:
    """Registered backend names -> the ``module:attribute`` each stands for."""
    return {point.name: point.value for point in installed_entry_points(ENTRY_POINT_GROUP)}


@functools.cache
def load_trainable(name: str, *, where: str = "model.backend", base_dir: str | Path | None = None,
                   allow_import: bool = False) -> Trainable:
    """The trainable ``name`` stands for: a registered name, or a reference imported under hpsearch.plugins' rules."""
    if is_reference(name):
        target = load_reference(name, where=where, base_dir=base_dir, allow_import=allow_import)
    else:
        points = {point.value: point for point in installed_entry_points(ENTRY_POINT_GROUP) if point.name == name}
        if not points:
            known = registered()
            if not known:  # hpsearch's own entry points are missing: a source tree that was not (re)installed
                raise SpecError(f"{where} {name!r}: no backends are registered; install hpsearch (pip install -e .) "
                                "so that its entry points exist.")
            raise SpecError(f"{where} must be one of {', '.join(sorted(known))}, or 'package.module:function'. Got "
                            f"{name!r} instead.")
        if len(points) > 1:
            raise SpecError(f"{where} {name!r} is registered by several installed packages "
                            f"({', '.join(sorted(points))}); name the one you mean as 'package.module:function'.")
        (point,) = points.values()
        try:
            target = point.load()  # an installed distribution's: imported as Python imports it
        except Exception as exc:  # noqa: BLE001 - an installed plug-in may fail to import
            raise SpecError(f"{where} {name!r}: loading {point.value} failed: {one_line(exc)}") from None
    if isinstance(target, Trainable):
        return target.named(name)
    if callable(target):
        return Trainable(name=name, train=target)
    raise SpecError(f"{where} {name!r} is a {type(target).__name__}, not a training function.")

"""Code that a spec names: ``package.module:function`` references to trainables and data loaders.

Importing a module runs its code, so a reference is imported only from where the user put code on purpose: an
installed package (a regular or an editable install), or the spec's own folder. A module found anywhere else (the
working directory, ``$PYTHONPATH``) is refused unless the user allows it with ``--allow-import`` (or
``HPSEARCH_ALLOW_IMPORT=1``). Every failure is a :class:`~hpsearch.errors.SpecError` of one line.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from hpsearch.errors import SpecError

__all__ = ["ALLOW_IMPORT_ENV", "allow_import_from_env", "is_reference", "is_well_formed", "load_reference"]

ALLOW_IMPORT_ENV = "HPSEARCH_ALLOW_IMPORT"
_REFERENCE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def is_reference(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:attribute`` (rather than a built-in or registered name)."""
    return ":" in name


def is_well_formed(reference: str) -> bool:
    """Whether ``reference`` is ``package.module:attribute`` with Python names, the form :func:`load_reference`
    takes: a spec checks it without importing anything."""
    return _REFERENCE.fullmatch(reference) is not None


def allow_import_from_env() -> bool:
    return os.environ.get(ALLOW_IMPORT_ENV, "").strip().lower() in ("1", "true", "yes")


def load_reference(reference: str, *, where: str, base_dir: str | Path | None, allow_import: bool) -> Any:
    """The object ``reference`` (``package.module:attribute``) names, imported under the rules above.

    where: what the reference is, for messages (``studies/x.yaml: model.backend``).
    base_dir: the spec's folder, searched after the installed packages.
    """
    if not _REFERENCE.fullmatch(reference):
        raise SpecError(f"{where} must be a registered name or 'package.module:function'. Got {reference!r} instead.")
    module_name, _, attribute = reference.partition(":")
    top = module_name.split(".")[0]
    folder = str(Path(base_dir).resolve()) if base_dir is not None else None
    if not _installed(top, exclude=folder) and not (folder and _found_in(top, [folder])):
        found = _found_in(top, [p for p in sys.path if p != folder])
        if not found:
            searched = f"the spec's folder {folder} or " if folder else ""
            raise SpecError(f"{where} {reference!r}: no module {top!r} in {searched}the installed packages.")
        if not allow_import:
            raise SpecError(
                f"{where} {reference!r}: module {top!r} is at {found}, outside the installed packages and the spec's "
                "folder; importing it runs its code, so pass --allow-import (or set HPSEARCH_ALLOW_IMPORT=1) if you "
                "trust it.")
    if folder and folder not in sys.path:
        sys.path.append(folder)  # after the installed packages: a file in the spec's folder cannot shadow them
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while it is imported
        raise SpecError(f"{where} {reference!r}: importing {module_name} failed: {_one_line(exc)}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise SpecError(f"{where} {reference!r}: {module_name} has no attribute {attribute!r}.")
        target = getattr(target, part)
    return target


def _installed(top: str, exclude: str | None) -> bool:
    """Whether top-level module ``top`` comes from an installation rather than from a folder the user put on the path.

    The working directory, ``$PYTHONPATH`` and the spec's folder do not count; site-packages, the standard library
    and editable installs (a path added by a ``.pth`` file, or an import hook of their own) do.
    """
    cwd = os.getcwd()
    user = {"", ".", cwd, exclude, *(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                      if p)}
    paths = [p for p in sys.path if p not in user and os.path.abspath(p or ".") not in user]
    if top in sys.builtin_module_names:
        return True
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            found = importlib.machinery.PathFinder.find_spec(top, paths)
        else:  # the built-in and frozen importers, and the hooks of editable installs
            try:
                found = finder.find_spec(top, None) if hasattr(finder, "find_spec") else None
            except Exception:  # noqa: BLE001 - a third-party hook that cannot answer is not an installation
                found = None
        if found is not None:
            return True
    return False


def _found_in(top: str, paths: list[str]) -> str | None:
    """Where ``top`` would be imported from when only ``paths`` are searched (no code runs), or None."""
    found = importlib.machinery.PathFinder.find_spec(top, [p or os.getcwd() for p in paths])
    if found is None:
        return None
    if found.origin and found.origin != "namespace":
        return found.origin
    locations = list(found.submodule_search_locations or [])
    return locations[0] if locations else top


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def format_traceback(exc: BaseException, limit: int = 20_000) -> str:
    """The traceback of ``exc`` as text, its end kept when it is longer than ``limit`` characters."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text if len(text) <= limit else "...\n" + text[-limit:]

"""Code that a spec names: ``package.module:function`` references to trainables and data loaders.

Importing a module runs its code, so a reference is imported only from where the user put code on purpose: an
installed package (a regular or an editable install), or the spec's own folder. A module found anywhere else (the
working directory, ``$PYTHONPATH``) is refused unless the user allows it with ``--allow-import`` (or
``HPSEARCH_ALLOW_IMPORT=1``). Every failure is a :class:`~hpsearch.errors.SpecError` of one line.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

from hpsearch.errors import SpecError, one_line

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


_SPEC_FOLDERS: set[str] = set()  # the folders of the specs this process loaded: never "installed"


def load_reference(reference: str, *, where: str, base_dir: str | Path | None, allow_import: bool) -> Any:
    """The object ``reference`` (``package.module:attribute``) names, imported under the rules above.

    where: what the reference is, for messages (``studies/x.yaml: model.backend``).
    base_dir: the spec's folder, searched after the installed packages; None: the installed packages only.

    What is imported is what was checked (see :func:`_import_checked`); ``sys.path`` itself is left alone while the
    module runs.
    """
    if not _REFERENCE.fullmatch(reference):
        raise SpecError(f"{where} must be a registered name or 'package.module:function'. Got {reference!r} instead.")
    module_name, _, attribute = reference.partition(":")
    top = module_name.split(".")[0]
    folder = str(Path(base_dir).resolve()) if base_dir is not None else None
    if folder:
        _SPEC_FOLDERS.add(folder)  # never "installed", in this process or one it spawns
        if folder not in sys.path:
            sys.path.append(folder)  # after the installed packages: a file in the spec's folder cannot shadow them
    if not allow_import:
        _import_checked(top, where=where, reference=reference, folder=folder)
    try:
        target: Any = importlib.import_module(module_name)  # the package itself is imported: its submodules follow
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while it is imported
        raise SpecError(f"{where} {reference!r}: importing {module_name} failed: {one_line(exc)}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise SpecError(f"{where} {reference!r}: {module_name} has no attribute {attribute!r}.")
        target = getattr(target, part)
    return target


def _import_checked(top: str, *, where: str, reference: str, folder: str | None) -> None:
    """Import top-level module ``top`` from exactly where the rules allow: an installation, else the spec's folder.

    The module found there is imported by its spec, so neither the working directory nor ``$PYTHONPATH`` (which come
    first on ``sys.path`` with ``python -m``) can put another file in its place; a module of that name that this
    process already imported from elsewhere is refused.
    """
    found = _installed_spec(top, installation_paths())
    if found is None and folder:
        found = importlib.machinery.PathFinder.find_spec(top, [folder])
    if found is None:
        elsewhere = _found_in(top, [p for p in sys.path if p != folder])
        if not elsewhere:
            searched = f"the spec's folder {folder} or " if folder else ""
            raise SpecError(f"{where} {reference!r}: no module {top!r} in {searched}the installed packages.")
        raise SpecError(
            f"{where} {reference!r}: module {top!r} is at {elsewhere}, outside the installed packages and the spec's "
            "folder; importing it runs its code, so pass --allow-import (or set HPSEARCH_ALLOW_IMPORT=1) if you "
            "trust it.")
    loaded = sys.modules.get(top)
    if loaded is not None:
        origin, where_loaded = _spec_origin(found), _location(loaded)
        if where_loaded is not None and origin is not None and not _same_file(where_loaded, origin):
            raise SpecError(f"{where} {reference!r}: this process already imported a module {top!r} from "
                            f"{where_loaded}, not the one at {origin}; give the modules of different specs different "
                            "names.")
        return
    if found.loader is None:  # a namespace package: nothing of its own to run
        importlib.import_module(top)
        return
    module = importlib.util.module_from_spec(found)
    sys.modules[top] = module
    try:
        found.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while it is imported
        sys.modules.pop(top, None)
        raise SpecError(f"{where} {reference!r}: importing {top} failed: {one_line(exc)}") from None


def _location(module: Any) -> str | None:
    """Where an imported module came from (its file, or a package's folder); None for built-in modules."""
    if module is None:
        return None
    return getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or []), None)


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def installed_entry_points(group: str) -> list[Any]:
    """The group's entry points of installed distributions only: a ``*.dist-info`` folder in the working directory
    or on ``$PYTHONPATH`` cannot register (or take over) a name."""
    from importlib.metadata import distributions

    return [point for distribution in distributions(path=installation_paths())
            for point in distribution.entry_points if point.group == group]


def installation_paths() -> list[str]:
    """``sys.path`` without what the user put there: the working directory, ``$PYTHONPATH`` and spec folders.

    What is left is site-packages, the standard library and the paths editable installs add through ``.pth`` files.
    """
    cwd = os.getcwd()
    user = {"", ".", cwd, *_SPEC_FOLDERS,
            *(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)}
    return [p for p in sys.path if p not in user and os.path.abspath(p or ".") not in user]


def _installed_spec(top: str, paths: list[str]) -> Any:
    """The spec by which ``top`` is imported from ``paths`` or through an import hook (built-in, frozen, editable
    installs); None when it is not."""
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            found = importlib.machinery.PathFinder.find_spec(top, paths)
        else:  # the built-in and frozen importers, and the hooks of editable installs
            try:
                found = finder.find_spec(top, None) if hasattr(finder, "find_spec") else None
            except Exception:  # noqa: BLE001 - a third-party hook that cannot answer is not an installation
                found = None
        if found is not None:
            return found
    return None


def _found_in(top: str, paths: list[str]) -> str | None:
    """Where ``top`` would be imported from when only ``paths`` are searched (no code runs), or None."""
    found = importlib.machinery.PathFinder.find_spec(top, [p or os.getcwd() for p in paths])
    return None if found is None else _spec_origin(found) or top


def _spec_origin(found: Any) -> str | None:
    if found.origin and found.origin not in ("namespace", "built-in", "frozen"):
        return found.origin
    return next(iter(found.submodule_search_locations or []), None)



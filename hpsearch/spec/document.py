"""Reading a spec's YAML safely, and applying ``--set KEY.PATH=VALUE`` overrides to it.

Safe loading only (a ``!!python/...`` tag is an error), YAML 1.2 numbers (``1e-4``), no duplicate keys, and bounds
on nesting and on the size of a document once its aliases are expanded. Every error is one
:class:`~hpsearch.errors.SpecError` line naming the source.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from hpsearch.errors import SpecError

__all__ = ["MAX_DEPTH", "MAX_NODES", "apply_override", "parse_override", "yaml_load"]


MAX_DEPTH = 32  # nesting levels of a spec: the deepest real spec has 5
MAX_NODES = 100_000  # values after expanding YAML aliases: a spec has hundreds; an alias bomb has billions


class _SpecLoader(yaml.SafeLoader):
    """Safe loading, with YAML 1.2 floats: ``1e-4`` and ``.5`` are numbers, as people mean them.

    A key given twice in one mapping is an error rather than the last one silently winning.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *defaults' merges; its keys may be overridden here
            key = self.construct_object(key_node, deep=False)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in one mapping", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str, source: str) -> Any:
    """Parse YAML text safely; any error (including ``!!python/...`` tags) becomes one line naming ``source``.

    Aliases share one object, so a "billion laughs" document loads in microseconds and explodes only when something
    walks it: its size after expanding aliases is bounded here, and so is its nesting.
    """
    try:
        value = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - _SpecLoader is a SafeLoader
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}: invalid YAML{where}: {problem}.") from None
    except RecursionError:
        raise SpecError(f"{source}: nested more than {MAX_DEPTH} levels deep.") from None
    _expanded_size(value, source, depth=0, sizes={})
    return value


def _expanded_size(value: Any, source: str, depth: int, sizes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(values, levels) of ``value`` with every alias expanded, counted once per shared object; bounded."""
    if depth > MAX_DEPTH:
        raise SpecError(f"{source}: nested more than {MAX_DEPTH} levels deep (or an alias refers to itself).")
    if not isinstance(value, (dict, list)):
        return 1, 0
    known = sizes.get(id(value))
    if known is None:
        children = list(value.values()) if isinstance(value, dict) else value
        measured = [_expanded_size(child, source, depth + 1, sizes) for child in children]
        known = (1 + sum(size for size, _ in measured), 1 + max((levels for _, levels in measured), default=0))
        sizes[id(value)] = known
    if depth + known[1] > MAX_DEPTH:
        raise SpecError(f"{source}: nested more than {MAX_DEPTH} levels deep.")
    if known[0] > MAX_NODES:
        raise SpecError(f"{source}: holds more than {MAX_NODES:,} values once its YAML aliases are expanded; "
                        "an alias bomb?")
    return known


def parse_override(item: str) -> tuple[list[str | int], Any]:
    """``KEY.PATH=VALUE`` -> (path, value), the value read as YAML so numbers and lists keep their types."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. defaults.hidden_size=100.")
    # ASCII digits only: '²'.isdigit() is true, and int('²') fails
    path: list[str | int] = [int(part) if part.isascii() and part.isdigit() else part
                             for part in key.strip().split(".")]
    if len(path) > MAX_DEPTH:  # the spec it builds would be nested deeper than any spec file may be
        shown = item if len(item) <= 60 else f"{item[:57]}..."
        raise SpecError(f"--set {shown!r}: the path must have at most {MAX_DEPTH} parts. Got {len(path)} instead.")
    return path, yaml_load(raw, f"--set {key}") if raw.strip() else None


def apply_override(raw: dict[str, Any], path: list[str | int], value: Any, item: str) -> None:
    node: Any = raw
    for depth, part in enumerate(path[:-1]):
        if isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                raise SpecError(f"--set {item!r}: index {part} is out of range (the list has {len(node)} items).")
            node = node[part]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            where = ".".join(str(p) for p in path[:depth + 1])
            raise SpecError(f"--set {item!r}: {where} is not a mapping or list.")
    last = path[-1]
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError(f"--set {item!r}: cannot set {'.'.join(str(p) for p in path)}.")

"""The package's layers, as its package docstrings state them: every import points down, and none circles.

Every import counts, at the top of a module or inside a function, and under ``TYPE_CHECKING`` too: a type that names
a module above it is a dependency on it all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpsearch"

# Bottom to top; a module may import its own layer's modules (without a circle) and those of the layers below.
LAYERS = [
    {"hpsearch.errors", "hpsearch.formatting", "hpsearch.files", "hpsearch.validation", "hpsearch.plugins"},
    {"hpsearch.data"},
    {"hpsearch.backends"},
    {"hpsearch.storage"},
    {"hpsearch.search"},
    {"hpsearch.spec"},
    {"hpsearch.engine"},
    {"hpsearch.report"},
    {"hpsearch.tracking"},
    {"hpsearch.arguments"},
    {"hpsearch.api"},
    {"hpsearch.cli", "hpsearch.__main__", "hpsearch"},
]
# What the pure layers must not import even indirectly through a library.
FORBIDDEN = {
    "hpsearch.search": ("optuna", "sqlalchemy", "mlflow", "torch"),
    "hpsearch.backends": ("optuna", "mlflow", "sqlalchemy"),
    "hpsearch.data": ("optuna", "mlflow", "sqlalchemy", "torch"),
    "hpsearch.spec": ("optuna", "mlflow", "sqlalchemy"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The modules ``name`` imports: hpsearch's own by their module name, others by their top-level name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES]
            found.update(subs or [module])
    return {module if module.startswith("hpsearch") else module.split(".")[0] for module in found}


def _layer(module: str) -> int:
    for rank, members in enumerate(LAYERS):
        if any(module == member or module.startswith(member + ".") for member in members if member != "hpsearch"):
            return rank
    assert module == "hpsearch", f"{module} is in no layer of {__name__}.LAYERS"
    return len(LAYERS) - 1


GRAPH = {name: {dep for dep in _imports(name, path) if dep.startswith("hpsearch")} for name, path in MODULES.items()}


def test_every_import_points_down_or_sideways():
    upward = [f"{name} imports {dep}" for name, deps in sorted(GRAPH.items()) for dep in sorted(deps)
              # the root's version is a leaf's to read; the root's lazy names are the API's, above everything
              if dep != "hpsearch" and _layer(dep) > _layer(name)]
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_that_imports_it_back():
    """Tarjan's strongly connected components over every hpsearch module: each must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in GRAPH.get(node, ()):
            if dep == "hpsearch" or dep not in GRAPH:
                continue
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(circle) for circle in circles)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_pure_layers_import_no_outside_system(package):
    leaks = [f"{name} imports {dep}" for name, path in sorted(MODULES.items())
             if name == package or name.startswith(package + ".")
             for dep in sorted(_imports(name, path)) if dep in FORBIDDEN[package]]
    assert not leaks, "\n".join(leaks)


def test_the_tree_shows_the_layers():
    """At most a dozen modules directly in the package, none over 400 lines, no class over 250."""
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    long_modules, long_classes = [], []
    for name, path in sorted(MODULES.items()):
        text = path.read_text()
        if text.count("\n") > 400:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                long_classes.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long_modules and not long_classes, "\n".join(long_modules + long_classes)

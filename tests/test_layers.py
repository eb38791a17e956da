"""The package's shape, checked from its source: imports point only down the layers, no module imports itself
round a circle, no resnetlab import hides inside a function, and no file, function or class outgrows a reader.
docs/architecture.md draws the same layers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "resnetlab"

# lowest first; a package may import its own modules and those of any package in a lower layer
LAYERS: list[tuple[str, ...]] = [
    ("errors", "version"),
    ("files",),
    ("networks", "data", "runs"),
    ("settings",),
    ("weights",),
    ("training",),
    ("experiments",),
    ("api",),  # the public API: what the command line does, from Python
    ("cli",),
    ("__init__", "__main__"),  # the public API and `python -m resnetlab`
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# Imports made inside a function: only the command line's, so a command loads only the layers it uses.
LAZY_OK = ("cli",)
MAX_FILE, MAX_FUNCTION, MAX_CLASS = 400, 60, 200


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _top(module: str) -> str:
    """The layer name of a module: its package below resnetlab, or the root module's own name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "resnetlab"]
    assert node.level == 0, f"{module}: relative import (the package imports absolutely)"
    base = node.module or ""
    if base.split(".")[0] != "resnetlab":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports() -> list[tuple[str, str, bool]]:
    """(importer, imported module, made inside a function) for every resnetlab import in the package."""
    edges = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                 for n in ast.walk(f) if isinstance(n, ast.Import | ast.ImportFrom)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges += [(module, t, id(node) in local) for t in _targets(module, node) if t != module]
    return edges


EDGES = _imports()


def test_every_module_belongs_to_a_layer() -> None:
    assert sorted({_top(m) for m in MODULES} - set(RANK)) == []


def test_imports_point_down_the_layers() -> None:
    upward = [f"{a} -> {b}" for a, b, _ in EDGES
              if _top(a) != _top(b) and RANK[_top(b)] >= RANK[_top(a)] and _top(b) != "__init__" or
              _top(b) == "__init__" and _top(a) not in ("__init__", "__main__")]
    assert upward == []


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for a, b, _ in EDGES:
        graph[a].add(b)
    done: set[str] = set()
    path: list[str] = []

    def visit(m: str) -> None:
        if m in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for n in sorted(graph[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_no_resnetlab_import_inside_a_function() -> None:
    hidden = sorted({f"{a} -> {b}" for a, b, local in EDGES if local and _top(a) not in LAZY_OK})
    assert hidden == []


def test_the_checks_see_a_violation() -> None:
    """The rules above are not vacuous: the graph they read has the edges the package is known to have."""
    assert ("resnetlab.training.build", "resnetlab.networks.net", False) in EDGES
    assert len(EDGES) > 100


def test_each_package_says_what_it_owns_and_may_import() -> None:
    for name in {n for layer in LAYERS for n in layer} - {"errors", "version", "__init__", "__main__"}:
        doc = ast.get_docstring(ast.parse((SRC / name / "__init__.py").read_text())) or ""
        said = re.search(r"May import: (.*)", doc)
        assert said, f"resnetlab.{name}: its docstring has no 'May import:' line"
        below = {n for layer in LAYERS[:RANK[name]] for n in layer}
        assert {w.strip(" .") for w in said.group(1).split(",")} == below, name


def _sizes() -> list[str]:
    over = []
    for module, path in MODULES.items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE:
            over.append(f"{module}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > (MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION):
                over.append(f"{module}.{node.name}: {length} lines")
    return over


def test_no_file_function_or_class_outgrows_a_reader() -> None:
    assert _sizes() == []

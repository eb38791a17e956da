"""No import circle anywhere in the repository (src/, tests/ with the fuzz package, tools/, benchmarks/,
hubconf.py), lazy imports inside functions included; and the fuzz package and tools/ kept to src/'s size rules
(tests/test_layers.py checks src/'s own). The graph is read from the source with ast, so each test also shows
it sees what it claims: known edges are found, and a circle planted in a copy is reported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE, MAX_FUNCTION, MAX_CLASS = 400, 60, 200


def module_names(root: Path) -> dict[str, Path]:
    """Every Python file of the repository by the name it is imported under: src/ by its package path,
    tests/*.py by their bare name (pytest puts tests/ on the path: `from conftest import ...`), the rest by their
    path from the repository's top level (tests.fuzz.core, tools.gpu_plan, benchmarks.run, hubconf)."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0].startswith(".") or rel.parts[0] in ("build", "site", "results", "runs") \
                or "egg-info" in str(rel):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[0] == "src" or parts[0] == "tests" and len(parts) == 2:
            parts = parts[1:]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names[".".join(parts)] = path
    return names


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The repository modules one import statement names (the longest known prefix of each dotted name)."""
    if isinstance(node, ast.Import):
        wanted = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
            package = here.split(".") if is_package else here.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    found = []
    for name in wanted:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in known:
                found.append(".".join(parts[:end]))
                break
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the repository modules it imports, anywhere in its file (functions included)."""
    known = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name].update(t for t in _targets(node, name, path.name == "__init__.py", known) if t != name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_anywhere_in_the_repository() -> None:
    graph = import_graph(ROOT)
    # the graph is read, not assumed: edges of each part of the repository are there
    for importer, imported in (("tests.fuzz.running", "tests.fuzz.judge"), ("tests.fuzz.args", "tests.fuzz.core"),
                               ("test_fuzz", "tests.fuzz.families"), ("test_gpu_plan", "tools.gpu_plan"),
                               ("resnetlab.cli", "resnetlab.errors"), ("benchmarks.run", "benchmarks.common")):
        assert imported in graph[importer], (importer, sorted(graph[importer]))
    assert circles(graph) == []


def test_the_circle_check_sees_a_circle(tmp_path: Path) -> None:
    """A circle planted in a small tree (through a lazy import inside a function, as the fuzzers' loaders were,
    and a relative one) is reported, and only that one."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import x\n")
    (tmp_path / "pkg" / "b.py").write_text("x = 1\n\n\ndef later():\n    from . import c\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")
    (tmp_path / "pkg" / "d.py").write_text("import pkg.a\n")
    assert circles(import_graph(tmp_path)) == [["pkg.a", "pkg.b", "pkg.c"]]


def oversized(paths: list[Path]) -> list[str]:
    """Files over MAX_FILE lines, functions over MAX_FUNCTION, classes over MAX_CLASS."""
    over = []
    for path in paths:
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE:
            over.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > (MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION):
                    over.append(f"{path.name}:{node.name}: {length} lines")
    return over


@pytest.mark.parametrize("folder", ["tests/fuzz", "tools"])
def test_the_fuzz_package_and_tools_keep_the_size_rules(folder: str) -> None:
    paths = sorted((ROOT / folder).glob("*.py"))
    assert len(paths) >= 3
    assert oversized(paths) == []


def test_the_size_check_sees_a_violation(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text("def f():\n" + "    x = 1\n" * (MAX_FUNCTION + 1))
    assert oversized([tmp_path / "big.py"]) == ["big.py:f: 62 lines"]

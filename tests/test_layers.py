"""The package's shape: imports point only down the layers (import-linter's layers contract, declared once in
pyproject.toml), no resnetlab import hides inside a function outside the command line, every package says what
it may import, docs/architecture.md draws the same layers, and no file, function or class outgrows a reader."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "resnetlab"
CONTRACT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
# the layers, lowest first, each a tuple of the packages side by side in it (from the contract, highest first)
LAYERS = [tuple(name.strip() for name in layer.split("|")) for layer in reversed(CONTRACT["layers"])]
MAX_FILE, MAX_FUNCTION, MAX_CLASS = 400, 60, 200


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([lint, "--config", str(config), "--no-cache"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_the_layers_contract_is_kept() -> None:
    done = _lint(ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-500:]
    assert "1 kept, 0 broken" in done.stdout


def test_the_contract_sees_a_violation(tmp_path: Path) -> None:
    """The check is not vacuous: with two layers swapped (training above the API) the same code breaks it."""
    text = (ROOT / "pyproject.toml").read_text().replace('    "api",\n    "experiments",\n    "training",\n',
                                                         '    "training",\n    "api",\n    "experiments",\n')
    assert '"training",\n    "api"' in text
    (tmp_path / "pyproject.toml").write_text(text)
    done = _lint(tmp_path / "pyproject.toml")
    assert done.returncode != 0 and "BROKEN" in done.stdout.upper() and "resnetlab.api" in done.stdout


def test_every_package_is_in_a_layer() -> None:
    named = {n for layer in LAYERS for n in layer}
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")} | {p.stem for p in SRC.glob("*.py")}
    assert packages - named == {"__init__", "__main__"}  # the package root sits above every layer


def _local_imports(path: Path, root: Path = SRC) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for f in ast.walk(tree):
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef):
            for n in ast.walk(f):
                names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                    [n.module or ""] if isinstance(n, ast.ImportFrom) else []
                found += [f"{path.relative_to(root)}: {name}" for name in names if name.split(".")[0] == "resnetlab"]
    return found


def test_no_resnetlab_import_inside_a_function(tmp_path: Path) -> None:
    """Every import at the top of its module (the package root loads every layer anyway, so the command line's
    imports in functions bought nothing and went, issue 32); the check sees one planted in a function."""
    hidden = [line for path in SRC.rglob("*.py") for line in _local_imports(path)]
    assert hidden == []
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from resnetlab.errors import one_line\n")
    assert _local_imports(planted, tmp_path) == ["planted.py: resnetlab.errors"]


def test_each_package_says_what_it_may_import() -> None:
    for rank, layer in enumerate(LAYERS):
        for name in layer:
            if not (SRC / name / "__init__.py").exists():
                continue
            doc = ast.get_docstring(ast.parse((SRC / name / "__init__.py").read_text())) or ""
            said = re.search(r"May import: (.*)", doc)
            assert said, f"resnetlab.{name}: its docstring has no 'May import:' line"
            below = {n for lower in LAYERS[:rank] for n in lower}
            assert {w.strip(" .") for w in said.group(1).split(",")} == below, name


def test_the_architecture_page_draws_the_same_layers() -> None:
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", (ROOT / "docs" / "architecture.md").read_text(), re.M)
    drawn: dict[int, set[str]] = {}
    for rank, names in rows:
        drawn.setdefault(int(rank), set()).update(re.findall(r"`(\w+)`", names))
    assert [drawn[k] for k in sorted(drawn)] == [set(layer) for layer in LAYERS]


def _sizes() -> list[str]:
    over = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE:
            over.append(f"{path.relative_to(SRC)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > (MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION):
                over.append(f"{path.relative_to(SRC)}:{node.name}: {length} lines")
    return over


def test_no_file_function_or_class_outgrows_a_reader() -> None:
    assert _sizes() == []


@pytest.mark.parametrize("limit", ["file", "function"])
def test_the_size_rule_sees_a_violation(limit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size check reads real sizes: a file or a function over the limit, planted in a copy, is reported."""
    body = "x = 1\n" * (MAX_FILE + 1) if limit == "file" else \
        "def f():\n" + "    x = 1\n" * (MAX_FUNCTION + 1)
    fake = tmp_path / "resnetlab"
    fake.mkdir()
    (fake / "big.py").write_text(body)
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert len(_sizes()) == 1

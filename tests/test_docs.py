"""The API reference (mkdocs.yml, docs/reference/): the strict build passes, and the reference page documents
every name `import resnetlab` exports, so a name dropped from the reference (or a docstring griffe cannot
parse, or a broken link in docs/) fails here. Skipped without the `docs` extra; the build takes a few seconds."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import resnetlab
import resnetlab.api

ROOT = Path(__file__).resolve().parents[1]
LAYER_PAGES = ("networks", "data", "runs", "settings", "weights", "training", "experiments")

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python")),
    reason="the docs extra is not installed (pip install -e '.[docs]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def anchors(page: Path) -> set[str]:
    return set(re.findall(r'id="(resnetlab[\w.]*)"', page.read_text(encoding="utf-8")))


def reference_name(name: str) -> str:
    """Where the reference documents an exported name: the API's under `resnetlab.api`, the others where
    they are defined (`resnetlab.networks.net.ResNet`)."""
    if name in resnetlab.api.__all__:
        return f"resnetlab.api.{name}"
    return f"{getattr(resnetlab, name).__module__}.{name}"


def test_the_reference_documents_every_public_name(site: Path) -> None:
    found = anchors(site / "reference" / "api" / "index.html")
    public = [n for n in resnetlab.__all__ if n != "__version__"]
    missing = [reference_name(n) for n in public if reference_name(n) not in found]
    assert not missing, f"exported by resnetlab but not in docs/reference/api.md: {missing}"
    for member in ("Run.open", "Run.evaluate", "Run.export", "Run.predict", "Run.resume", "Run.metrics",
                   "Run.summary", "Run.model", "Trained.predict", "Trained.preprocess", "Trained.export",
                   "Trained.module", "Propagation.summary", "Propagation.plot"):
        assert f"resnetlab.api.{member}" in found, member


def test_the_pages_and_layer_references_are_built(site: Path) -> None:
    for page in ("architecture", "experiments", "results", "propagation", "reliability", "benchmarks"):
        assert (site / page / "index.html").is_file(), page
    for layer in LAYER_PAGES:
        assert f"resnetlab.{layer}" in anchors(site / "reference" / layer / "index.html"), layer
    # the run outputs docs/results.md shows from ../results/ are part of the site
    assert (site / "results" / "cifar10-jpeg" / "degradation" / "curves.png").is_file()

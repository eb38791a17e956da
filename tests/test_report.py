"""The HTML report: self-contained, and rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from resnetlab.cli import main

SUITE = """
title = "tiny"
members = [
  { label = "plain", model = "plain20", small = { depth = 8 } },
  { label = "residual", model = "resnet20", small = { depth = 8 }, paper = 8.75 },
]
"""
BAR = (112, 142, 192)  # the bar colour of errors.png (#4c72b0 at alpha 0.8 on white)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "tiny.toml").write_text(SUITE)
    assert main(["experiment", str(tmp / "tiny.toml"), "--scale", "small", "--iters", "3",
                 "--out", str(tmp / "suite")]) == 0
    assert main(["report", str(tmp / "suite"), str(tmp / "suite" / "residual" / "seed0"),
                 "-o", str(tmp / "report.html")]) == 0
    return tmp / "report.html"


def test_report_is_self_contained(report: Path) -> None:
    page = report.read_text()
    assert "<table>" in page and "Suite: tiny" in page and "Run: seed0" in page
    assert page.count('src="data:image/png;base64,') == 3  # suite curves + errors, run curves
    assert not re.search(r'src="(?!data:)', page)  # nothing to fetch
    assert "checks the mechanism" in page and "resnetlab 0.1.0, torch" in page


def test_bad_report_input_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("value", ["x", True, [1], {"a": 1}])
def test_an_error_of_another_kind_in_summary_json_is_shown_not_a_traceback(report: Path, tmp_path: Path,
                                                                          value: object) -> None:
    """summary.json's final and best errors as a run wrote them are numbers; one edited to text (or another
    value the summary's check lets through) is shown as it is, or the check names it in one line."""
    run = tmp_path / "run"
    shutil.copytree(report.parent / "suite" / "residual" / "seed0", run, symlinks=True)
    summary = json.loads((run / "summary.json").read_text())
    summary["final"]["test_error"] = summary["best"]["test_error"] = value
    (run / "summary.json").write_text(json.dumps(summary))
    code = main(["report", str(run), "-o", str(tmp_path / "r.html")])
    if code == 0:
        assert f"<td>{html.escape(str(value))}</td>" in (tmp_path / "r.html").read_text()
    else:
        assert code == 2 and not (tmp_path / "r.html").exists()


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it when it can)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert dom.stdout.count("<tr>") >= 3 + 10  # the suite table (header + 2 members) and the run's metadata
    assert "residual" in dom.stdout and "8.75" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = Image.open(shot).convert("RGB").getdata()
    bar = sum(1 for p in pixels if all(abs(a - b) <= 12 for a, b in zip(p, BAR, strict=True)))
    assert bar > 500  # the embedded bar chart was decoded and painted

"""`resnetlab models` and `resnetlab info`, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys

from resnetlab.cli import main


def test_models_table_lists_registry_with_counts(capsys) -> None:
    assert main(["models", "--filter", "resnet1"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("resnet110 "))
    assert "1.73M" in line and "0.253G" in line and "v1 table 6" in line
    assert "resnet152" in out and "11.282G" in out


def test_info_with_override_shows_units(capsys) -> None:
    assert main(["info", "resnet20", "--override", "shortcut=exclusive_gating", "--override", "gate_bias=-6"]) == 0
    out = capsys.readouterr().out
    assert "exclusive gate b_g=-6.0" in out and "total: 9 units" in out
    assert "A: zero-pad" in out  # the stage-2 and 3 first units


def test_unknown_name_is_one_line_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "resnetlab", "info", "resnet21"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown model 'resnet21'" in proc.stderr and "resnet20" in proc.stderr


def test_bad_override_is_one_line_exit_2(capsys) -> None:
    assert main(["info", "resnet20", "--override", "gate_bias=-6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab: error: gate_bias:") and err.count("\n") == 1


def test_analyze_propagation_command(tmp_path, capsys) -> None:
    out = tmp_path / "prop.png"
    assert main(["analyze", "propagation", "--model", "resnet20", "--model", "plain20", "--data", "digits",
                 "--batch-size", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resnet20" in printed and "plain20" in printed and out.read_bytes()[:4] == b"\x89PNG"
    assert main(["analyze", "propagation", "--model", "resnet20", "--out", str(tmp_path / "x.gif")]) == 2

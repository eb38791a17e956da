"""Experiment suites: members as the papers list them, and a small suite run end to end on digits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from resnetlab import count_params, create_model
from resnetlab.cli import main
from resnetlab.errors import ConfigError
from resnetlab.experiments.results import MemberResult, kendall_tau
from resnetlab.experiments.suite import at_scale, load_suite, suite_names
from resnetlab.networks.registry import get_spec


def params(suite: str) -> dict[str, int]:
    return {m.label: count_params(create_model(m.model, **m.override)) for m in load_suite(suite).members}


def test_every_paper_table_has_a_suite() -> None:
    assert suite_names() == ["activations", "degradation", "depth", "options", "preact", "shortcuts"]


def test_degradation_and_depth_members() -> None:
    deg = load_suite("degradation")
    assert [m.model for m in deg.members] == [f"{k}{d}" for k in ("plain", "resnet") for d in (20, 32, 44, 56, 110)]
    counts = params("degradation")
    assert counts["plain20"] == counts["resnet20"] == 269_722  # option A shortcuts add no parameters
    assert round(counts["resnet110"] / 1e6, 1) == 1.7
    depth = load_suite("depth")
    assert [m.paper for m in depth.members] == [8.75, 7.51, 7.17, 6.97, 6.43, 7.93]
    assert round(params("depth")["resnet1202"] / 1e6, 1) == 19.4


def test_shortcut_suite_is_v2_table_1() -> None:
    suite = load_suite("shortcuts")
    assert len(suite.members) == 11 and {m.model for m in suite.members} == {"resnet110"}
    by_label = {m.label: m for m in suite.members}
    assert by_label["exclusive gating b_g=-6"].override == {"shortcut": "exclusive_gating", "gate_bias": -6.0}
    assert by_label["scaling 0.5 / 0.5"].paper == 12.35 and by_label["dropout shortcut 0.5"].paper == "fail"
    counts = params("shortcuts")
    base = counts["identity"]
    assert counts["dropout shortcut 0.5"] == counts["scaling 0 / 1"] == base  # parameter-free shortcuts
    assert counts["exclusive gating b_g=-6"] > base and counts["1x1 conv shortcut"] > base


def test_activation_preact_and_option_suites() -> None:
    units = [m.override.get("unit", "original") for m in load_suite("activations").members]
    assert units == ["original", "bn_after_add", "relu_before_add", "relu_preact", "preact"] * 2
    counts = params("activations")
    assert all(round(c / 1e6, 1) == 1.7 for c in counts.values())
    pre = params("preact")
    assert round(pre["resnet1001"] / 1e6, 1) == round(pre["preact_resnet1001"] / 1e6, 1) == 10.3
    opts = params("options")
    assert opts["resnet34 A"] < opts["resnet34 B"] == 21_797_672 < opts["resnet34 C"]


def test_small_scale_members_are_shallower() -> None:
    for name in suite_names():
        for member in load_suite(name).members:
            small_model, small_override = member.at("small")
            assert count_params(create_model(small_model, **small_override)) < count_params(
                create_model(member.model, **member.override)), (name, member.label)


def test_cpu_scale_resolves_members_and_depths() -> None:
    deg = at_scale(load_suite("degradation"), "cpu")
    assert [(m.label, *m.at("cpu")) for m in deg.members] == [
        ("plain20", "plain20", {}), ("plain56", "plain56", {}), ("resnet20", "resnet20", {}),
        ("resnet56", "resnet56", {})]  # the paper's own nets: 20 and 56 layers
    act = at_scale(load_suite("activations"), "cpu")
    assert [(m.label, get_spec(*m.at("cpu")[:1], **m.at("cpu")[1]).unit) for m in act.members] == [
        ("110 (a) original", "original"), ("110 (b) BN after add", "bn_after_add"),
        ("110 (e) full pre-act", "preact")]
    assert {get_spec(m.at("cpu")[0], **m.at("cpu")[1]).depth for m in act.members} == {56}
    full = load_suite("degradation")
    assert len(full.members) == 10 and len(at_scale(full, "paper").members) == 10  # only cpu scale leaves out
    with pytest.raises(ConfigError, match="not run at cpu scale"):
        next(m for m in full.members if m.label == "plain110").at("cpu")
    # a member without a cpu table runs its small-scale net, with the paper member's overrides
    gate = next(m for m in load_suite("shortcuts").members if m.label == "exclusive gating b_g=-6")
    assert gate.at("cpu") == gate.at("small") == (
        "resnet110", {"shortcut": "exclusive_gating", "gate_bias": -6.0, "depth": 20})
    for name in suite_names():  # every suite runs at cpu scale with nets no deeper than the paper's
        for member in at_scale(load_suite(name), "cpu").members:
            model, override = member.at("cpu")
            assert get_spec(model, **override).depth <= get_spec(member.model, **member.override).depth or (
                name == "options"), (name, member.label)  # options: ResNet-20 for ImageNet's ResNet-34


def test_cpu_scale_needs_data_and_valid_tables(tmp_path: Path, capsys) -> None:
    out = tmp_path / "suite"
    assert main(["experiment", "degradation", "--scale", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--data is required at cpu scale" in err and err.count("\n") == 1 and not out.exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('members = [{ label = "x", model = "resnet20", cpu = 3 }]')
    with pytest.raises(ConfigError, match="cpu must be a table or false"):
        load_suite(str(bad))
    bad.write_text('members = [{ label = "x", model = "resnet20", cpu = { depth = 9 } }]')  # not 6n+2
    with pytest.raises(ConfigError, match=r"member 1 \('x'\) \(cpu scale\)"):
        load_suite(str(bad))
    bad.write_text('members = [{ label = "x", model = "resnet20", cpu = false }]')
    with pytest.raises(ConfigError, match="no member runs at cpu scale"):
        at_scale(load_suite(str(bad)), "cpu")


def test_cpu_scale_run_states_its_scale(tmp_path: Path, capsys) -> None:
    suite_file = tmp_path / "tiny.toml"
    suite_file.write_text('''title = "tiny"
members = [
  { label = "kept", model = "resnet20", cpu = { depth = 8 } },
  { label = "left out", model = "resnet20", cpu = false },
]
''')
    out = tmp_path / "suite"
    assert main(["experiment", str(suite_file), "--scale", "cpu", "--data", "synthetic:16", "--iters", "2",
                 "--out", str(out)]) == 0
    assert "CPU-scale run" in capsys.readouterr().out
    report = (out / "results.md").read_text()
    assert "Scale: cpu" in report and "CPU-scale run" in report and "| kept | resnet20 depth=8 |" in report
    assert "left out" not in report and not (out / "left-out").exists()
    assert json.loads((out / "kept" / "seed0" / "config.json").read_text())["schedule"]["iters"] == 2


SUITE = """
title = "tiny"
source = "test"
recipe = "cifar"
members = [
  { label = "plain", model = "plain20", small = { depth = 8 } },
  { label = "residual", model = "resnet20", small = { depth = 8 }, paper = 8.75 },
  { label = "exploding", model = "resnet20", small = { depth = 8 }, set = { "optim.lr" = 1e30 }, paper = "fail" },
]
"""


def test_small_suite_end_to_end_with_a_diverging_member(tmp_path: Path, capsys) -> None:
    suite_file = tmp_path / "tiny.toml"
    suite_file.write_text(SUITE)
    out = tmp_path / "suite"
    args = ["experiment", str(suite_file), "--scale", "small", "--iters", "6", "--seeds", "2", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "checks the mechanism" in printed
    with open(out / "results.csv") as f:
        rows = {r["member"]: r for r in csv.DictReader(f)}
    assert rows["plain"]["runs"] == rows["residual"]["runs"] == "2"
    assert rows["exploding"]["diverged"] == "2" and rows["exploding"]["fail"] == "True"
    assert rows["residual"]["paper"] == "8.75" and rows["exploding"]["rank"] == "3"  # a divergence ranks last
    report = (out / "results.md").read_text()
    assert "small-scale run" in report and "| residual | resnet20 depth=8 |" in report
    for fig in ("curves.png", "errors.png"):
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "residual" / "seed1" / "summary.json").read_text())["steps"] == 6
    assert main(args) == 0  # a rerun resumes the suite: nothing left to train
    assert capsys.readouterr().out.count("already done, skipped") == 6


def test_kendall_tau_counts_agreement() -> None:
    rows = [MemberResult("a", rank=1, paper_rank=1), MemberResult("b", rank=2, paper_rank=3),
            MemberResult("c", rank=3, paper_rank=2), MemberResult("d", rank=None, paper_rank=1)]
    tau, n = kendall_tau(rows)
    assert n == 3 and tau == pytest.approx(1 / 3)


def test_bad_suites_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'shortcuts'"):
        load_suite("shortcut")
    bad = tmp_path / "bad.toml"
    bad.write_text('members = [{ label = "x", model = "resnet20", override = { gate_bias = -6 } }]')
    with pytest.raises(ConfigError, match="gate_bias"):
        load_suite(str(bad))
    assert main(["experiment", "degradation"]) == 2  # paper scale needs --data

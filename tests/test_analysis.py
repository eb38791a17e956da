"""Signal/gradient propagation (`experiments.propagation`): v2 eq. 4-7 checked on real networks, one batch each."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resnetlab.cli.analyze import run_propagation_cli
from resnetlab.data import load_data
from resnetlab.errors import CheckpointError, ConfigError, ResnetlabError, SpecError
from resnetlab.experiments.propagation import (
    compare,
    format_propagation,
    plot_propagation,
    propagation,
    summarize,
)
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import UnknownModelError, create_model
from resnetlab.networks.spec import ResNetSpec
from resnetlab.settings.config import build_config
from resnetlab.weights.checkpoint import save_checkpoint

UNITS = 9  # residual units of the single-stage nets below


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These nets are tiny: a second intra-op thread only adds contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(seed: int = 0, n: int = 8, size: int = 8, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def single_stage(**fields: object) -> ResNet:
    """Pre-activation net of one 16-wide stage (16 = stem width, stride 1): every shortcut is an exact identity."""
    torch.manual_seed(0)
    return ResNet(ResNetSpec(depth=2 * UNITS + 2, units=(UNITS,), widths=(16,), unit="preact", **fields))


# ---- v2 eq. 4-5: identity shortcuts pass signal and gradient unchanged ----------------------------------
def test_zeroed_branches_pass_gradient_unchanged_through_identity_units() -> None:
    x, y = batch()
    rows = propagation(single_stage(zero_init_residual=True), x, y)
    assert [r["index"] for r in rows] == list(range(1, UNITS + 2))  # x_1..x_L inputs, then the last output
    s = summarize(rows)
    assert s["units"] == UNITS
    assert s["grad_ratio"] == pytest.approx(1.0, rel=1e-5)  # ||dE/dx_1|| == ||dE/dx_L||
    assert s["std_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert all(r["grad_norm"] == pytest.approx(rows[0]["grad_norm"], rel=1e-5) for r in rows)
    assert rows[0]["grad_norm"] > 0
    # With the branches live (He init) the gradient does change through the same units.
    live = summarize(propagation(single_stage(), x, y))
    assert abs(live["grad_ratio"] - 1.0) > 0.05 and abs(live["std_ratio"] - 1.0) > 0.05


# ---- v2 eq. 6-7: a constant shortcut scale lambda multiplies signal and gradient by lambda per unit ------
@pytest.mark.parametrize(("lam", "recompute"), [(0.5, 0), (1.5, 0), (0.5, 1)])
def test_scaled_shortcuts_scale_gradient_by_lambda_per_unit(lam: float, recompute: int) -> None:
    x, y = batch(1)
    model = single_stage(zero_init_residual=True, shortcut="scaling", shortcut_scale=lam, branch_scale=0.7,
                         recompute=recompute)
    rows = propagation(model, x, y)
    s = summarize(rows)
    assert s["grad_ratio"] == pytest.approx(lam**UNITS, rel=1e-5)  # vanishes (0.5) or explodes (1.5) with depth
    for k, row in enumerate(rows):
        assert row["std"] / rows[0]["std"] == pytest.approx(lam**k, rel=1e-5)
        assert row["norm"] / rows[0]["norm"] == pytest.approx(lam**k, rel=1e-5)
        assert row["grad_norm"] * lam**k == pytest.approx(rows[0]["grad_norm"], rel=1e-5)


# ---- at He init: a plain net's gradient spreads over depth by orders of magnitude more ------------------
def test_plain_gradient_spreads_far_more_than_residual_at_init() -> None:
    # Measured (train-mode BN, 8x8 N(0,1) batch of 16, 10 seeds): max/min of ||dE/dx_l|| over the 27 unit
    # inputs and the output is 3.9e3-6.8e3 for plain56 and 18.5-23.2 for resnet56, a ratio of 190-340.
    x, y = batch(0, n=16)
    spread = {}
    for name in ("plain56", "resnet56"):
        torch.manual_seed(100)
        spread[name] = summarize(propagation(create_model(name), x, y))["grad_spread"]
    assert spread["plain56"] > 1e3
    assert spread["resnet56"] < 1e2
    assert spread["plain56"] > 50 * spread["resnet56"]


# ---- the measurement reads the model's own tensors and leaves the model as it was -----------------------
def test_rows_are_the_stem_output_and_the_head_gradient() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20")
    model.eval()
    x, y = batch(2)
    rows = propagation(model, x, y, eval_mode=True)
    assert len(rows) == 9 + 1 and [r["stage"] for r in rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    with torch.no_grad():
        x1 = model.stem(x)
        feats = model.forward_features(x)
    assert rows[0]["std"] == pytest.approx(x1.std().item(), rel=1e-5)
    assert rows[0]["norm"] == pytest.approx(x1.flatten(1).norm(dim=1).mean().item(), rel=1e-5)
    assert rows[-1]["std"] == pytest.approx(feats.std().item(), rel=1e-5)
    feats.requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model.head(feats), y), feats)
    assert rows[-1]["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-5)
    train_rows = propagation(model, x, y)  # batch statistics: other values
    assert abs(train_rows[-1]["grad_norm"] / rows[-1]["grad_norm"] - 1) > 0.01


def no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                   for m in model.modules())


@pytest.mark.parametrize("training", [True, False])
def test_model_parameters_buffers_mode_and_hooks_are_unchanged(training: bool) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", shortcut="dropout")
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch(3)
    propagation(model, x, y)  # train mode inside: BN running statistics move, then are restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training == training for m in model.modules())
    assert no_hooks(model)
    # A failure half-way (a label out of range) also leaves nothing behind.
    with pytest.raises((IndexError, RuntimeError)):
        propagation(model, x, torch.full_like(y, 99))
    assert no_hooks(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # The restore matters: a plain train-mode forward does move the BN statistics.
    model.train()
    model(x)
    assert not torch.equal(before["stem.bn.running_mean"], model.state_dict()["stem.bn.running_mean"])


# ---- presentation and the command ---------------------------------------------------------------------
def test_compare_table_and_figure(tmp_path: Path) -> None:
    x, y = batch(4)
    models = {"zeroed": single_stage(zero_init_residual=True),
              "halved": single_stage(zero_init_residual=True, shortcut="scaling", shortcut_scale=0.5)}
    results = compare(models, x, y)
    table = format_propagation(results).splitlines()
    assert "grad x_1/x_L" in table[0] and len(table) == 2 + 2
    assert table[2].split()[:2] == ["zeroed", str(UNITS)] and table[2].split()[-2:] == ["1", "1"]
    assert float(table[3].split()[-2]) == pytest.approx(0.5**UNITS, rel=1e-2)
    out = plot_propagation(results, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*"))
    with pytest.raises(ConfigError):
        plot_propagation(results, tmp_path / "p.jpeg")


def test_cli_on_digits_writes_figure_and_prints_table(tmp_path: Path, capsys) -> None:
    fig = tmp_path / "fig.png"
    assert run_propagation_cli(["resnet20", "plain20"], ["option=B"], None, "digits", 16, 0, str(fig), False) == 0
    out = capsys.readouterr().out
    assert "digits test batch of 16" in out and f"figure: {fig}" in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith(("resnet20 ", "plain20 "))}
    assert set(lines) == {"resnet20", "plain20"} and lines["resnet20"][1] == "9"
    assert all(math.isfinite(float(v)) and float(v) > 0 for row in lines.values() for v in row[2:])
    assert fig.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("args", "error"), [
    (dict(models=["resnet21"]), UnknownModelError),
    (dict(models=["resnet20"], overrides=["gate_bias=-6"]), SpecError),
    (dict(models=["resnet20"], overrides=["in_channels=3"]), ConfigError),
    (dict(models=["resnet20", "resnet20"]), ConfigError),
    (dict(models=[]), ConfigError),
    (dict(models=["resnet20"], out="f.jpeg"), ConfigError),
    (dict(models=["resnet20"], batch_size=0), ConfigError),
    (dict(models=["resnet18"]), ResnetlabError),  # ImageNet stem: 8x8 digits pool to 1x1, BN needs more
])
def test_cli_bad_input_is_a_resnetlab_error(tmp_path: Path, args: dict, error: type) -> None:
    kw = dict(models=[], overrides=[], checkpoint=None, data="digits", batch_size=1, seed=0, out="f.png",
              eval_mode=False)
    kw.update(args)
    kw["out"] = str(tmp_path / kw["out"])
    with pytest.raises(error):
        run_propagation_cli(**kw)  # type: ignore[arg-type]
    assert not (tmp_path / "f.png").exists()


def test_cli_checkpoint_uses_its_data_and_weights(tmp_path: Path, capsys) -> None:
    cfg = build_config(data="digits")
    source = load_data("digits", cfg.data.options())
    torch.manual_seed(0)  # the CLI builds its fresh preact_resnet20 under seed 0: the same weights
    model = create_model("preact_resnet20", in_channels=1)
    with torch.no_grad():
        model.stem.bn.running_var.fill_(4.0)  # "trained" statistics, visible in eval mode
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, {"spec": model.spec.to_dict(), "model": model.state_dict(), "config": cfg.to_dict(),
                           "norm": source.norm_state()})
    fig = tmp_path / "c.png"
    assert run_propagation_cli(["preact_resnet20"], [], str(ckpt), None, 8, 0, str(fig), True) == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("preact_resnet20")]
    assert "digits test batch of 8" in out and fig.exists() and len(rows) == 2
    assert rows[0][1] == "(trained:" and rows[0][2] == "ckpt.pt)"
    # stem BN running variance 4 vs 1: the trained net's x_1 has half the std of the fresh one (ReLU is 1-homogeneous)
    assert float(rows[0][4]) == pytest.approx(float(rows[1][2]) / 2, rel=1e-2)
    with pytest.raises(CheckpointError):  # 3-channel synthetic images do not fit a 1-channel net
        run_propagation_cli([], [], str(ckpt), "synthetic", 8, 0, str(fig), False)
    with pytest.raises(ConfigError):
        run_propagation_cli([], ["unit=preact"], str(ckpt), None, 8, 0, str(fig), False)

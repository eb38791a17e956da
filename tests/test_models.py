"""The model family: every registry entry builds and trains a step; each unit's formula on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from resnetlab import ResNet, ResNetSpec, count_macs, count_params, create_model, get_spec, list_models
from resnetlab.errors import SpecError
from resnetlab.networks.registry import UnknownModelError
from resnetlab.networks.shortcuts import PadShortcut
from resnetlab.networks.units import Unit


def _small_input(spec: ResNetSpec, batch: int = 2) -> torch.Tensor:
    size = 8 if spec.stem == "cifar" else 64  # the smallest input every stage still sees as >= 1x1
    return torch.randn(batch, spec.in_channels, size, size)


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_builds_runs_and_backprops(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    x = _small_input(model.spec)
    out = model(x)
    assert out.shape == (2, model.spec.num_classes)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem.conv.weight.grad.abs().sum() > 0  # the gradient reaches the first layer


# v1 table 6 (all parameters), v2 tables 3-4 (weight layers), v1 table 1 (multiply-adds, within 3%).
PAPER_PARAMS = [
    ("resnet20", 0.27, 2, False), ("resnet32", 0.46, 2, False), ("resnet44", 0.66, 2, False),
    ("resnet56", 0.85, 2, False), ("resnet110", 1.7, 1, False), ("resnet1202", 19.4, 1, False),
    ("preact_resnet164", 1.7, 1, True), ("preact_resnet1001", 10.2, 1, True),
]
PAPER_MACS = [("resnet18", 1.8), ("resnet34", 3.6), ("resnet50", 3.8), ("resnet101", 7.6), ("resnet152", 11.3)]


@pytest.mark.parametrize(("name", "millions", "digits", "weights_only"), PAPER_PARAMS)
def test_parameter_counts_match_the_papers(name: str, millions: float, digits: int, weights_only: bool) -> None:
    assert round(count_params(create_model(name), weights_only=weights_only) / 1e6, digits) == millions


def test_the_two_papers_count_parameters_differently() -> None:
    # v1 counts BN's scale and shift, v2 does not: the other convention misses each paper's printed figure.
    assert round(count_params(create_model("resnet1202"), weights_only=True) / 1e6, 1) == 19.3
    assert round(count_params(create_model("preact_resnet1001")) / 1e6, 1) == 10.3


@pytest.mark.parametrize(("name", "billions"), PAPER_MACS)
def test_multiply_adds_match_the_paper(name: str, billions: float) -> None:
    macs = count_macs(create_model(name), 224) / 1e9
    assert abs(macs - billions) / billions < 0.03


def test_resnet50_params_and_v15_flops_match_torchvision_figures() -> None:
    assert count_params(create_model("resnet50")) == 25_557_032
    v15 = count_macs(create_model("resnet50", stride_on="3x3"), 224) / 1e9
    assert abs(v15 - 4.09) < 0.01  # the stride on the 3x3 costs more: the figure torchvision lists


def test_counter_sees_the_real_model_not_a_mirror() -> None:
    base = create_model("resnet20")
    gated = create_model("resnet20", shortcut="exclusive_gating", gate_bias=-6)
    # each of the 9 units adds a 1x1 gate conv with bias
    extra = sum(u.shortcut.gate.weight.numel() + u.shortcut.gate.bias.numel() for u in gated.units())
    assert count_params(gated) == count_params(base) + extra
    assert count_macs(gated, 32) > count_macs(base, 32)


# ---- layer order of the five units (v2 fig. 4) -------------------------------------------------------
def _order(unit: Unit) -> str:
    def names(seq: nn.Module) -> list[str]:
        kinds = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu"}
        return [kinds[type(m)] for m in seq.modules() if type(m) in kinds]

    return "-".join(names(unit.preact) + names(unit.branch)) + "|add|" + "-".join(names(unit.post))


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        ("original", "conv-bn-relu-conv-bn|add|relu"),
        ("bn_after_add", "conv-bn-relu-conv|add|bn-relu"),
        ("relu_before_add", "conv-bn-relu-conv-bn-relu|add|"),
        ("relu_preact", "relu-conv-bn-relu-conv-bn|add|"),
        ("preact", "bn-relu-conv-bn-relu-conv|add|"),
    ],
)
def test_unit_layer_order_matches_v2_fig4(unit: str, expected: str) -> None:
    model = create_model("resnet20", unit=unit)
    second = list(model.units())[1]  # not the first unit, which takes its activation from the stem
    assert _order(second) == expected


def test_bottleneck_layer_order_and_stride_placement() -> None:
    model = create_model("resnet50")
    unit = model.stages[1][0]
    assert _order(unit) == "conv-bn-relu-conv-bn-relu-conv-bn|add|relu"
    assert unit.branch.conv1.stride == (2, 2) and unit.branch.conv2.stride == (1, 1)  # paper: first 1x1
    v15 = create_model("resnet50", stride_on="3x3").stages[1][0]
    assert v15.branch.conv1.stride == (1, 1) and v15.branch.conv2.stride == (2, 2)


def test_preact_nets_end_with_bn_relu_and_first_unit_has_no_preactivation() -> None:
    model = create_model("preact_resnet110")
    assert isinstance(model.head.bn, nn.BatchNorm2d) and isinstance(model.head.relu, nn.ReLU)
    units = list(model.units())
    assert isinstance(units[0].preact, nn.Identity) and not isinstance(units[1].preact, nn.Identity)
    assert not hasattr(create_model("resnet110").head, "bn")


# ---- formulas on hand-made inputs ----------------------------------------------------------------------
def _unit(**fields: object) -> Unit:
    """A second-position full pre-activation unit (no post-addition step), in eval mode."""
    spec = ResNetSpec(unit="preact", **fields)
    torch.manual_seed(1)
    unit = Unit(spec, 16, 16, 1).eval()
    for m in unit.modules():  # non-trivial BN statistics so F is not a plain conv stack
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return unit


def _branch(unit: Unit, x: torch.Tensor) -> torch.Tensor:
    return unit.branch(unit.preact(x))


def test_identity_unit_adds_input_and_branch() -> None:
    unit, x = _unit(), torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(unit(x), x + _branch(unit, x), rtol=0, atol=0)


@pytest.mark.parametrize("fields", [{"option": "C"}, {"shortcut": "conv1x1"}])
def test_a_projection_shortcut_takes_the_preactivated_input(fields: dict[str, str]) -> None:
    """The rule stated in `Unit.forward` (issue 32): a weight layer on the shortcut reads x_preact, as the branch
    does; the identity (the test above) and option A's zero-pad (below) read x itself."""
    unit, x = _unit(**fields), torch.randn(2, 16, 6, 6)
    assert unit.shortcut.projects
    torch.testing.assert_close(unit(x), unit.shortcut.match(unit.preact(x)) + _branch(unit, x), rtol=0, atol=0)
    assert not torch.allclose(unit(x), unit.shortcut.match(x) + _branch(unit, x))
    spec = ResNetSpec(unit="preact")
    widen = Unit(spec, 16, 32, 2).eval()
    assert isinstance(widen.shortcut.match, PadShortcut) and not widen.shortcut.projects
    torch.testing.assert_close(widen(x), PadShortcut(16, 32, 2)(x) + _branch(widen, x), rtol=0, atol=0)


def test_constant_scaling_formula() -> None:
    unit, x = _unit(shortcut="scaling", shortcut_scale=0.5, branch_scale=0.25), torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(unit(x), 0.5 * x + 0.25 * _branch(unit, x))


@pytest.mark.parametrize("exclusive", [True, False])
def test_gating_formulas(exclusive: bool) -> None:
    kind = "exclusive_gating" if exclusive else "shortcut_gating"
    unit, x = _unit(shortcut=kind, gate_bias=-2.0), torch.randn(2, 16, 6, 6)
    assert torch.all(unit.shortcut.gate.bias == -2.0)
    with torch.no_grad():
        unit.shortcut.gate.weight.zero_()
        unit.shortcut.gate.bias.copy_(torch.linspace(-3, 3, 16))  # a known gate per channel
    g = torch.sigmoid(torch.linspace(-3, 3, 16)).view(1, 16, 1, 1)
    f = _branch(unit, x)
    expected = (1 - g) * x + (g * f if exclusive else f)
    torch.testing.assert_close(unit(x), expected)


def test_dropout_shortcut_scales_in_training_and_is_identity_in_eval() -> None:
    unit, x = _unit(shortcut="dropout", dropout=0.5), torch.randn(4, 16, 8, 8)
    f = _branch(unit, x)
    torch.testing.assert_close(unit(x), x + f)  # eval: identity shortcut
    unit.train()
    for m in unit.modules():  # keep BN in eval so F is the same function
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    torch.manual_seed(3)
    h = unit(x) - f
    kept = torch.isclose(h, 2 * x, atol=1e-5)
    dropped = torch.isclose(h, torch.zeros_like(h), atol=1e-5)
    assert torch.all(kept | dropped)  # each element either dropped or scaled by 1/(1-p)
    assert 0.45 < kept.float().mean().item() < 0.55


def test_option_a_is_subsampled_zero_padded_identity() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert torch.all(out[:, 16:] == 0)
    unit = create_model("resnet20").stages[1][0]
    assert isinstance(unit.shortcut.match, PadShortcut) and count_params(unit.shortcut) == 0


@pytest.mark.parametrize(("option", "projections"), [("A", 0), ("B", 3), ("C", 16)])
def test_resnet34_options(option: str, projections: int) -> None:
    model = create_model("resnet34", option=option)
    found = sum(1 for u in model.units() if count_params(u.shortcut) > 0)
    assert found == projections  # B: where dimensions change; C: every one of the 16 units


def _single_stage(unit: str) -> ResNet:
    spec = ResNetSpec(depth=12, units=(5,), widths=(8,), stem_width=8, unit=unit, zero_init_residual=True)
    return ResNet(spec).eval()


def test_zeroed_branches_preact_passes_signal_unchanged_original_clips_it() -> None:
    x = torch.randn(2, 8, 6, 6)  # negative entries included
    preact, original = _single_stage("preact"), _single_stage("original")
    out_pre = nn.Sequential(*preact.units())(x)
    out_orig = nn.Sequential(*original.units())(x)
    torch.testing.assert_close(out_pre, x, rtol=0, atol=0)
    torch.testing.assert_close(out_orig, x.clamp(min=0), rtol=0, atol=0)
    assert not torch.equal(out_orig, x)


def test_plain_net_has_no_shortcut() -> None:
    model = create_model("plain20")
    assert all(u.shortcut is None for u in model.units())
    unit, x = list(model.units())[1].eval(), torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(unit(x), unit.post(unit.branch(x)))


# ---- init -------------------------------------------------------------------------------------------
def test_msra_init_and_bn_init() -> None:
    torch.manual_seed(0)
    model = create_model("resnet56", shortcut="shortcut_gating", gate_bias=-6)
    conv = model.stages[2][3].branch.conv1
    expected = math.sqrt(2.0 / (3 * 3 * conv.out_channels))
    assert abs(conv.weight.std().item() - expected) / expected < 0.05
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert all(torch.all(u.shortcut.gate.bias == -6) for u in model.units())


def test_zero_init_residual_is_off_by_default() -> None:
    assert all(u.residual_layer().weight.abs().sum() > 0 for u in create_model("resnet20").units())
    assert all(u.residual_layer().weight.abs().sum() == 0
               for u in create_model("resnet20", zero_init_residual=True).units())


# ---- validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"depth": 21}, "depth"),
        ({"depth": 1001}, "depth"),  # 1001 is 9n+2, not 6n+2
        ({"unit": "postact"}, "unit"),
        ({"shortcut": "gate"}, "shortcut"),
        ({"gate_bias": -6}, "gate_bias"),
        ({"dropout": 0.5}, "dropout"),
        ({"shortcut": "dropout", "dropout": 1.5}, "dropout"),
        ({"shortcut_scale": 0.5}, "shortcut_scale"),
        ({"option": "D"}, "option"),
        ({"num_classes": 0}, "num_classes"),
        ({"widths": (16, 32)}, "widths"),
        ({"widht": 3}, "widht"),
        ({"residual": False, "shortcut": "scaling"}, "shortcut"),
        ({"widths": (16, 8, 8)}, "option"),  # option A cannot narrow
    ],
)
def test_invalid_specs_name_the_bad_field(overrides: dict, field: str) -> None:
    with pytest.raises(SpecError, match=rf"^{field}:"):
        get_spec("resnet20", **overrides)


def test_imagenet_depth_must_match_units() -> None:
    with pytest.raises(SpecError, match="^depth:"):
        get_spec("resnet50", depth=51)
    assert get_spec("resnet20", depth=110).units == (18, 18, 18)  # CIFAR depth re-derives units
    assert get_spec("preact_resnet164", depth=1001).units == (111, 111, 111)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match="resnet110"):
        create_model("resnet11O")


def test_spec_round_trips_through_plain_data() -> None:
    spec = get_spec("resnet110", shortcut="exclusive_gating", gate_bias=-6)
    assert ResNetSpec.from_dict(spec.to_dict()) == spec


# ---- activation recomputation ------------------------------------------------------------------------
@pytest.mark.parametrize("segment", [1, 4])
def test_recompute_gives_the_same_gradients_and_bn_statistics(segment: int) -> None:
    torch.manual_seed(0)
    plain = create_model("preact_resnet164", depth=29, num_classes=5)  # 3 bottleneck units per stage
    again = create_model("preact_resnet164", depth=29, num_classes=5, recompute=segment)
    again.load_state_dict(plain.state_dict())
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    for model in (plain, again):
        nn.functional.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, b), c in zip(plain.named_buffers(), again.buffers(), strict=True):
        torch.testing.assert_close(c, b, rtol=0, atol=0, msg=name)  # running stats updated once

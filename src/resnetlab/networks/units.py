"""Residual units: `y = h(x) + F(x)`, `x_next = f(y)` (v1 eq. 1-2, v2 eq. 1-2), with `F` the branch (two 3x3 convs or
a 1x1-3x3-1x1 bottleneck), `h` the shortcut (a row of `shortcuts.SHORTCUTS`; none in a plain net, v1 fig. 3 middle)
and `f` what follows the addition; the five activation placements of v2 table 2 / fig. 4 are one table, `PLACEMENTS`."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from resnetlab.networks.shortcuts import conv, make_shortcut
from resnetlab.networks.spec import ResNetSpec


def _conv_plan(spec: ResNetSpec, cin: int, width: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(in, out, kernel, stride) of each weight layer of the branch."""
    if spec.block == "basic":
        return [(cin, width, 3, stride), (width, width, 3, 1)]
    s1, s3 = (stride, 1) if spec.stride_on == "1x1" else (1, stride)
    return [(cin, width, 1, s1), (width, width, 3, s3), (width, width * spec.expansion, 1, 1)]


@dataclass(frozen=True)
class Placement:
    """Where BN and ReLU sit in one unit kind: ahead of every conv, behind each conv but the last, behind the
    last conv, behind the addition. Layers are named `bn{i}`/`relu{i}` after conv `i`, `bn`/`relu` after the
    addition (in `Unit.post`); the first conv's pre-activation is `Unit.preact`, the input `x_preact`."""

    before_conv: tuple[str, ...]
    after_inner_conv: tuple[str, ...]
    after_last_conv: tuple[str, ...]
    after_addition: tuple[str, ...]


BN_RELU, BN, RELU, NONE = ("bn", "relu"), ("bn",), ("relu",), ()
# v2 table 2 / fig. 4 (bottleneck units have three weight layers in the same pattern):
#                                  before_conv after_inner_conv after_last_conv after_addition  fig. 4
PLACEMENTS: dict[str, Placement] = {
    "original":        Placement(NONE,    BN_RELU, BN,      RELU),     # (a) conv-BN-ReLU-conv-BN, add, ReLU
    "bn_after_add":    Placement(NONE,    BN_RELU, NONE,    BN_RELU),  # (b) conv-BN-ReLU-conv, add, BN, ReLU
    "relu_before_add": Placement(NONE,    BN_RELU, BN_RELU, NONE),     # (c) conv-BN-ReLU-conv-BN-ReLU, add
    "relu_preact":     Placement(RELU,    BN,      BN,      NONE),     # (d) ReLU-conv-BN-ReLU-conv-BN, add
    "preact":          Placement(BN_RELU, NONE,    NONE,    NONE),     # (e) BN-ReLU-conv-BN-ReLU-conv, add
}  # fmt: skip


def layer(kind: str, channels: int, inplace: bool = True) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "bn" else nn.ReLU(inplace=inplace)


class Unit(nn.Module):
    """One residual unit: `x_next = post(h(x) + F(x_preact))`, `x_preact = preact(x)`, layers from
    `PLACEMENTS[spec.unit]`; `shortcut` holds `h` (its `match`) and the kind's merge (v2 table 1)."""

    def __init__(self, spec: ResNetSpec, cin: int, width: int, stride: int, first: bool = False) -> None:
        super().__init__()
        plan, place = _conv_plan(spec, cin, width, stride), PLACEMENTS[spec.unit]
        preact: OrderedDict[str, nn.Module] = OrderedDict()
        branch: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (ci, co, k, s) in enumerate(plan, start=1):
            for kind in place.before_conv:  # the first ReLU reads x, which h may still need: not in place
                (preact if i == 1 else branch)[f"{kind}{i}"] = layer(kind, ci, inplace=i > 1)
            branch[f"conv{i}"] = conv(ci, co, k, s)
            for kind in place.after_last_conv if i == len(plan) else place.after_inner_conv:
                branch[f"{kind}{i}"] = layer(kind, co)
        self.out_channels = cout = plan[-1][1]
        # The first unit of a pre-activation net takes its activation from the stem (v2 sec. 4.1).
        self.preact = nn.Sequential(preact) if preact and not first else nn.Identity()
        self.branch = nn.Sequential(branch)
        self.shortcut = (make_shortcut(spec.shortcut, spec.option, spec.shortcut_params, cin, cout, stride)
                         if spec.residual else None)
        self.post = nn.Sequential(OrderedDict((kind, layer(kind, cout)) for kind in place.after_addition))

    def forward(self, x: Tensor) -> Tensor:
        x_preact = self.preact(x)  # x itself in units (a)-(c) and in a pre-activation net's first unit
        f = self.branch(x_preact)
        if self.shortcut is None:  # plain net
            return self.post(f)
        # Which input h takes: the identity and option A's zero-pad take x itself, so that x_l reaches every
        # deeper unit unchanged (v2 eq. 4); a projection (options B, C; fig. 2e's 1x1 conv) is a weight layer
        # and takes x_preact as the branch's first conv does: the inputs of all weight layers are normalised
        # (v2 sec. 4.2), one BN-ReLU shared by both paths as in the v2 code. So does the gate (fig. 2c-d).
        shortcut = self.shortcut.match(x_preact if self.shortcut.projects else x)
        return self.post(self.shortcut(shortcut, f, x_preact))

    def residual_layer(self) -> nn.Module:
        """The branch's last BN if it ends with one (a, c, d), else its last conv (b, e)."""
        return [m for m in self.branch if isinstance(m, nn.BatchNorm2d | nn.Conv2d)][-1]

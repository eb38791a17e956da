"""Residual units: the five activation placements of v2 table 2 / fig. 4 as one table (`FIG4`).

A unit computes `y = h(x) + F(x)`, `x_next = f(y)` (v2 eq. 1-2). `F` is the branch (two 3x3 convs, or a
1x1-3x3-1x1 bottleneck); `h` is the shortcut, a row of `shortcuts.SHORTCUTS`; `f` is the post-addition step.
"""

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
    """Where BN and ReLU sit in one unit kind, relative to each weight layer and to the addition.

    before: ahead of every conv (pre-activation; the first conv's goes to `Unit.preact`, shared with a
    weighted shortcut); after: behind every conv but the last; last: behind the last conv; post: behind the
    addition. Layers are named `bn{i}`/`relu{i}` after conv `i` (`bn`/`relu` behind the addition).
    """

    before: tuple[str, ...]
    after: tuple[str, ...]
    last: tuple[str, ...]
    post: tuple[str, ...]


# v2 fig. 4 / table 2, (a)-(e)
FIG4: dict[str, Placement] = {
    "original": Placement(before=(), after=("bn", "relu"), last=("bn",), post=("relu",)),
    "bn_after_add": Placement(before=(), after=("bn", "relu"), last=(), post=("bn", "relu")),
    "relu_before_add": Placement(before=(), after=("bn", "relu"), last=("bn", "relu"), post=()),
    "relu_preact": Placement(before=("relu",), after=("bn",), last=("bn",), post=()),
    "preact": Placement(before=("bn", "relu"), after=(), last=(), post=()),
}


def _layer(kind: str, channels: int, inplace: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "bn" else nn.ReLU(inplace=inplace)


class Unit(nn.Module):
    """One residual unit: `x_next = post(h(x) + F(preact(x)))`, layer order from `FIG4[spec.unit]`.

    original (a):        conv-BN-ReLU-conv-BN, add, ReLU
    bn_after_add (b):    conv-BN-ReLU-conv, add, BN, ReLU
    relu_before_add (c): conv-BN-ReLU-conv-BN-ReLU, add
    relu_preact (d):     ReLU-conv-BN-ReLU-conv-BN, add
    preact (e):          BN-ReLU-conv-BN-ReLU-conv, add
    (bottleneck units have three weight layers in the same pattern). With `residual=False` there is no
    shortcut and no addition: the plain-net layer (v1 fig. 3 middle).
    """

    def __init__(self, spec: ResNetSpec, cin: int, width: int, stride: int, first: bool = False) -> None:
        super().__init__()
        plan = _conv_plan(spec, cin, width, stride)
        cout = plan[-1][1]
        place = FIG4[spec.unit]
        pre: OrderedDict[str, nn.Module] = OrderedDict()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (ci, co, k, s) in enumerate(plan, start=1):
            target = pre if i == 1 else layers
            for kind in place.before:  # the first ReLU reads x, which the shortcut still needs: not in place
                target[f"{kind}{i}"] = _layer(kind, ci, inplace=i > 1)
            layers[f"conv{i}"] = conv(ci, co, k, s)
            for kind in place.last if i == len(plan) else place.after:
                layers[f"{kind}{i}"] = _layer(kind, co, inplace=True)
        # The first unit of a pre-activation net takes its activation from the stem (v2 sec. 4.1).
        self.preact = nn.Identity() if first or not pre else nn.Sequential(pre)
        self.branch = nn.Sequential(layers)
        self.shortcut = (make_shortcut(spec.shortcut, spec.option, spec.shortcut_params, cin, cout, stride)
                         if spec.residual else None)
        self.post = nn.Sequential(OrderedDict((kind, _layer(kind, cout, inplace=True)) for kind in place.post))
        self.out_channels = cout

    def forward(self, x: Tensor) -> Tensor:
        a = self.preact(x)
        f = self.branch(a)
        y = f if self.shortcut is None else self.shortcut(x, a, f)
        return self.post(y)

    def residual_layer(self) -> nn.Module:
        """The branch's last BN if it ends with one (a, c, d), else its last conv (b, e)."""
        last = [m for m in self.branch if isinstance(m, nn.BatchNorm2d | nn.Conv2d)][-1]
        return last

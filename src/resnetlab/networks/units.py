"""Residual units: the five activation placements of v2 table 2 and the six shortcut kinds of v2 table 1.

A unit computes `y = h(x) + F(x)`, `x_next = f(y)` (v2 eq. 1-2). `F` is the branch (two 3x3 convs, or a
1x1-3x3-1x1 bottleneck); `h` is a shortcut module below; `f` is the unit's post-addition step.

In pre-activation units (v2 fig. 4 d, e) the branch starts with its activation; a shortcut piece with weights
(projection, 1x1 conv, gate) reads that pre-activated input, as in the v2 code, while parameter-free pieces
(identity, zero-padding, scaling, dropout) read the raw input so the identity path stays an identity.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.networks.spec import ResNetSpec


def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class PadShortcut(nn.Module):
    """Option A (v1 sec. 4.2): subsample by the stride and append zero channels; no parameters."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = cout - cin, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


class Projection(nn.Sequential):
    """Options B and C (v1 sec. 3.3): 1x1 conv (with the stride), then BN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(OrderedDict(conv=conv(cin, cout, 1, stride), bn=nn.BatchNorm2d(cout)))


class Shortcut(nn.Module):
    """Identity shortcut: `y = h(x) + F`, h = identity or the dimension-matching option (v1 eq. 1-2)."""

    def __init__(self, match: nn.Module) -> None:
        super().__init__()
        self.match = match
        self.weighted = any(True for _ in match.parameters())

    def h(self, x: Tensor, a: Tensor) -> Tensor:
        return self.match(a if self.weighted else x)

    def forward(self, x: Tensor, a: Tensor, f: Tensor) -> Tensor:
        return self.h(x, a) + f


class ScalingShortcut(Shortcut):
    """Constant scaling (v2 fig. 2b): `y = l_s * h(x) + l_f * F`."""

    def __init__(self, match: nn.Module, shortcut_scale: float, branch_scale: float) -> None:
        super().__init__(match)
        self.shortcut_scale, self.branch_scale = shortcut_scale, branch_scale

    def forward(self, x: Tensor, a: Tensor, f: Tensor) -> Tensor:
        return self.shortcut_scale * self.h(x, a) + self.branch_scale * f


class GatedShortcut(Shortcut):
    """Gating with `g = sigmoid(W_g x + b_g)`, a 1x1 conv gate (v2 fig. 2c, 2d).

    exclusive: `y = (1 - g) * h(x) + g * F`;  shortcut-only: `y = (1 - g) * h(x) + F`.
    """

    def __init__(self, match: nn.Module, cin: int, cout: int, stride: int, bias: float, exclusive: bool):
        super().__init__(match)
        self.gate = nn.Conv2d(cin, cout, 1, stride=stride, bias=True)
        self.gate_bias, self.exclusive = bias, exclusive
        nn.init.constant_(self.gate.bias, bias)  # b_g; `ResNet.reset_parameters` sets it again

    def forward(self, x: Tensor, a: Tensor, f: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(a))
        return (1 - g) * self.h(x, a) + (g * f if self.exclusive else f)


class DropoutShortcut(Shortcut):
    """Dropout on the shortcut (v2 fig. 2f): `y = dropout(h(x)) + F`.

    Convention: inverted dropout as in PyTorch and the v2 paper's Torch code; in training each element is
    kept with probability 1-p and multiplied by 1/(1-p); in eval the shortcut is the identity.
    """

    def __init__(self, match: nn.Module, rate: float) -> None:
        super().__init__(match)
        self.rate = rate

    def forward(self, x: Tensor, a: Tensor, f: Tensor) -> Tensor:
        return F.dropout(self.h(x, a), self.rate, self.training) + f


def make_shortcut(spec: ResNetSpec, cin: int, cout: int, stride: int) -> Shortcut:
    """The shortcut `h` of one unit from the spec's shortcut kind and dimension-increase option."""
    changes = cin != cout or stride != 1
    match: nn.Module
    if spec.shortcut == "conv1x1":
        match = conv(cin, cout, 1, stride)  # v2 fig. 2e: a bare 1x1 conv on every shortcut
    elif spec.option == "C" or (changes and spec.option == "B"):
        match = Projection(cin, cout, stride)
    elif changes:
        match = PadShortcut(cin, cout, stride)
    else:
        match = nn.Identity()
    if spec.shortcut == "scaling":
        return ScalingShortcut(match, *spec.scaling)
    if spec.shortcut in ("exclusive_gating", "shortcut_gating"):
        return GatedShortcut(match, cin, cout, stride, spec.gate_init, spec.shortcut == "exclusive_gating")
    if spec.shortcut == "dropout":
        return DropoutShortcut(match, spec.drop_rate)
    return Shortcut(match)


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
        self.shortcut = make_shortcut(spec, cin, cout, stride) if spec.residual else None
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

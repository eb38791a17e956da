"""The shortcut kinds of v2 table 1 / fig. 2 as one table, `SHORTCUTS`: a unit's shortcut is `match`, which computes
`h(x)` (identity, option A's zero-pad, a projection or a kind's own piece), and the kind's merge of `h(x)` with the
branch `F` (a `Shortcut` subclass). A new kind is one subclass and one row; everything else reads the row."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    """Identity shortcut: `y = h(x) + F` (v1 eq. 1), h = identity or the dimension-matching option (v1 sec. 3.3).

    Subclasses take `(match, cin, cout, stride, **parameters)`, the parameters named by their table row, and
    merge `h` (what `match` computed) with `F` in `forward(h, f, x_preact)`."""

    projects = False  # `match` is a projection, a weight layer: set by make_shortcut, read by Unit.forward

    def __init__(self, match: nn.Module, cin: int = 0, cout: int = 0, stride: int = 1) -> None:
        super().__init__()
        self.match = match

    def forward(self, h: Tensor, f: Tensor, x_preact: Tensor) -> Tensor:
        return h + f

    def reset_parameters(self) -> None:
        """The kind's own init, after the net's (He normal convs, BN 1/0); nothing for most kinds."""


class ScalingShortcut(Shortcut):
    """Constant scaling (v2 fig. 2b): `y = l_s * h(x) + l_f * F`."""

    def __init__(self, match: nn.Module, cin: int, cout: int, stride: int, *, shortcut_scale: float,
                 branch_scale: float) -> None:
        super().__init__(match)
        self.shortcut_scale, self.branch_scale = shortcut_scale, branch_scale

    def forward(self, h: Tensor, f: Tensor, x_preact: Tensor) -> Tensor:
        return self.shortcut_scale * h + self.branch_scale * f


class GatedShortcut(Shortcut):
    """Gating with `g = sigmoid(W_g x + b_g)`, a 1x1 conv gate (v2 fig. 2c, 2d); a weight layer, it reads x_preact.
    exclusive: `y = (1 - g) * h(x) + g * F`;  shortcut-only: `y = (1 - g) * h(x) + F`."""

    def __init__(self, match: nn.Module, cin: int, cout: int, stride: int, *, gate_bias: float,
                 exclusive: bool) -> None:
        super().__init__(match)
        self.gate = nn.Conv2d(cin, cout, 1, stride=stride, bias=True)
        self.gate_bias, self.exclusive = gate_bias, exclusive
        self.reset_parameters()

    def reset_parameters(self) -> None:
        assert self.gate.bias is not None
        nn.init.constant_(self.gate.bias, self.gate_bias)  # b_g; the gate's weight keeps the net's He init

    def forward(self, h: Tensor, f: Tensor, x_preact: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(x_preact))
        return (1 - g) * h + (g * f if self.exclusive else f)


class DropoutShortcut(Shortcut):
    """Dropout on the shortcut (v2 fig. 2f): `y = dropout(h(x)) + F`, inverted as in PyTorch and the v2 paper's
    Torch code (in training kept with probability 1-p and scaled by 1/(1-p); in eval the identity)."""

    def __init__(self, match: nn.Module, cin: int, cout: int, stride: int, *, dropout: float) -> None:
        super().__init__(match)
        self.rate = dropout

    def forward(self, h: Tensor, f: Tensor, x_preact: Tensor) -> Tensor:
        return F.dropout(h, self.rate, self.training) + f


@dataclass(frozen=True)
class Param:
    """One spec field a kind reads: its default when the spec leaves it None, and the values it accepts."""

    field: str
    default: float
    accepts: Callable[[float], bool] = math.isfinite
    expected: str = "a finite number"

    def resolve(self, value: object) -> float:
        value = self.default if value is None else value
        if isinstance(value, bool) or not isinstance(value, int | float) or not self.accepts(float(value)):
            raise ValueError(f"{self.field}: expected {self.expected}, got {value!r}")
        return float(value)


@dataclass(frozen=True)
class ShortcutKind:
    """A row: the module that combines h(x) and F, the spec fields it reads, how `describe` shows it, and
    (`match`) a kind's own projection in place of options A/B/C, built as match(cin, cout, stride)."""

    build: Callable[..., Shortcut]
    params: tuple[Param, ...] = ()
    text: str = "{base}"
    match: Callable[[int, int, int], nn.Module] | None = None


# v2 table 1 / fig. 2 (a)-(f)
SHORTCUTS: dict[str, ShortcutKind] = {
    "identity": ShortcutKind(Shortcut),
    "scaling": ShortcutKind(ScalingShortcut, (Param("shortcut_scale", 1.0), Param("branch_scale", 1.0)),
                            "{base} x{shortcut_scale}, F x{branch_scale}"),
    "exclusive_gating": ShortcutKind(partial(GatedShortcut, exclusive=True), (Param("gate_bias", 0.0),),
                                     "{base}, exclusive gate b_g={gate_bias}"),
    "shortcut_gating": ShortcutKind(partial(GatedShortcut, exclusive=False), (Param("gate_bias", 0.0),),
                                    "{base}, shortcut-only gate b_g={gate_bias}"),
    "conv1x1": ShortcutKind(Shortcut, match=partial(conv, k=1)),  # fig. 2e: a bare 1x1 conv on every shortcut
    "dropout": ShortcutKind(DropoutShortcut, (Param("dropout", 0.5, lambda p: 0 <= p < 1, "a rate in [0, 1)"),),
                            "{base}, dropout {dropout}"),
}


def make_shortcut(kind: str, option: str, params: dict[str, float], cin: int, cout: int, stride: int) -> Shortcut:
    """The shortcut `h` of one unit: the kind's row with the dimension-increase option (v1 sec. 3.3): A
    zero-pads where dimensions change, B projects where they change, C projects everywhere."""
    row = SHORTCUTS[kind]
    changes = cin != cout or stride != 1
    projects = row.match is not None or option == "C" or (changes and option == "B")
    match: nn.Module
    if row.match is not None:
        match = row.match(cin, cout, stride=stride)
    elif projects:
        match = Projection(cin, cout, stride)
    else:
        match = PadShortcut(cin, cout, stride) if changes else nn.Identity()
    shortcut = row.build(match, cin, cout, stride, **params)
    shortcut.projects = projects
    return shortcut

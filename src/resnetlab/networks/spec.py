"""A frozen description of one residual (or plain) network, so that every variant of both papers is data: v1 (He et
al., CVPR 2016) sec. 3-4 and v2 (He et al., ECCV 2016) sec. 3-4, built by `net.ResNet`, named in `registry`."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from resnetlab.errors import SpecError
from resnetlab.networks.shortcuts import SHORTCUTS as SHORTCUT_KINDS

UNITS = ("original", "bn_after_add", "relu_before_add", "relu_preact", "preact")  # v2 table 2 / fig. 4 (a)-(e)
# the choices of the fields that take one (described beside the fields); the shortcut kinds are their table's rows
_CHOICES = {"stem": ("cifar", "imagenet"), "block": ("basic", "bottleneck"), "unit": UNITS, "shortcut": SHORTCUT_KINDS,
            "option": ("A", "B", "C"), "stride_on": ("1x1", "3x3")}
MAX_DEPTH = 10_000  # layers; the papers' deepest is 1,202
MAX_WIDTH = 16_384  # channels of a stage's base width; the papers' widest is 512 (2,048 after expansion)


@dataclass(frozen=True)
class ResNetSpec:
    """Everything that defines a network. Defaults are the v1 CIFAR ResNet-20 with option A.

    `units`, `widths`, `strides`, `stem_width` and the parameters of the shortcut kind in use take None for the
    paper's default; `__post_init__` fills them, so a spec that exists holds them resolved."""

    depth: int = 20
    stem: str = "cifar"  # "cifar": 3x3/16 conv; "imagenet": 7x7/64 stride 2 + 3x3/2 max pool
    block: str = "basic"  # "basic": two 3x3 convs; "bottleneck": 1x1, 3x3, 1x1 with expansion 4
    units: tuple[int, ...] | None = None  # units per stage; None = derived from depth (CIFAR stems only)
    widths: tuple[int, ...] | None = None  # base width per stage; None = 16/32/64 (CIFAR), 64..512 (ImageNet)
    strides: tuple[int, ...] | None = None  # first-unit stride per stage; None = 1, 2, 2, ...
    stem_width: int | None = None  # None = 16 (CIFAR) or 64 (ImageNet)
    unit: str = "original"  # activation placement, v2 table 2
    shortcut: str = "identity"  # shortcut kind, v2 table 1
    option: str = "A"  # dimension increase: A zero-pad, B project where shapes change, C project everywhere
    residual: bool = True  # False = plain net (v1 fig. 3 middle): no shortcuts at all
    shortcut_scale: float | None = None  # constant scaling: factor on the shortcut (lambda_s)
    branch_scale: float | None = None  # constant scaling: factor on F (lambda_f)
    gate_bias: float | None = None  # gating: initial bias b_g of the 1x1-conv gate
    dropout: float | None = None  # dropout shortcut: drop rate on the shortcut
    stride_on: str = "1x1"  # bottleneck stride placement; "3x3" departs from the paper (torchvision "v1.5")
    expansion: int = 4  # bottleneck output width = expansion x base width
    num_classes: int = 10
    in_channels: int = 3
    zero_init_residual: bool = False  # zero each branch's last BN (or last conv): departs from the paper
    recompute: int = 0  # activation recomputation: units per checkpointed segment (0 = off, 1 = every unit)
    name: str = field(default="", compare=False)  # registry name, for display only

    def __post_init__(self) -> None:
        for fname, choices in _CHOICES.items():
            _check_choice(fname, getattr(self, fname), tuple(choices))
        for fname, least in (("depth", 3), ("num_classes", 1), ("in_channels", 1), ("expansion", 1), ("recompute", 0)):
            _check_int(fname, getattr(self, fname), least)
        for fname in ("residual", "zero_init_residual"):
            if not isinstance(getattr(self, fname), bool):
                raise SpecError(f"{fname}: expected true or false, got {getattr(self, fname)!r}")
        per_unit = 2 if self.block == "basic" else 3  # weight layers per unit
        if self.units is None:
            if self.stem != "cifar":
                raise SpecError("units: required for stem 'imagenet' (units per stage, e.g. (3, 4, 6, 3))")
            n, rem = divmod(self.depth - 2, 3 * per_unit)
            if rem or n < 1:
                rule = "6n+2" if self.block == "basic" else "9n+2"
                raise SpecError(f"depth: {self.depth} is not {rule} as a CIFAR {self.block} net needs")
            self._set("units", (n, n, n))
        else:
            if not isinstance(self.units, list | tuple):
                raise SpecError(f"units: expected a list of positive integers per stage, got {self.units!r}")
            units = tuple(self.units)
            if not units or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 1 for u in units):
                raise SpecError(f"units: expected positive integers per stage, got {self.units!r}")
            self._set("units", units)
            expected = sum(units) * per_unit + 2
            if self.depth != expected:
                raise SpecError(f"depth: {self.depth} does not match units {units} of {self.block} blocks "
                                f"({per_unit} layers each + 2 gives {expected})")
        stages = len(self.units)
        base = 16 if self.stem == "cifar" else 64  # the stem's width, doubled at each stage: 16/32/64, 64..512
        widths = self.widths if self.widths is not None else tuple(base * 2**s for s in range(stages))
        strides = self.strides if self.strides is not None else (1,) + (2,) * (stages - 1)
        for fname, value in (("widths", widths), ("strides", strides)):
            if not isinstance(value, list | tuple):
                raise SpecError(f"{fname}: expected a list of {stages} positive integers, got {value!r}")
            value = tuple(value)
            if len(value) != stages or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                               for v in value):
                raise SpecError(f"{fname}: expected {stages} positive integers (one per stage), got {value!r}")
            self._set(fname, value)
        if self.stem_width is None:
            self._set("stem_width", base)
        _check_int("stem_width", self.stem_width, 1)
        self._check_size()
        self._check_shortcut_fields()
        if self.residual and self.option == "A" and SHORTCUT_KINDS[self.shortcut].match is None:
            chans = (self.stem_width, *self.out_widths)
            if any(b < a for a, b in zip(chans, chans[1:], strict=False)):
                raise SpecError(f"option: 'A' pads channels with zeros and cannot narrow {chans} (use 'B')")

    def _check_size(self) -> None:
        """Bounds on what would allocate: a net of absurd depth or width was built until the process was killed.
        The bounds are far beyond both papers (1,202 layers, 2,048 channels) and below what fits in memory."""
        for fname, value, limit in (("depth", self.depth, MAX_DEPTH), ("num_classes", self.num_classes, 1_000_000),
                                    ("in_channels", self.in_channels, 1024), ("expansion", self.expansion, 64),
                                    ("stem_width", self.stem_width, MAX_WIDTH)):
            if value > limit:
                raise SpecError(f"{fname}: {value} is beyond the largest resnetlab builds ({limit})")
        if max(self.widths) > MAX_WIDTH:
            raise SpecError(f"widths: {self.widths} go beyond the largest resnetlab builds ({MAX_WIDTH} per stage)")
        if max(self.strides) > 64:
            raise SpecError(f"strides: {self.strides} go beyond 64")

    def _check_shortcut_fields(self) -> None:
        """Another kind's parameter set is refused; the kind's own (its row's) take their defaults and are checked."""
        if not self.residual and self.shortcut != "identity":
            raise SpecError(f"shortcut: a plain net (residual=false) has no shortcut, got {self.shortcut!r}")
        for fname in dict.fromkeys(param.field for kind in SHORTCUT_KINDS.values() for param in kind.params):
            users = [name for name, kind in SHORTCUT_KINDS.items() if fname in (p.field for p in kind.params)]
            if getattr(self, fname) is not None and self.shortcut not in users:
                kinds = " or ".join(repr(kind) for kind in users)
                raise SpecError(f"{fname}: only used by shortcut {kinds}, not {self.shortcut!r}")
        for param in SHORTCUT_KINDS[self.shortcut].params:
            try:
                self._set(param.field, param.resolve(getattr(self, param.field)))
            except ValueError as exc:
                raise SpecError(str(exc)) from None

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def shortcut_params(self) -> dict[str, float]:
        """The parameters of this spec's shortcut kind (its row's fields, resolved), e.g. {"gate_bias": -6.0}."""
        return {param.field: getattr(self, param.field) for param in SHORTCUT_KINDS[self.shortcut].params}

    @property
    def out_widths(self) -> tuple[int, ...]:
        """Output channels of each stage (base width x expansion for bottlenecks)."""
        mult = self.expansion if self.block == "bottleneck" else 1
        return tuple(w * mult for w in self.widths)

    @property
    def input_size(self) -> int:
        """The papers' input resolution for this stem (32 for CIFAR, 224 for ImageNet)."""
        return 32 if self.stem == "cifar" else 224

    def replace(self, **overrides: Any) -> ResNetSpec:
        """A new spec with fields overridden; a new depth on a CIFAR net re-derives its units."""
        known = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise SpecError(f"{key}: not a spec field{hint}")
        if "depth" in overrides and "units" not in overrides and self.stem == "cifar":
            overrides["units"] = None
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings) for configs and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNetSpec:
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            raise SpecError(f"spec: expected an object of spec fields, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise SpecError(f"{unknown[0]}: not a spec field")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"{name}: {value!r} is not one of {', '.join(choices)}{hint}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{name}: expected an integer >= {minimum}, got {value!r}")

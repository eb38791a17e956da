"""The model zoo: the papers' names mapped to specs, each citing the table it comes from; any spec field can be
overridden, so every v2 ablation is reachable, e.g. `create_model("resnet110", shortcut="scaling")`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from resnetlab.errors import ResnetlabError
from resnetlab.networks.net import ResNet
from resnetlab.networks.spec import ResNetSpec


class UnknownModelError(ResnetlabError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    spec: ResNetSpec
    source: str  # the paper table the model comes from


_IMAGENET_UNITS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

_REGISTRY: dict[str, Entry] = {}


def _add(name: str, source: str, **fields: Any) -> None:
    _REGISTRY[name] = Entry(ResNetSpec(name=name, **fields), source)


def _build_registry() -> None:
    for depth in (20, 32, 44, 56, 110, 1202):
        _add(f"resnet{depth}", "v1 table 6 (CIFAR-10, option A)", depth=depth)
    for depth in (20, 32, 44, 56, 110):
        _add(f"plain{depth}", "v1 fig. 6 (CIFAR-10 plain net)", depth=depth, residual=False)
        _add(f"preact_resnet{depth}", "v2 table 3 (CIFAR-10, full pre-activation, option A)",
             depth=depth, unit="preact")
    for depth in (164, 1001):
        _add(f"resnet{depth}", "v2 table 3 (CIFAR-10, original bottleneck units)",
             depth=depth, block="bottleneck", option="B")
        _add(f"preact_resnet{depth}", "v2 tables 3-4 (CIFAR-10, full pre-activation bottleneck)",
             depth=depth, block="bottleneck", option="B", unit="preact")
    for depth, (block, units) in _IMAGENET_UNITS.items():
        common = dict(depth=depth, block=block, units=units, stem="imagenet", option="B", num_classes=1000)
        source = "v2 table 5 (ImageNet)" if depth == 200 else "v1 tables 1, 3, 4 (ImageNet, option B)"
        _add(f"resnet{depth}", source, **common)
        _add(f"preact_resnet{depth}", "v2 table 5 (ImageNet, full pre-activation)", **common, unit="preact")
        if depth in (18, 34):
            _add(f"plain{depth}", "v1 table 2 (ImageNet plain net)",
                 **{**common, "option": "A"}, residual=False)


_build_registry()


def list_models(pattern: str = "") -> list[str]:
    """Registry names containing `pattern`, CIFAR nets first, each group by depth."""
    names = [n for n in _REGISTRY if pattern in n]
    return sorted(names, key=lambda n: (_REGISTRY[n].spec.stem != "cifar", _REGISTRY[n].spec.depth, n))


def get_entry(name: str) -> Entry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `resnetlab models` lists them"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def get_spec(name: str, **overrides: Any) -> ResNetSpec:
    """The registry spec of `name` with fields overridden (validated)."""
    spec = get_entry(name).spec
    return spec.replace(**overrides) if overrides else spec


def create_model(name: str, **overrides: Any) -> ResNet:
    """Build a registry model, e.g. `create_model("resnet110", shortcut="scaling", shortcut_scale=0.5)`."""
    return ResNet(get_spec(name, **overrides))

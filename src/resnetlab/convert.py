"""Load a torchvision-style ResNet state_dict (a user's file) into the matching resnetlab model.

torchvision's bottleneck puts the stride on the 3x3 conv ("v1.5"), a departure from v1's first-1x1 stride,
so bottleneck models must be built with `stride_on="3x3"` to compute what the weights were trained for.
Key layout: conv1/bn1 (stem), layer{1-4}.{i}.conv{j}/bn{j}, layer{k}.{i}.downsample.{0,1}, fc.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from .errors import CheckpointError
from .net import ResNet

_TO_OURS = [
    (re.compile(r"^conv1\.(.+)$"), r"stem.conv.\1"),
    (re.compile(r"^bn1\.(.+)$"), r"stem.bn.\1"),
    (re.compile(r"^fc\.(.+)$"), r"head.fc.\1"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.0\.(.+)$"), r"stages.{s}.\2.shortcut.match.conv.\3"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.1\.(.+)$"), r"stages.{s}.\2.shortcut.match.bn.\3"),
    (re.compile(r"^layer(\d)\.(\d+)\.((?:conv|bn)\d)\.(.+)$"), r"stages.{s}.\2.branch.\3.\4"),
]
_TO_TV = [
    (re.compile(r"^stem\.conv\.(.+)$"), r"conv1.\1"),
    (re.compile(r"^stem\.bn\.(.+)$"), r"bn1.\1"),
    (re.compile(r"^head\.fc\.(.+)$"), r"fc.\1"),
    (re.compile(r"^stages\.(\d)\.(\d+)\.shortcut\.match\.conv\.(.+)$"), r"layer{s}.\2.downsample.0.\3"),
    (re.compile(r"^stages\.(\d)\.(\d+)\.shortcut\.match\.bn\.(.+)$"), r"layer{s}.\2.downsample.1.\3"),
    (re.compile(r"^stages\.(\d)\.(\d+)\.branch\.((?:conv|bn)\d)\.(.+)$"), r"layer{s}.\2.\3.\4"),
]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]], stage_shift: int) -> str | None:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            stage = str(int(m.group(1)) + stage_shift) if "{s}" in template else ""
            return m.expand(template.replace("{s}", stage))
    return None


def check_compatible(model: ResNet) -> None:
    spec = model.spec
    problems = []
    if spec.stem != "imagenet" or spec.unit != "original" or spec.shortcut != "identity" or not spec.residual:
        problems.append("an ImageNet ResNet with original units and identity shortcuts")
    if spec.option != "B":
        problems.append("option B")
    if spec.block == "bottleneck" and spec.stride_on != "3x3":
        problems.append('stride_on="3x3" (torchvision\'s "v1.5" stride placement)')
    if problems:
        raise CheckpointError(f"torchvision ResNet weights need {' and '.join(problems)} (model {spec.name!r})")


def to_torchvision(model: ResNet) -> dict[str, Tensor]:
    """The model's state_dict under torchvision's key names."""
    check_compatible(model)
    out = {}
    for key, value in model.state_dict().items():
        new = _rename(key, _TO_TV, +1)
        if new is None:
            raise CheckpointError(f"{key}: no torchvision name for this parameter")
        out[new] = value
    return out


def load_torchvision(model: ResNet, source: Mapping[str, Tensor] | str | Path) -> ResNet:
    """Copy a torchvision-style state_dict (a mapping, or a file loaded without running code) into `model`."""
    check_compatible(model)
    if not isinstance(source, Mapping):
        path = Path(source)
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such file") from None
        except Exception as exc:  # unpickling refused or a corrupt file
            raise CheckpointError(f"{path}: not a loadable state_dict ({type(exc).__name__})") from None
        if isinstance(source, Mapping) and "state_dict" in source:
            source = source["state_dict"]
        if not isinstance(source, Mapping):
            raise CheckpointError(f"{path}: expected a state_dict mapping names to tensors")
    ours = model.state_dict()
    renamed = {}
    for key, value in source.items():
        new = _rename(key.removeprefix("module."), _TO_OURS, -1)
        if new is None or new not in ours:
            raise CheckpointError(f"{key}: not a key of a torchvision {model.spec.name or 'ResNet'} state_dict")
        if tuple(value.shape) != tuple(ours[new].shape):
            raise CheckpointError(
                f"{key}: shape {tuple(value.shape)} does not fit {model.spec.name or 'the model'} "
                f"(expects {tuple(ours[new].shape)})"
            )
        renamed[new] = value
    missing = sorted(set(ours) - set(renamed))
    if missing:
        raise CheckpointError(f"state_dict lacks {len(missing)} tensors of the model, e.g. {missing[0]}")
    model.load_state_dict(renamed)
    return model

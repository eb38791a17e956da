"""Weights written by other code, loaded into the matching resnetlab model: torchvision's ImageNet ResNets (their
bottleneck strides the 3x3 conv, "v1.5": built with `stride_on="3x3"`) and pytorch_resnet_cifar10's option-A CIFAR
ResNets, whose channels are relabelled (`cifar_peer_orders`). Both were trained on ImageNet-normalised pixels."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from resnetlab.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from resnetlab.errors import CheckpointError
from resnetlab.files.reading import read_file, safe_reason, torch_load
from resnetlab.networks.net import ResNet
from resnetlab.networks.spec import ResNetSpec
from resnetlab.weights.checkpoint import load_state

TORCHVISION = "torchvision"
CIFAR_PEER = "pytorch_resnet_cifar10"

# torchvision's names and ours, one row a layer (the parameter's own name follows): {s} is the stage (torchvision's
# layer1..4, our stages.0..3), {i} the unit in it, {layer} a conv or BN of the unit's branch
_NAMES = [("conv1", "stem.conv"), ("bn1", "stem.bn"), ("fc", "head.fc"),
          ("layer{s}.{i}.downsample.0", "stages.{s}.{i}.shortcut.match.conv"),
          ("layer{s}.{i}.downsample.1", "stages.{s}.{i}.shortcut.match.bn"),
          ("layer{s}.{i}.{layer}", "stages.{s}.{i}.branch.{layer}")]
_PARTS = {"s": r"(?P<s>\d)", "i": r"(?P<i>\d+)", "layer": r"(?P<layer>(?:conv|bn)\d)"}
_PEER_UNIT = re.compile(r"^layer([1-3])\.(\d+)\.(conv[12]|bn[12])\.(.+)$")


def imagenet_norm() -> dict[str, Tensor]:
    """The input normalisation both formats were trained with: pixels in [0, 1], ImageNet's channel statistics."""
    return {"mean": torch.tensor(IMAGENET_MEAN).view(3, 1, 1), "std": torch.tensor(IMAGENET_STD).view(3, 1, 1)}


def load_state_bytes(raw: bytes, path: Path) -> Any:
    """The object in the contents `raw` of a `torch.save` file, loaded without running code."""
    try:
        return torch_load(io.BytesIO(raw))
    except Exception as exc:  # unpickling refused, a truncated or corrupt file, not a torch file at all
        raise CheckpointError(f"{path}: not a loadable weights file ({safe_reason(exc)})") from None


def state_dict_of(obj: Any, where: str) -> dict[str, Tensor]:
    """The tensors of a state_dict, or of the "state_dict" entry of a checkpoint dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a state_dict mapping names to tensors, got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{where}: {key!r} holds a {type(value).__name__}, not a tensor: not a state_dict")
    return dict(obj)


def _as_state_dict(source: Mapping[str, Tensor] | str | Path) -> dict[str, Tensor]:
    """The tensors of a state_dict given as a mapping, or as a `torch.save` file (loaded without running code)."""
    if isinstance(source, Mapping):
        return state_dict_of(source, "state_dict")
    return state_dict_of(load_state_bytes(read_file(Path(source), "weights file"), Path(source)), str(source))


def _rename(key: str, to_ours: bool) -> str | None:
    """`key` under the other naming (torchvision's to ours, or ours to torchvision's); None where it has none."""
    for tv, ours in _NAMES:
        source, target = (tv, ours) if to_ours else (ours, tv)
        m = re.match(source.replace(".", r"\.").format(**_PARTS) + r"\.(?P<leaf>.+)$", key)
        if m:
            parts = m.groupdict()
            if "s" in parts:
                parts["s"] = str(int(parts["s"]) + (-1 if to_ours else 1))
            return f"{target.format(**parts)}.{parts['leaf']}"
    return None


def _load_renamed(model: ResNet, state: dict[str, Tensor], fmt: str,
                  target: Callable[[str], tuple[str | None, int, Tensor | None]], optional: str = "") -> ResNet:
    """Copy a state_dict of format `fmt` into `model`: `target(key)` (the key without "module.") is our name of the
    tensor (None: it has none) and the dimension and order its channels are permuted by (None: as they are)."""
    ours, renamed = model.state_dict(), {}
    for key, value in state.items():
        new, dim, order = target(key.removeprefix("module."))
        if new is None or new not in ours:
            raise CheckpointError(f"{key}: not a key of a {fmt} {model.spec.name or 'ResNet'} state_dict")
        if tuple(value.shape) != tuple(ours[new].shape):
            raise CheckpointError(f"{key}: shape {tuple(value.shape)} does not fit {model.spec.name or 'the model'} "
                                  f"(expects {tuple(ours[new].shape)})")
        renamed[new] = value.index_select(dim, order) if order is not None and value.dim() > 0 else value
    missing = sorted(k for k in set(ours) - set(renamed) if not (optional and k.endswith(optional)))
    if missing:
        raise CheckpointError(f"state_dict lacks {len(missing)} tensors of the model, e.g. {missing[0]}")
    load_state(model, {**ours, **renamed})  # absent optional buffers keep the model's values
    return model


# ---- torchvision ----------------------------------------------------------------------------------------
def is_torchvision(state: Mapping[str, Tensor]) -> bool:
    return any(k.removeprefix("module.") == "fc.weight" for k in state)


def check_compatible(model: ResNet) -> None:
    spec = model.spec
    needs = {"an ImageNet ResNet with original units and identity shortcuts":
             spec.stem != "imagenet" or spec.unit != "original" or spec.shortcut != "identity" or not spec.residual,
             "option B": spec.option != "B",
             'stride_on="3x3" (torchvision\'s "v1.5" stride placement)':
             spec.block == "bottleneck" and spec.stride_on != "3x3"}
    problems = [need for need, unmet in needs.items() if unmet]
    if problems:
        raise CheckpointError(f"torchvision ResNet weights need {' and '.join(problems)} (model {spec.name!r})")


def to_torchvision(model: ResNet) -> dict[str, Tensor]:
    """The model's state_dict under torchvision's key names."""
    check_compatible(model)
    out = {}
    for key, value in model.state_dict().items():
        new = _rename(key, to_ours=False)
        if new is None:
            raise CheckpointError(f"{key}: no torchvision name for this parameter")
        out[new] = value
    return out


def load_torchvision(model: ResNet, source: Mapping[str, Tensor] | str | Path) -> ResNet:
    """Copy a torchvision-style state_dict (a mapping, or a file loaded without running code) into `model`."""
    check_compatible(model)
    return _load_renamed(model, _as_state_dict(source), TORCHVISION, lambda key: (_rename(key, to_ours=True), 0, None))


# ---- pytorch_resnet_cifar10 -------------------------------------------------------------------------------
def is_cifar_peer(state: Mapping[str, Tensor]) -> bool:
    keys = {k.removeprefix("module.") for k in state}
    return "linear.weight" in keys and "conv1.weight" in keys


def claimed_error(obj: Any) -> float | None:
    """1 - best_prec1 / 100: the top-1 error the file's own training reported on CIFAR-10's test set."""
    prec = obj.get("best_prec1") if isinstance(obj, dict) else None
    if isinstance(prec, Tensor) and prec.numel() == 1:
        prec = prec.item()
    if isinstance(prec, int | float) and not isinstance(prec, bool) and 0 <= prec <= 100:
        return 1 - float(prec) / 100
    return None


def cifar_peer_spec(state: Mapping[str, Tensor]) -> ResNetSpec:
    """The net a pytorch_resnet_cifar10 state_dict holds: units per stage from its keys, classes from `linear`."""
    stages: list[set[int]] = [set(), set(), set()]
    for key in state:
        m = _PEER_UNIT.match(key.removeprefix("module."))
        if m:
            stages[int(m.group(1)) - 1].add(int(m.group(2)))
    counts = [len(s) for s in stages]
    if not is_cifar_peer(state) or counts[0] < 1 or any(s != set(range(counts[0])) for s in stages):
        raise CheckpointError(f"not a {CIFAR_PEER} state_dict: units per stage {counts}, expected n, n, n with "
                              "conv1, bn1, layer1-3 and linear")
    linear = next(v for k, v in state.items() if k.removeprefix("module.") == "linear.weight")
    depth = 6 * counts[0] + 2
    return ResNetSpec(depth=depth, num_classes=int(linear.shape[0]), name=f"resnet{depth}")


def check_cifar_peer(model: ResNet, held: ResNetSpec) -> None:
    """`model` must be the option-A CIFAR ResNet the file holds (recomputation and init settings aside)."""
    spec = model.spec.replace(recompute=0, zero_init_residual=False)
    if spec != ResNetSpec(depth=spec.depth, num_classes=spec.num_classes, in_channels=spec.in_channels):
        raise CheckpointError(f"{CIFAR_PEER} weights need an option-A CIFAR ResNet with original units "
                              f"(resnet20..resnet1202), not {spec.name or 'this spec'}")
    if spec.depth != held.depth:
        raise CheckpointError(f"holds a {CIFAR_PEER} {held.name} ({held.depth // 6} units per stage), "
                              f"not {spec.name or f'depth {spec.depth}'}")


def cifar_peer_orders(spec: ResNetSpec) -> list[Tensor]:
    """Per point of the residual stream (after the stem, after each stage), the peer's index of our channels.

    Where a stage widens from c to w = 2c, the peer's option A shortcut is [w/4 zeros, the c old channels, w/4
    zeros], ours (as the original Torch code) [the c old channels, w - c zeros]: both are the paper's option A, one
    a relabelling of the other's channels. Our old channel k is the peer's w/4 + order[k], our new channels its
    front pad then its back pad: `ours = peer.index_select(dim, order)`."""
    order, cin, orders = torch.arange(spec.stem_width), spec.stem_width, []
    orders.append(order)
    for width in spec.widths:
        if width != cin:
            front = width // 4
            order = torch.cat([front + order, torch.arange(front), torch.arange(front + cin, width)])
        orders.append(order)
        cin = width
    return orders


def _peer_target(key: str, orders: list[Tensor]) -> tuple[str | None, int, Tensor | None]:
    """Our key for a peer key, and the dimension and order of the residual-stream channels it holds."""
    layer, _, leaf = key.partition(".")
    if layer == "conv1":
        return f"stem.conv.{leaf}", 0, orders[0]  # writes the stream
    if layer == "bn1":
        return f"stem.bn.{leaf}", 0, orders[0]
    if layer == "linear":
        return f"head.fc.{leaf}", 1, orders[-1] if leaf == "weight" else None  # reads the stream
    m = _PEER_UNIT.match(key)
    if m is None:
        return None, 0, None
    stage, i, name, leaf = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    target = f"stages.{stage - 1}.{i}.branch.{name}.{leaf}"
    if name == "conv1":  # reads the stream: the stage's input for the first unit, else the stage's width
        return target, 1, orders[stage - 1] if i == 0 else orders[stage]
    if name == "bn1":  # inside the branch: no stream channels
        return target, 0, None
    return target, 0, orders[stage]  # conv2 and bn2 write the stream


def load_pytorch_resnet_cifar10(model: ResNet, source: Mapping[str, Tensor] | str | Path) -> ResNet:
    """Copy a pytorch_resnet_cifar10 state_dict (a mapping, or a file loaded without running code) into
    `model`, an option-A CIFAR ResNet of the same depth, so that it computes the same logits: the tensors that
    write the residual stream have their output channels permuted, those that read it their input channels
    (`cifar_peer_orders`); element-wise steps (addition, ReLU, pooling) commute with the permutation."""
    state = _as_state_dict(source)
    check_cifar_peer(model, cifar_peer_spec(state))
    orders = cifar_peer_orders(model.spec)
    return _load_renamed(model, state, CIFAR_PEER, lambda key: _peer_target(key, orders),
                         optional="num_batches_tracked")  # the peer's files have none

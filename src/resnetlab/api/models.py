"""Nets from Python: the registry's (`create_model`, with any weights `eval` reads), or a `Trained` net loaded with
what using it needs (`load`): class names, image size and a `preprocess`, as torchvision's weights carry their
`transforms()`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnetlab.errors import CheckpointError
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import create_model as registry_model
from resnetlab.networks.registry import get_spec
from resnetlab.weights.formats import model_for
from resnetlab.weights.pretrained import Trained, load_pretrained
from resnetlab.weights.resolve import resolve

__all__ = ["Trained", "create_model", "load"]


def create_model(name: str, weights: str | Path | None = None, **overrides: Any) -> ResNet:
    """The registry net `name` (`list_models()`), with spec fields changed by `overrides` (`depth=56`,
    `shortcut="conv1x1"`, ...). With `weights` (anything `resnetlab eval` reads: a run directory, a checkpoint,
    an exported `.safetensors`, torchvision's or the CIFAR reference's files) the net holds those weights; it
    must then be the net `name` with `overrides` builds, or a one-line CheckpointError says how it differs."""
    if weights is None:
        return registry_model(name, **overrides)
    found = resolve(weights)
    net = model_for(found, None if found.spec is not None else name).eval()  # a file that names its net: that net
    wanted = get_spec(name, **overrides).replace(num_classes=net.spec.num_classes, in_channels=net.spec.in_channels)
    held = net.spec.to_dict()
    differ = [k for k, v in wanted.to_dict().items() if k not in ("name", "recompute") and held.get(k) != v]
    if differ:
        asked = " ".join([name, *(f"{k}={v}" for k, v in overrides.items())])
        raise CheckpointError(f"{found.path}: holds a net with {differ[0]}={held.get(differ[0])!r}, not "
                              f"{getattr(wanted, differ[0])!r} as {asked} has")
    return net


def load(path: str | Path, best: bool = False, model: str | None = None, device: str | None = None) -> Trained:
    """A trained net from a run directory (its newest good checkpoint, or `best.pt` with `best`), a
    checkpoint or a weights file: the one net every command means by that path (`resnetlab eval`, `export`,
    `predict`). `model`: the registry name a file that names no net holds (torchvision's files). `device`
    (auto, cpu, cuda, cuda:N; default the CPU): where it runs (`Trained.to`)."""
    trained = load_pretrained(path, model=model, best=best)
    return trained.to(device) if device is not None else trained

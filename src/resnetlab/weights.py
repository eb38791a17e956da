"""Weights files of every format resnetlab reads, told apart by their content and read without running code.

- `resnetlab`: our checkpoint (`checkpoint.py`): spec, weights, and the input normalisation of its run;
- `pytorch_resnet_cifar10`: an option-A CIFAR ResNet-20..1202 of that project (`convert.py`);
- `torchvision`: a torchvision-style ResNet state_dict (`convert.py`).
The two foreign formats were trained on pixels in [0, 1] normalised with ImageNet's channel mean and std, so
that is the normalisation they carry here: evaluating them computes what their own code computes. The file's
SHA-256 names exactly which weights a run started from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import is_checkpoint, is_tensor_map, load_state, parse_checkpoint, read_file
from .convert import (
    CIFAR_PEER,
    TORCHVISION,
    cifar_peer_spec,
    imagenet_norm,
    is_cifar_peer,
    load_pytorch_resnet_cifar10,
    load_state_bytes,
    load_torchvision,
    state_dict_of,
)
from .data import DataSource
from .errors import CheckpointError, ResnetlabError
from .net import ResNet
from .registry import get_spec
from .spec import ResNetSpec

RESNETLAB = "resnetlab"


@dataclass(frozen=True)
class Weights:
    """The contents of one weights file."""

    path: Path
    sha256: str
    format: str  # RESNETLAB, CIFAR_PEER or TORCHVISION
    state: dict[str, Tensor]  # under the file's own key names
    norm: dict[str, Tensor]  # the input normalisation the weights were trained with
    spec: ResNetSpec | None  # the net the file holds, where it says (not torchvision's files)
    config: dict[str, Any] | None = None  # our checkpoint's run config
    claimed_error: float | None = None  # the file's own top-1 test error, where it records one
    data: dict[str, Any] | None = None  # our checkpoint's class names, image size and channels, where it has them

    def record(self) -> dict[str, Any]:
        """Where a run's weights came from, for its config.json."""
        return {"path": str(self.path), "sha256": self.sha256, "format": self.format,
                "normalization": describe_norm(self.norm)}


def read_weights(path: str | Path) -> Weights:
    """Read and identify a weights file; any problem is a one-line CheckpointError naming the file."""
    path = Path(path).expanduser()
    raw = read_file(path, "weights file")
    sha256 = hashlib.sha256(raw).hexdigest()
    if is_safetensors(raw):
        return _read_safetensors(raw, path, sha256)
    if is_checkpoint(raw):
        payload = parse_checkpoint(raw, path)
        try:
            spec = ResNetSpec.from_dict(payload["spec"])
            data = payload.get("data") if isinstance(payload.get("data"), dict) else None
            config = payload["config"]  # a mapping: parse_checkpoint checks it
            state = payload["model"]
            if not is_tensor_map(state):
                raise CheckpointError(f"field 'model' is a {type(state).__name__}, not a mapping of names to "
                                      "tensors")
            return Weights(path, sha256, RESNETLAB, dict(state), _checked_norm(payload["norm"]), spec,
                           config=config, data=data)
        except (KeyError, TypeError, ResnetlabError) as exc:
            raise CheckpointError(f"{path}: a resnetlab checkpoint without a valid spec and weights ({exc})") from None
    obj = load_state_bytes(raw, path)
    state = state_dict_of(obj, str(path))
    keys = {k.removeprefix("module.") for k in state}
    if is_cifar_peer(state):
        try:
            spec = cifar_peer_spec(state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        return Weights(path, sha256, CIFAR_PEER, state, imagenet_norm(), spec, claimed_error=_peer_error(obj))
    if "fc.weight" in keys:
        return Weights(path, sha256, TORCHVISION, state, imagenet_norm(), None)
    first = f"its first key is {next(iter(state))!r}" if state else "it holds no tensors"
    raise CheckpointError(f"{path}: not a weights layout resnetlab knows (a resnetlab checkpoint, a {CIFAR_PEER} "
                          f"CIFAR ResNet or a torchvision ResNet); {first}")


def is_safetensors(raw: bytes) -> bool:
    """A safetensors file (whole or cut short): an 8-byte little-endian header length, then the JSON header."""
    return raw[8:10] in (b'{"', b"{}") and 2 <= int.from_bytes(raw[:8], "little") < 100_000_000


def _read_safetensors(raw: bytes, path: Path, sha256: str) -> Weights:
    """A `.safetensors` file written by `resnetlab export`: spec, classes and image size in its metadata, the
    input normalisation as two tensors. Reading it runs no code."""
    import json

    try:
        import safetensors.torch as st
    except ImportError:
        raise CheckpointError(f"{path}: reading safetensors needs the safetensors package: "
                              "pip install 'resnetlab[export]'") from None
    try:
        n = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8:8 + n]).get("__metadata__") or {}
        tensors = st.load(raw)
    except Exception as exc:  # the library raises its own SafetensorError, ValueError, ...
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(meta, dict) or meta.get("format") != RESNETLAB or "resnetlab" not in meta:
        raise CheckpointError(f"{path}: a safetensors file without resnetlab's metadata (spec, classes); only "
                              "files written by 'resnetlab export' are read")
    try:
        info = json.loads(meta["resnetlab"])
        spec = ResNetSpec.from_dict(info["spec"])
        norm = {"mean": tensors.pop("normalization.mean"), "std": tensors.pop("normalization.std")}
        data = {k: info[k] for k in ("classes", "image_size") if k in info}
    except (KeyError, TypeError, ValueError, AttributeError, ResnetlabError) as exc:
        raise CheckpointError(f"{path}: its resnetlab metadata is not valid ({str(exc).splitlines()[0][:160]})"
                              ) from None
    try:
        norm = _checked_norm(norm)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return Weights(path, sha256, RESNETLAB, tensors, norm, spec, data=data)


def _checked_norm(norm: Any) -> dict[str, Tensor]:
    """The input normalisation of a file: 'mean' and 'std' tensors, finite, std above zero (its shape is
    checked against the data when it is used)."""
    if not isinstance(norm, dict) or not all(isinstance(norm.get(k), Tensor) for k in ("mean", "std")):
        raise CheckpointError("field 'norm': expected 'mean' and 'std' tensors")
    mean, std = norm["mean"], norm["std"]
    if not (mean.is_floating_point() and std.is_floating_point() and mean.numel() and std.numel()
            and torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError("field 'norm': 'mean' and 'std' must be finite floats, 'std' above zero")
    return {"mean": mean, "std": std}


def _peer_error(obj: Any) -> float | None:
    """1 - best_prec1 / 100: the top-1 error the file's own training reported on CIFAR-10's test set."""
    prec = obj.get("best_prec1") if isinstance(obj, dict) else None
    if isinstance(prec, Tensor) and prec.numel() == 1:
        prec = prec.item()
    if isinstance(prec, int | float) and not isinstance(prec, bool) and 0 <= prec <= 100:
        return 1 - float(prec) / 100
    return None


def load_into(model: ResNet, weights: Weights) -> ResNet:
    """Copy the weights into `model`, which must be the net they were trained as (checked)."""
    try:
        if weights.format == RESNETLAB:
            assert weights.spec is not None
            _check_same_net(weights.spec, model.spec)
            load_state(model, weights.state)
        elif weights.format == CIFAR_PEER:
            load_pytorch_resnet_cifar10(model, weights.state)
        else:
            load_torchvision(model, weights.state)
    except CheckpointError as exc:
        raise CheckpointError(f"{weights.path}: {exc}") from None
    except RuntimeError as exc:  # load_state_dict: a checkpoint whose tensors do not fit its own spec
        raise CheckpointError(f"{weights.path}: weights do not fit its spec ({str(exc).splitlines()[0][:160]})"
                              ) from None
    return model


def model_for(weights: Weights, name: str | None = None) -> ResNet:
    """The net of a weights file with its weights: the file's own spec, or registry model `name` (checked).

    A torchvision file names no model; its bottleneck nets are built with torchvision's stride placement.
    The number of classes is the file's."""
    if name is None:
        if weights.spec is None:
            raise CheckpointError(f"{weights.path}: a {weights.format} file names no model; give a model name")
        spec = weights.spec
    elif weights.format == RESNETLAB:
        assert weights.spec is not None
        if name != weights.spec.name:
            raise CheckpointError(f"{weights.path}: holds {weights.spec.name or 'another model'}, not {name}")
        spec = weights.spec
    else:  # the classes are the file's (its classifier's rows)
        fc = next(v for k, v in weights.state.items() if k.removeprefix("module.") in ("fc.weight", "linear.weight"))
        spec = get_spec(name, num_classes=int(fc.shape[0]))
        if weights.format == TORCHVISION and spec.block == "bottleneck":
            spec = spec.replace(stride_on="3x3")
    return load_into(ResNet(spec), weights)


def use_norm(source: DataSource, weights: Weights) -> None:
    """Normalise the source's images as the weights were trained to see them."""
    try:
        source.load_norm_state(weights.norm)
    except ResnetlabError as exc:
        raise CheckpointError(f"{weights.path}: its input normalisation does not fit the data ({exc})") from None


def start_from(model: ResNet, source: DataSource, path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """A new run's initial weights and input normalisation from a weights file; the record for config.json.

    `sha256`: the file must still be the one a run recorded when it started (a restart before any checkpoint)."""
    weights = read_weights(path)
    if sha256 is not None and weights.sha256 != sha256:
        raise CheckpointError(f"{weights.path}: changed since the run started (SHA-256 {weights.sha256[:16]}..., "
                              f"recorded {sha256[:16]}...)")
    load_into(model, weights)
    use_norm(source, weights)
    return weights.record()


def describe_norm(norm: dict[str, Tensor]) -> str:
    mean, std = norm["mean"], norm["std"]
    if mean.dim() == 3 and mean.shape[1:] == (1, 1) and std.shape[1:] == (1, 1):
        return (f"channel mean ({', '.join(f'{v:.4g}' for v in mean.flatten().tolist())}), "
                f"std ({', '.join(f'{v:.4g}' for v in std.flatten().tolist())})")
    return f"per-pixel mean image {tuple(mean.shape)}" + ("" if bool((std == 1).all()) else ", per-pixel std")


def _check_same_net(held: ResNetSpec, spec: ResNetSpec) -> None:
    """Specs must agree in every field but the name and the settings that do not change the function."""
    ignore = {"recompute": 0, "zero_init_residual": False}
    a, b = held.replace(**ignore).to_dict(), spec.replace(**ignore).to_dict()
    for field in a:
        if field != "name" and a[field] != b[field]:
            raise CheckpointError(f"holds {held.name or 'a net'} with {field}={a[field]!r}, but "
                                  f"{spec.name or 'the model'} has {field}={b[field]!r}")

"""Weights files of every format resnetlab reads, told apart by their content and read without running code:
`READERS` (the containers, by their first bytes) and `LAYOUTS` (how a format's tensors are named and loaded
into a net) are the table; `export.WRITERS` is the other direction.

- `resnetlab`: our checkpoint (`checkpoint.py`): spec, weights, and the input normalisation of its run;
- `pytorch_resnet_cifar10`: an option-A CIFAR ResNet-20..1202 of that project (`peers.py`);
- `torchvision`: a torchvision-style ResNet state_dict (`peers.py`).
The two foreign formats were trained on pixels in [0, 1] normalised with ImageNet's channel mean and std, so
that is the normalisation they carry here: evaluating them computes what their own code computes. The file's
SHA-256 names exactly which weights a run started from.

What a path means (a run directory, a checkpoint, a weights file) is `resolve.resolve`. Everything a file says
about itself is checked against its tensors and against itself when it is read (`checks.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from resnetlab.data import DataSource
from resnetlab.errors import CheckpointError, ResnetlabError, one_line
from resnetlab.files.jsondoc import JSONDocError, check_nesting, parse_json
from resnetlab.files.reading import read_file
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import get_spec
from resnetlab.networks.spec import ResNetSpec
from resnetlab.weights.checkpoint import MAGIC, is_tensor_map, load_state, parse_checkpoint
from resnetlab.weights.checks import checked, checked_norm
from resnetlab.weights.contents import RESNETLAB, Weights
from resnetlab.weights.peers import (
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


def read_weights(path: str | Path) -> Weights:
    """Read and identify a weights file by its contents (`sniff`, then `READERS`); any problem is a one-line
    CheckpointError naming the file."""
    path = Path(path).expanduser()
    raw = read_file(path, "weights file")
    kind = sniff(raw)
    if kind not in READERS:
        raise CheckpointError(f"{path}: {kind}, not a weights file (resnetlab reads its own checkpoints, exported "
                              ".safetensors and torch.save state_dicts)")
    return READERS[kind](raw, path, hashlib.sha256(raw).hexdigest())


def _read_checkpoint(raw: bytes, path: Path, sha256: str) -> Weights:
    """Our checkpoint: spec, weights, input normalisation, the run's config and data (`checkpoint.py`)."""
    payload = parse_checkpoint(raw, path)
    try:
        spec = ResNetSpec.from_dict(payload["spec"])
        data = payload.get("data") if isinstance(payload.get("data"), dict) else None
        config = check_nesting(payload["config"], "field 'config'")  # a mapping: parse_checkpoint checks it
        state = payload["model"]
        if not is_tensor_map(state):
            raise CheckpointError(f"field 'model' is a {type(state).__name__}, not a mapping of names to tensors")
        weights = Weights(path, sha256, RESNETLAB, dict(state), checked_norm(payload["norm"]), spec,
                          config=config, data=data, payload=payload)
    except (KeyError, TypeError, ResnetlabError) as exc:
        raise CheckpointError(f"{path}: a resnetlab checkpoint without a valid spec and weights ({exc})") from None
    return checked(weights)


def _read_torch(raw: bytes, path: Path, sha256: str) -> Weights:
    """A `torch.save` state_dict (or a dict holding one) of a layout in `LAYOUTS`, told by its keys."""
    obj = load_state_bytes(raw, path)
    state = state_dict_of(obj, str(path))
    for name, layout in LAYOUTS.items():
        if layout.matches is not None and layout.matches(state):
            try:
                spec = layout.spec(state) if layout.spec is not None else None
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
            claimed = layout.claimed_error(obj) if layout.claimed_error is not None else None
            return Weights(path, sha256, name, state, imagenet_norm(), spec, claimed_error=claimed)
    first = f"its first key is {next(iter(state))!r}" if state else "it holds no tensors"
    raise CheckpointError(f"{path}: not a weights layout resnetlab knows (a resnetlab checkpoint, a {CIFAR_PEER} "
                          f"CIFAR ResNet or a torchvision ResNet); {first}")


# what else a file given as weights may be, by its first bytes (checked after our own formats)
_OTHER_KINDS = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"), (b"\x7fELF", "an executable"),
                (b"ustar", "a tar archive"))


def sniff(raw: bytes) -> str:
    """What the contents of a file are: "checkpoint" (ours), "safetensors", "torch" (a `torch.save` zip or
    legacy pickle), or words for anything else ("a PNG image", "an ONNX model", "an empty file", ...)."""
    if raw.endswith(MAGIC):  # checked fully by `parse_checkpoint`
        return "checkpoint"
    if is_safetensors(raw):
        return "safetensors"
    if raw.startswith(b"PK\x03\x04") or (raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    if not raw:
        return "an empty file"
    for magic, what in _OTHER_KINDS:
        if raw.startswith(magic) or (magic == b"ustar" and raw[257:262] == magic):
            return what
    if raw[:1] == b"\x08" and raw[2:3] == b"\x12" and b"onnx" in raw[:4096].lower():  # ir_version, producer
        return "an ONNX model (export's output, not its input)"
    if len(raw) < 16:
        return f"a file of {len(raw)} bytes (too short for any weights format: truncated?)"
    try:
        head = raw[:256].decode("utf-8")
    except UnicodeDecodeError:
        return "a file of unknown format"
    return "a text file" if all(ch.isprintable() or ch in "\n\r\t" for ch in head) else "a file of unknown format"


def is_safetensors(raw: bytes) -> bool:
    """A safetensors file (whole or cut short): an 8-byte little-endian header length, then the JSON header."""
    return raw[8:10] in (b'{"', b"{}") and 2 <= int.from_bytes(raw[:8], "little") < 100_000_000


def _read_safetensors(raw: bytes, path: Path, sha256: str) -> Weights:
    """A `.safetensors` file written by `resnetlab export`: spec, classes and image size in its metadata, the
    input normalisation as two tensors. Reading it runs no code."""
    try:
        import safetensors.torch as st
    except ImportError:
        raise CheckpointError(f"{path}: reading safetensors needs the safetensors package: "
                              "pip install 'resnetlab[export]'") from None
    n = int.from_bytes(raw[:8], "little")
    if 8 + n > len(raw):
        raise CheckpointError(f"{path}: a safetensors file cut short (its header claims {n:,} bytes, the file has "
                              f"{len(raw) - 8:,} after the length)")
    try:
        header = parse_json(raw[8:8 + n], "header")
        meta = (header.get("__metadata__") if isinstance(header, dict) else None) or {}
        tensors = st.load(raw)
    except JSONDocError as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    except Exception as exc:  # the library raises its own SafetensorError, ValueError, ...
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(exc, 160)})") from None
    if not isinstance(meta, dict) or meta.get("format") != RESNETLAB or "resnetlab" not in meta:
        raise CheckpointError(f"{path}: a safetensors file without resnetlab's metadata (spec, classes); only "
                              "files written by 'resnetlab export' are read")
    try:
        info = parse_json(meta["resnetlab"], "metadata 'resnetlab'")
        spec = ResNetSpec.from_dict(info["spec"])
        norm = {"mean": tensors.pop("normalization.mean"), "std": tensors.pop("normalization.std")}
        data = {k: info[k] for k in ("classes", "image_size") if k in info}
    except (KeyError, TypeError, ValueError, AttributeError, ResnetlabError) as exc:
        raise CheckpointError(f"{path}: its resnetlab metadata is not valid ({one_line(exc, 160)})"
                              ) from None
    if not isinstance(data.get("classes", []), list):
        raise CheckpointError(f"{path}: its metadata's 'classes' is {type(data['classes']).__name__}, not a list")
    try:
        norm = checked_norm(norm)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return checked(Weights(path, sha256, RESNETLAB, tensors, norm, spec, data=data))


def _peer_error(obj: Any) -> float | None:
    """1 - best_prec1 / 100: the top-1 error the file's own training reported on CIFAR-10's test set."""
    prec = obj.get("best_prec1") if isinstance(obj, dict) else None
    if isinstance(prec, Tensor) and prec.numel() == 1:
        prec = prec.item()
    if isinstance(prec, int | float) and not isinstance(prec, bool) and 0 <= prec <= 100:
        return 1 - float(prec) / 100
    return None


def load_into(model: ResNet, weights: Weights) -> ResNet:
    """Copy the weights into `model`, which must be the net they were trained as (checked). Weights holding
    NaN or Inf (a diverged net) are refused: nothing computed with them would mean anything."""
    bad = next((k for k, v in weights.state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())),
               None)
    if bad is not None:
        raise CheckpointError(f"{weights.path}: tensor {bad} holds NaN or Inf (a diverged net); its outputs "
                              "would mean nothing")
    try:
        LAYOUTS[weights.format].load(model, weights)
    except CheckpointError as exc:
        raise CheckpointError(f"{weights.path}: {exc}") from None
    except RuntimeError as exc:  # load_state_dict: a checkpoint whose tensors do not fit its own spec
        raise CheckpointError(f"{weights.path}: weights do not fit its spec ({one_line(exc, 160)})"
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
    elif weights.format == RESNETLAB:  # the registry net `name`, compared field by field, not by name
        assert weights.spec is not None
        held = weights.spec
        try:
            _check_same_net(held, get_spec(name, num_classes=held.num_classes, in_channels=held.in_channels))
        except CheckpointError as exc:
            raise CheckpointError(f"{weights.path}: not the registry's {name}: it {exc}") from None
        spec = held
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


# spec fields that do not change what a trained net computes: its name, how memory is saved, how it was initialised
_NOT_THE_FUNCTION = ("name", "recompute", "zero_init_residual", "gate_bias")


def _check_same_net(held: ResNetSpec, spec: ResNetSpec) -> None:
    """Specs must agree in every field but the name and the settings that do not change the function."""
    a, b = held.to_dict(), spec.to_dict()
    for field in a:
        if field not in _NOT_THE_FUNCTION and a[field] != b[field]:
            raise CheckpointError(f"holds {held.name or 'a net'} with {field}={a[field]!r}, but "
                                  f"{spec.name or 'the model'} has {field}={b[field]!r}")


def _load_ours(model: ResNet, weights: Weights) -> None:
    assert weights.spec is not None
    _check_same_net(weights.spec, model.spec)
    load_state(model, weights.state)


def _is_torchvision(state: dict[str, Tensor]) -> bool:
    return any(k.removeprefix("module.") == "fc.weight" for k in state)


@dataclass(frozen=True)
class Layout:
    """How one format's tensors are named: whether a torch.save state_dict is of it (by its keys; None: never a
    bare state_dict), the net it holds (None: it names none) and how its tensors load into a net."""

    matches: Callable[[dict[str, Tensor]], bool] | None
    spec: Callable[[dict[str, Tensor]], ResNetSpec] | None
    load: Callable[[ResNet, Weights], None]
    claimed_error: Callable[[Any], float | None] | None = None  # the test error the file records of itself


# every weights format resnetlab reads: the containers told by their first bytes, then the layouts of their
# tensors; `export.WRITERS` holds what it writes
READERS: dict[str, Callable[[bytes, Path, str], Weights]] = {
    "checkpoint": _read_checkpoint, "safetensors": _read_safetensors, "torch": _read_torch}
LAYOUTS: dict[str, Layout] = {
    RESNETLAB: Layout(None, None, _load_ours),  # our checkpoints and exported .safetensors
    CIFAR_PEER: Layout(is_cifar_peer, cifar_peer_spec, lambda m, w: load_pytorch_resnet_cifar10(m, w.state),
                       _peer_error),
    TORCHVISION: Layout(_is_torchvision, None, lambda m, w: load_torchvision(m, w.state)),
}

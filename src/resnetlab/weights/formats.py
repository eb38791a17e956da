"""A weights file of any format resnetlab reads, told apart by its content and read without running code:
`READERS` (the containers, by their first bytes) and `LAYOUTS` (how a format's tensors are named and loaded into a
net); `export.WRITERS` is the other direction. What a resnetlab file says about itself is checked when it is read
(`checked`); the file's SHA-256 names exactly which weights a run started from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from resnetlab.errors import CheckpointError, ResnetlabError, one_line, printable, unsafe_char
from resnetlab.files.jsondoc import JSONDocError, check_nesting, parse_json
from resnetlab.files.reading import read_file
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import get_spec
from resnetlab.networks.spec import ResNetSpec
from resnetlab.weights import peers
from resnetlab.weights.checkpoint import MAGIC, is_tensor_map, load_checkpoint, load_state

RESNETLAB = "resnetlab"
MIN_SIDE, MAX_SIDE = 8, 4096  # the image sizes a net is used at (as --input-size): digits are 8x8


@dataclass(frozen=True)
class Weights:
    """The contents of one weights file: tensors under the file's own names, the input normalisation they were
    trained with, and what the file says of its net and its run."""

    path: Path
    sha256: str
    format: str  # RESNETLAB, CIFAR_PEER or TORCHVISION (`peers`)
    state: dict[str, Tensor]  # under the file's own key names
    norm: dict[str, Tensor]  # the input normalisation the weights were trained with
    spec: ResNetSpec | None  # the net the file holds, where it says (not torchvision's files)
    config: dict[str, Any] | None = None  # our checkpoint's run config
    claimed_error: float | None = None  # the file's own top-1 test error, where it records one
    data: dict[str, Any] | None = None  # our checkpoint's class names, image size and channels, where it has them
    payload: dict[str, Any] | None = None  # the whole checkpoint (optimizer, progress, ...), for resuming
    skipped: tuple[str, ...] = ()  # newer checkpoints of a run directory that did not verify, and why

    def record(self) -> dict[str, Any]:
        """Where a run's weights came from, for its config.json."""
        mean, std = self.norm["mean"], self.norm["std"]
        if mean.dim() == 3 and mean.shape[1:] == (1, 1) and std.shape[1:] == (1, 1):
            norm = (f"channel mean ({', '.join(f'{v:.4g}' for v in mean.flatten().tolist())}), "
                    f"std ({', '.join(f'{v:.4g}' for v in std.flatten().tolist())})")
        else:
            norm = f"per-pixel mean image {tuple(mean.shape)}" + ("" if bool((std == 1).all()) else ", per-pixel std")
        return {"path": str(self.path), "sha256": self.sha256, "format": self.format, "normalization": norm}


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
    payload = load_checkpoint(path, raw)
    try:
        spec = ResNetSpec.from_dict(payload["spec"])
        data = payload.get("data") if isinstance(payload.get("data"), dict) else None
        config = check_nesting(payload["config"], "field 'config'")  # a mapping: load_checkpoint checks it
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
    obj = peers.load_state_bytes(raw, path)
    state = peers.state_dict_of(obj, str(path))
    for name, layout in LAYOUTS.items():
        if layout.matches is not None and layout.matches(state):
            try:
                spec = layout.spec(state) if layout.spec is not None else None
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
            claimed = layout.claimed_error(obj) if layout.claimed_error is not None else None
            return Weights(path, sha256, name, state, peers.imagenet_norm(), spec, claimed_error=claimed)
    first = f"its first key is {next(iter(state))!r}" if state else "it holds no tensors"
    raise CheckpointError(f"{path}: not a weights layout resnetlab knows (a resnetlab checkpoint, a "
                          f"{peers.CIFAR_PEER} CIFAR ResNet or a torchvision ResNet); {first}")


# what else a file given as weights may be, by its first bytes (checked after our own formats)
_OTHER_KINDS = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"), (b"\x7fELF", "an executable"),
                (b"ustar", "a tar archive"))


def sniff(raw: bytes) -> str:
    """What the contents of a file are: "checkpoint" (ours), "safetensors", "torch" (a `torch.save` zip or
    legacy pickle), or words for anything else ("a PNG image", "an ONNX model", "an empty file", ...)."""
    if raw.endswith(MAGIC):  # checked fully by `load_checkpoint`
        return "checkpoint"
    if raw[8:10] in (b'{"', b"{}") and 2 <= int.from_bytes(raw[:8], "little") < 100_000_000:
        return "safetensors"  # whole or cut short: an 8-byte little-endian header length, then the JSON header
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
    return checked(Weights(path, sha256, RESNETLAB, tensors, norm, spec, data=data))


def checked(weights: Weights) -> Weights:
    """A resnetlab file's claims checked against its tensors and against each other before any are believed:
    tensors (names, shapes) against the spec, the normalisation's shape against the spec's channels and the
    image size, class names against the classifier; and the spec's net must run at that image size."""
    try:
        checked_norm(weights.norm)
        _check_resnetlab(weights)
    except CheckpointError as exc:
        raise CheckpointError(f"{weights.path}: {exc}") from None
    return weights


def _check_resnetlab(weights: Weights) -> None:
    spec = weights.spec
    assert spec is not None
    with torch.device("meta"):  # no memory spent: the shapes a net of this spec has
        net = ResNet(spec)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.state.items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which it does not have"
        raise CheckpointError(f"its tensors do not fit its own spec ({spec.name or 'the net'} {what})")
    for key, shape in want.items():
        if have[key] != shape:
            raise CheckpointError(f"its tensors do not fit its own spec ({key}: {have[key]}, the spec's net has "
                                  f"{shape})")
    mean, std = weights.norm["mean"], weights.norm["std"]
    sides = {int(t.shape[1]) for t in (mean, std) if t.dim() == 3} - {1}  # per-pixel statistics' side
    if any(t.dim() != 3 or t.shape[0] != spec.in_channels or t.shape[1] != t.shape[2] for t in (mean, std)) \
            or len(sides) > 1:
        raise CheckpointError(f"its normalisation (mean {tuple(mean.shape)}, std {tuple(std.shape)}) does not fit "
                              f"a {spec.in_channels}-channel net: expected ({spec.in_channels}, 1, 1) per channel "
                              f"or ({spec.in_channels}, S, S) per pixel, of one side S")
    pixel_side = sides.pop() if sides else None
    data = weights.data or {}
    size = data.get("image_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIDE <= size <= MAX_SIDE:
            raise CheckpointError(f"its image_size {str(size)[:40]!r} is not a side in {MIN_SIDE}..{MAX_SIDE} "
                                  "pixels")
        if pixel_side is not None and pixel_side != size:
            raise CheckpointError(f"its image_size is {size} but its per-pixel normalisation is {pixel_side}x"
                                  f"{pixel_side}")
    channels = data.get("channels")
    if channels is not None and channels != spec.in_channels:
        raise CheckpointError(f"its data has {str(channels)[:20]} channel(s), its net takes {spec.in_channels}")
    if data.get("classes") is not None:
        check_class_names(data["classes"], spec.num_classes)
    side = size or pixel_side or spec.input_size
    try:
        with torch.device("meta"), torch.no_grad():
            net.eval()(torch.empty(2, spec.in_channels, side, side))
    except RuntimeError as exc:
        raise CheckpointError(f"its net cannot take {side}x{side} images ({one_line(exc, 120)})"
                              ) from None


def check_class_names(names: Any, k: int) -> None:
    """Class names as a trained net's file may hold them: `k` distinct strings (one per classifier row), each
    printable (no control or formatting characters, which could forge or hide lines of output)."""
    if not isinstance(names, list) or len(names) != k:
        size = f"{len(names)} names" if isinstance(names, list) else type(names).__name__
        raise CheckpointError(f"its class names ({size}) do not match its classifier's {k} classes")
    for name in names:
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"its class name {str(name)[:40]!r} is not a non-empty string")
        if any(unsafe_char(ch) for ch in name):
            raise CheckpointError(f"its class name {printable(name[:40])!r} holds control or formatting characters")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"its class name {twice[:40]!r} names two classifier rows")


def checked_norm(norm: Any) -> dict[str, Tensor]:
    """The input normalisation of a file: 'mean' and 'std' tensors, finite, std above zero (its shape is
    checked against the data when it is used)."""
    if not isinstance(norm, dict) or not all(isinstance(norm.get(k), Tensor) for k in ("mean", "std")):
        raise CheckpointError("field 'norm': expected 'mean' and 'std' tensors")
    mean, std = norm["mean"], norm["std"]
    if not (mean.is_floating_point() and std.is_floating_point() and mean.numel() and std.numel()
            and torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError("field 'norm': 'mean' and 'std' must be finite floats, 'std' above zero")
    return {"mean": mean, "std": std}


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
        spec = weights.spec
        try:
            _check_same_net(spec, get_spec(name, num_classes=spec.num_classes, in_channels=spec.in_channels))
        except CheckpointError as exc:
            raise CheckpointError(f"{weights.path}: not the registry's {name}: it {exc}") from None
    else:  # the classes are the file's (its classifier's rows)
        fc = next(v for k, v in weights.state.items() if k.removeprefix("module.") in ("fc.weight", "linear.weight"))
        spec = get_spec(name, num_classes=int(fc.shape[0]))
        if weights.format == peers.TORCHVISION and spec.block == "bottleneck":
            spec = spec.replace(stride_on="3x3")
    return load_into(ResNet(spec), weights)


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


@dataclass(frozen=True)
class Layout:
    """How one format's tensors are named: whether a torch.save state_dict is of it (by its keys; None: never a
    bare state_dict), the net it holds (None: it names none) and how its tensors load into a net."""

    matches: Callable[[dict[str, Tensor]], bool] | None
    spec: Callable[[dict[str, Tensor]], ResNetSpec] | None
    load: Callable[[ResNet, Weights], None]
    claimed_error: Callable[[Any], float | None] | None = None  # the test error the file records of itself


READERS: dict[str, Callable[[bytes, Path, str], Weights]] = {
    "checkpoint": _read_checkpoint, "safetensors": _read_safetensors, "torch": _read_torch}
LAYOUTS: dict[str, Layout] = {
    RESNETLAB: Layout(None, None, _load_ours),  # our checkpoints and exported .safetensors
    peers.CIFAR_PEER: Layout(peers.is_cifar_peer, peers.cifar_peer_spec,
                             lambda m, w: peers.load_pytorch_resnet_cifar10(m, w.state), peers.claimed_error),
    peers.TORCHVISION: Layout(peers.is_torchvision, None, lambda m, w: peers.load_torchvision(m, w.state)),
}

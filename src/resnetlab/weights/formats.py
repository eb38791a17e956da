"""Weights files of every format resnetlab reads, told apart by their content and read without running code,
and the one answer to "what does this path mean" (`resolve`) that every command asks.

- `resnetlab`: our checkpoint (`checkpoint.py`): spec, weights, and the input normalisation of its run;
- `pytorch_resnet_cifar10`: an option-A CIFAR ResNet-20..1202 of that project (`convert.py`);
- `torchvision`: a torchvision-style ResNet state_dict (`convert.py`).
The two foreign formats were trained on pixels in [0, 1] normalised with ImageNet's channel mean and std, so
that is the normalisation they carry here: evaluating them computes what their own code computes. The file's
SHA-256 names exactly which weights a run started from.

`resolve(path, best)`: a run directory means its newest checkpoint that verifies (or `best.pt` with `best`),
a checkpoint itself, a weights file its format. `eval`, `train --resume`, `train --init`, `export`, `predict`,
`analyze --checkpoint`, `torch.hub` and `load_pretrained` all call it, so a path means one net everywhere.
Everything a file says about itself (spec, normalisation, class names, image size) is checked against its
tensors and against itself when it is read (`_check_resnetlab`), before anything is built from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from resnetlab.data import DataSource
from resnetlab.data.base import printable, unsafe_char
from resnetlab.errors import CheckpointError, ConfigError, ResnetlabError
from resnetlab.files.jsondoc import JSONDocError, check_nesting, parse_json
from resnetlab.files.reading import read_file
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import get_spec
from resnetlab.networks.spec import ResNetSpec
from resnetlab.runs.directory import RunDir
from resnetlab.weights.checkpoint import is_checkpoint, is_tensor_map, load_state, parse_checkpoint
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
    payload: dict[str, Any] | None = None  # the whole checkpoint (optimizer, progress, ...), for resuming
    skipped: tuple[str, ...] = ()  # newer checkpoints of a run directory that did not verify, and why

    def record(self) -> dict[str, Any]:
        """Where a run's weights came from, for its config.json."""
        return {"path": str(self.path), "sha256": self.sha256, "format": self.format,
                "normalization": describe_norm(self.norm)}


def resolve(path: str | Path, best: bool = False) -> Weights:
    """The weights a path means, the same for every command: a run directory's newest checkpoint that verifies
    (newer ones that do not are listed in `skipped`), or its `best.pt` with `best`; a file, its own contents.
    Any problem is a one-line CheckpointError naming the path."""
    path = Path(path).expanduser()
    if not path.is_dir():
        if best:
            raise ConfigError("--best picks a run directory's best.pt; it does not apply to a file")
        return read_weights(path)
    run = RunDir(path)
    if not (run.config.is_file() or run.checkpoints.is_dir()):
        raise CheckpointError(f"{path}: a folder, not a run directory (no config.json or checkpoints/)")
    if best:
        if not run.best.is_file():
            raise CheckpointError(f"{path}: no checkpoints/best.pt in this run directory")
        return read_weights(run.best)
    if not run.step_checkpoints():
        hint = " (it has a best.pt: use --best)" if run.best.is_file() else ""
        raise CheckpointError(f"{path}: no checkpoint in this run directory{hint}")
    _, weights, problems = run.latest_good(read_weights)
    return dataclasses.replace(weights, skipped=tuple(problems))


def read_weights(path: str | Path) -> Weights:
    """Read and identify a weights file; any problem is a one-line CheckpointError naming the file."""
    path = Path(path).expanduser()
    raw = read_file(path, "weights file")
    sha256 = hashlib.sha256(raw).hexdigest()
    kind = sniff(raw)
    if kind == "safetensors":
        return _checked(_read_safetensors(raw, path, sha256))
    if kind == "checkpoint":
        payload = parse_checkpoint(raw, path)
        try:
            spec = ResNetSpec.from_dict(payload["spec"])
            data = payload.get("data") if isinstance(payload.get("data"), dict) else None
            config = check_nesting(payload["config"], "field 'config'")  # a mapping: parse_checkpoint checks it
            state = payload["model"]
            if not is_tensor_map(state):
                raise CheckpointError(f"field 'model' is a {type(state).__name__}, not a mapping of names to "
                                      "tensors")
            weights = Weights(path, sha256, RESNETLAB, dict(state), _checked_norm(payload["norm"]), spec,
                              config=config, data=data, payload=payload)
        except (KeyError, TypeError, ResnetlabError) as exc:
            raise CheckpointError(f"{path}: a resnetlab checkpoint without a valid spec and weights ({exc})") from None
        return _checked(weights)
    if kind != "torch":
        raise CheckpointError(f"{path}: {kind}, not a weights file (resnetlab reads its own checkpoints, exported "
                              ".safetensors and torch.save state_dicts)")
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


# what else a file given as weights may be, by its first bytes (checked after our own formats)
_OTHER_KINDS = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"), (b"\x7fELF", "an executable"),
                (b"ustar", "a tar archive"))


def sniff(raw: bytes) -> str:
    """What the contents of a file are: "checkpoint" (ours), "safetensors", "torch" (a `torch.save` zip or
    legacy pickle), or words for anything else ("a PNG image", "an ONNX model", "an empty file", ...)."""
    if is_checkpoint(raw):
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
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(meta, dict) or meta.get("format") != RESNETLAB or "resnetlab" not in meta:
        raise CheckpointError(f"{path}: a safetensors file without resnetlab's metadata (spec, classes); only "
                              "files written by 'resnetlab export' are read")
    try:
        info = parse_json(meta["resnetlab"], "metadata 'resnetlab'")
        spec = ResNetSpec.from_dict(info["spec"])
        norm = {"mean": tensors.pop("normalization.mean"), "std": tensors.pop("normalization.std")}
        data = {k: info[k] for k in ("classes", "image_size") if k in info}
    except (KeyError, TypeError, ValueError, AttributeError, ResnetlabError) as exc:
        raise CheckpointError(f"{path}: its resnetlab metadata is not valid ({str(exc).splitlines()[0][:160]})"
                              ) from None
    if not isinstance(data.get("classes", []), list):
        raise CheckpointError(f"{path}: its metadata's 'classes' is {type(data['classes']).__name__}, not a list")
    try:
        norm = _checked_norm(norm)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return Weights(path, sha256, RESNETLAB, tensors, norm, spec, data=data)


MIN_SIDE, MAX_SIDE = 8, 4096  # the image sizes a net is used at (as --input-size): digits are 8x8


def _checked(weights: Weights) -> Weights:
    """A resnetlab file's claims checked against its tensors and against each other before any are believed:
    tensors (names, shapes) against the spec, the normalisation's shape against the spec's channels and the
    image size, class names against the classifier; and the spec's net must run at that image size."""
    try:
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
        raise CheckpointError(f"its net cannot take {side}x{side} images ({str(exc).splitlines()[0][:120]})"
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
    """Copy the weights into `model`, which must be the net they were trained as (checked). Weights holding
    NaN or Inf (a diverged net) are refused: nothing computed with them would mean anything."""
    bad = next((k for k, v in weights.state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())),
               None)
    if bad is not None:
        raise CheckpointError(f"{weights.path}: tensor {bad} holds NaN or Inf (a diverged net); its outputs "
                              "would mean nothing")
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


def start_from(model: ResNet, source: DataSource, path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """A new run's initial weights and input normalisation from a weights file; the record for config.json.

    `sha256`: the file must still be the one a run recorded when it started (a restart before any checkpoint)."""
    weights = resolve(path)
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


# spec fields that do not change what a trained net computes: its name, how memory is saved, how it was initialised
_NOT_THE_FUNCTION = ("name", "recompute", "zero_init_residual", "gate_bias")


def _check_same_net(held: ResNetSpec, spec: ResNetSpec) -> None:
    """Specs must agree in every field but the name and the settings that do not change the function."""
    a, b = held.to_dict(), spec.to_dict()
    for field in a:
        if field not in _NOT_THE_FUNCTION and a[field] != b[field]:
            raise CheckpointError(f"holds {held.name or 'a net'} with {field}={a[field]!r}, but "
                                  f"{spec.name or 'the model'} has {field}={b[field]!r}")


def note_skipped(skipped: tuple[str, ...], used: str | Path) -> None:
    """Say on stderr which newer checkpoints of a run directory did not verify, so using an older one is
    never silent (commands call it once their work has succeeded)."""
    for problem in skipped:
        sys.stderr.write(f"note: skipped {problem}; used {Path(used).name}\n")

"""What a resnetlab weights file says about itself (spec, normalisation, class names, image size), checked
against its tensors and against itself when it is read, before anything is built from it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from resnetlab.errors import CheckpointError, one_line, printable, unsafe_char
from resnetlab.networks.net import ResNet
from resnetlab.weights.contents import Weights

MIN_SIDE, MAX_SIDE = 8, 4096  # the image sizes a net is used at (as --input-size): digits are 8x8


def checked(weights: Weights) -> Weights:
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

"""Checkpoints: the bytes of `torch.save(payload)` (tensors and plain data only), their SHA-256, then a magic
trailer; written atomically (a crash leaves the old file or the new one, never half of one), checksum verified on
load, and loaded with `torch.load(weights_only=True)`: no code from the file ever runs."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from resnetlab.errors import CheckpointError
from resnetlab.files.atomic import replace_with
from resnetlab.files.reading import read_file, safe_reason, torch_load

MAGIC = b"RESNETLAB-CKPT-1"
FORMAT = "resnetlab.checkpoint"
_DIGEST = 32


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically; on failure (disk full, no permission) the previous file is left untouched."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": 1, **payload}, buf)
    data = buf.getvalue()

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # `open` of this module: tests stop a process in the middle of this write
            f.write(data)
            f.write(hashlib.sha256(data).digest())
            f.write(MAGIC)

    try:
        replace_with(path, fill)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


# fields of every checkpoint the trainer writes that readers index without further checks
REQUIRED_TABLES = ("spec", "norm", "config")


def load_checkpoint(path: Path | str, raw: bytes | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint (`raw`: its contents, where the caller has read them already); any problem is
    a one-line CheckpointError naming the file."""
    path = Path(path)
    raw = read_file(path) if raw is None else raw
    if not raw.endswith(MAGIC) or len(raw) < len(MAGIC) + _DIGEST:
        raise CheckpointError(f"{path}: not a resnetlab checkpoint, or truncated")
    body, digest = raw[: -len(MAGIC) - _DIGEST], raw[-len(MAGIC) - _DIGEST : -len(MAGIC)]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (the file is corrupt)")
    try:
        payload = torch_load(io.BytesIO(body))
    except Exception as exc:  # the restricted unpickler refuses anything but tensors and plain data
        raise CheckpointError(f"{path}: refused to load ({safe_reason(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a resnetlab checkpoint")
    missing = [field for field in ("model", *REQUIRED_TABLES) if field not in payload]
    if missing:
        raise CheckpointError(f"{path}: a resnetlab checkpoint without its '{missing[0]}' field")
    for field in REQUIRED_TABLES:  # the weights ('model') are checked where they are loaded
        if not isinstance(payload[field], dict):
            raise CheckpointError(f"{path}: field '{field}' is {type(payload[field]).__name__}, not a mapping")
    return payload


def trained_state(path: Path | str) -> dict[str, Any]:
    """A checkpoint's model tensors and SGD momentum buffers (`opt.N`), for bit-for-bit comparisons of runs."""
    payload = load_checkpoint(path)
    momentum = {f"opt.{key}": value["momentum_buffer"] for key, value in payload["optimizer"]["state"].items()}
    return {**payload["model"], **momentum}


def is_tensor_map(state: Any) -> bool:
    """Whether `state` is what a state_dict is: a mapping of names to tensors."""
    return isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in state.items())


def load_state(model: torch.nn.Module, state: Any) -> None:
    """`model.load_state_dict(state)`, refusing tensors whose dtype is not the model's: PyTorch would cast an
    int8, bool or float16 file into the float32 model without a word, changing what was trained."""
    if not is_tensor_map(state):
        raise CheckpointError(f"its weights are not a mapping of names to tensors ({type(state).__name__})")
    ours = model.state_dict()
    for key, value in state.items():
        target = ours.get(key)
        if target is not None and value.dtype != target.dtype:
            raise CheckpointError(f"tensor {key} is {str(value.dtype).removeprefix('torch.')}, the model's is "
                                  f"{str(target.dtype).removeprefix('torch.')}; weights are not converted silently")
    model.load_state_dict(state)


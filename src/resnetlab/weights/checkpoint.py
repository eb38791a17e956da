"""Checkpoints: tensors and plain data only, written atomically, verified by a checksum on load.

File layout: the bytes of `torch.save(payload)`, then the payload's SHA-256, then a magic trailer. A write
goes to a temporary file that is flushed, fsynced and renamed, so a crash leaves the old file or the new
one, never half of one. Loading uses `torch.load(weights_only=True)`: no code from the file ever runs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import torch

from resnetlab.errors import CheckpointError
from resnetlab.files.atomic import replace_with

MAGIC = b"RESNETLAB-CKPT-1"
FORMAT = "resnetlab.weights.checkpoint"
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


def file_kind(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO", "a directory", ...); None for a regular file."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


# The largest checkpoint or weights file read: the papers' largest net (ResNet-200, 64.7M parameters) with its
# SGD momentum is about 0.52 GB. A larger file is refused from its size, before memory is spent on it (a sparse
# file can claim gigabytes in a few bytes of disk).
MAX_FILE_BYTES = 1 << 30


def read_file(path: Path, what: str = "checkpoint") -> bytes:
    """The bytes of a checkpoint or weights file; a one-line CheckpointError naming the file if unreadable.

    Only regular files are read: a FIFO would block forever and a device would be read until memory ran out;
    and only up to MAX_FILE_BYTES."""
    try:
        info = os.stat(path)
        kind = file_kind(info.st_mode)
        if kind == "a directory":
            raise IsADirectoryError
        if kind is not None:
            raise CheckpointError(f"{path}: is {kind}, not a {_noun(what)}")
        if info.st_size > MAX_FILE_BYTES:
            raise CheckpointError(f"{path}: {info.st_size / 2**30:.1f} GiB, beyond the {MAX_FILE_BYTES >> 30} GiB "
                                  f"resnetlab reads as a {what} (the papers' largest net needs about 0.5 GB)")
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a {_noun(what)}") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _noun(what: str) -> str:
    return what if what.endswith(" file") else f"{what} file"


def safe_reason(exc: BaseException) -> str:
    """Why torch.load refused a file, without PyTorch's advice to load it with weights_only=False: resnetlab
    never runs a file's code, and never suggests it."""
    text = str(exc).strip()
    if "Unsupported operand 149" in text:  # FRAME: pickles of protocol 4 and 5 frame their data
        return ("it was pickled with protocol 4 or later, which PyTorch's weights-only loader cannot read; "
                "save it again with torch.save's default protocol")
    if "weights_only" in text or "Weights only load failed" in text or "Unsupported global" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"it holds objects other than tensors and plain data{what}; resnetlab does not unpickle code"
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]


def torch_load(source: Any) -> Any:
    """`torch.load(source, weights_only=True)` on the CPU: tensors and plain data only, no code runs. PyTorch's
    warning about a pickle protocol other than its default (protocol 3 reads; 4 and 5 are refused, see
    `safe_reason`) is not passed on to the user: the caller names the file and what is wrong with it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(source, map_location="cpu", weights_only=True)


# fields of every checkpoint the trainer writes that readers index without further checks
REQUIRED_TABLES = ("spec", "norm", "config")


def is_checkpoint(raw: bytes) -> bool:
    """Whether file contents end as a resnetlab checkpoint does (checked fully by `parse_checkpoint`)."""
    return raw.endswith(MAGIC)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read and verify a checkpoint; any problem is a one-line CheckpointError naming the file."""
    path = Path(path)
    return parse_checkpoint(read_file(path), path)


def parse_checkpoint(raw: bytes, path: Path) -> dict[str, Any]:
    """Verify and load the contents `raw` of checkpoint file `path`."""
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
    state = dict(payload["model"])
    for key, value in payload["optimizer"]["state"].items():
        state[f"opt.{key}"] = value["momentum_buffer"]
    return state


def is_tensor_map(state: Any) -> bool:
    """Whether `state` is what a state_dict is: a mapping of names to tensors."""
    return isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in state.items())


def load_state(model: torch.nn.Module, state: Any) -> None:
    """`model.load_state_dict(state)`, refusing tensors whose dtype is not the model's: PyTorch would cast an
    int8, bool or float16 file into the float32 model without a word (issue 14), changing what was trained."""
    if not is_tensor_map(state):
        raise CheckpointError(f"its weights are not a mapping of names to tensors ({type(state).__name__})")
    ours = model.state_dict()
    for key, value in state.items():
        target = ours.get(key)
        if target is not None and isinstance(value, torch.Tensor) and value.dtype != target.dtype:
            raise CheckpointError(f"tensor {key} is {str(value.dtype).removeprefix('torch.')}, the model's is "
                                  f"{str(target.dtype).removeprefix('torch.')}; weights are not converted silently")
    model.load_state_dict(state)


"""Reading a file resnetlab did not write: only regular files, only up to a size, and `torch.load` of tensors and
plain data only (no code from a file ever runs)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import torch

from resnetlab.errors import CheckpointError, one_line

CHUNK = 1 << 20  # bytes a read takes at a time (hashing, downloads)


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
    return one_line(exc, 200)


def torch_load(source: Any) -> Any:
    """`torch.load(source, weights_only=True)` on the CPU: tensors and plain data only, no code runs. PyTorch's
    warning about a pickle protocol other than its default (protocol 3 reads; 4 and 5 are refused, see
    `safe_reason`) is not passed on to the user: the caller names the file and what is wrong with it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(source, map_location="cpu", weights_only=True)


def hashes(path: Path, *names: str) -> list[str]:
    """The hex digests ``names`` (hashlib's: "md5", "sha256") of ``path``, in one read."""
    digests = [hashlib.new(name, usedforsecurity=False) for name in names]
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            for digest in digests:
                digest.update(block)
    return [digest.hexdigest() for digest in digests]

"""Atomic file writes: every file resnetlab writes is replaced whole or not at all.

The new contents go to a temporary file beside the target (``.NAME.tmp-PID-RANDOM.SUFFIX``: the same
directory, so the rename is atomic, and the target's suffix, so writers that pick a format by extension pick
the right one). It is flushed to disk, renamed over the target, and the directory is synced. On any error,
in the writer or after it, the temporary file is removed and the target is left as it was. A target that
exists and is not a regular file (a device such as /dev/null, a FIFO, a directory) is never replaced.

Appended files (``metrics.jsonl``, ``log.txt``) are not written here: appending a line is their format.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from resnetlab.errors import ResnetlabError


def refuse_special(path: Path) -> None:
    """A one-line error if ``path`` exists and is not a regular file (it is never replaced)."""
    if path.exists() and not path.is_file():
        raise ResnetlabError(f"{path}: exists and is not a regular file; not replaced")


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` that keeps its suffix."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename in directory ``path`` durable; best effort (some file systems refuse)."""
    with contextlib.suppress(OSError):
        _fsync(path)


def replace_with(path: Path, fill: Callable[[Path], None]) -> None:
    """Write ``path`` by calling ``fill(tmp)`` (``torch.save``, ``savefig``, ...), then renaming ``tmp`` over it.

    I/O failures surface as the OSError they are (callers word them); a non-regular target is a
    ResnetlabError. Whatever fails, ``tmp`` is gone afterwards and ``path`` is untouched."""
    path = Path(path)
    refuse_special(path)
    tmp = temp_path(path)
    try:
        fill(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` whole or not at all; a one-line ResnetlabError if it cannot be written."""
    path = Path(path)
    try:
        replace_with(path, lambda tmp: tmp.write_bytes(data))
    except OSError as exc:
        raise ResnetlabError(f"{path}: cannot write ({exc.strerror or exc})") from None


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` (UTF-8) to ``path`` whole or not at all; a one-line ResnetlabError if it cannot be written."""
    write_bytes_atomic(path, text.encode("utf-8"))


def create_text_atomic(path: Path, text: str) -> bool:
    """``text`` to ``path`` whole, unless ``path`` exists: whether it was written. Of several processes that
    create one file at once, exactly one writes it (a hard link, which fails where the name exists)."""
    path = Path(path)
    tmp = temp_path(path)
    write_text_atomic(tmp, text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()

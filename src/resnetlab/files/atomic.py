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
from collections.abc import Callable, Iterable
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


def _held_by(path: Path) -> tuple[str, Path] | None:
    """The run or suite directory `path` lies in, if any: ("run", dir) or ("suite", dir)."""
    for folder in path.parents:
        if (folder / "config.json").is_file() and (folder / "checkpoints").is_dir():
            return "run", folder
        if (folder / "suite.json").is_file():
            return "suite", folder
    return None


def check_output(out: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """The checks made on a file a command will write, before any work: it must not be one of the command's
    `inputs` (nor a link to one), nor replace a file of a run or suite directory, nor go into a run's
    checkpoints/; its folder must exist and its name (and the temporary name beside it) fit the file system.
    Returns the path; a one-line ResnetlabError otherwise."""
    out = Path(out).expanduser()
    parent = out.parent
    try:
        limit = os.pathconf(parent if parent.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(temp_path(out).name)) > limit:
        raise ResnetlabError(f"{out}: the file name is too long ({len(os.fsencode(out.name))} bytes; this file "
                             f"system takes {limit}, and resnetlab writes beside it under a longer temporary name)")
    if not parent.is_dir():
        raise ResnetlabError(f"{out}: no such directory {parent}")
    refuse_special(out)
    target = out.resolve()
    for given in inputs:
        given = Path(given).expanduser()
        if given.exists() and (target == given.resolve() or (out.exists() and os.path.samefile(out, given))):
            raise ResnetlabError(f"{out}: is this command's input {given}; an output never replaces its input")
    held = _held_by(target)
    if held is not None:
        kind, folder = held
        if kind == "run" and (folder / "checkpoints") in (target, *target.parents):
            raise ResnetlabError(f"{out}: inside the checkpoints/ of run {folder}; write it elsewhere")
        if out.exists():
            raise ResnetlabError(f"{out}: a file of {kind} directory {folder}; an output never replaces one "
                                 "(give a new name)")
    return out

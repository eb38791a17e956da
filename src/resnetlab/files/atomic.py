"""Atomic file writes: every file resnetlab writes goes to a temporary beside it (`temp_path`), is flushed, given
the mode a plain ``open()`` would give and renamed over the target; on any error the target is as it was, and a
target that is not a regular file (/dev/null, a FIFO, a folder) is never replaced. Appended files (metrics.jsonl,
log.txt) are not written here: appending a line is their format."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from resnetlab.errors import ResnetlabError


def refuse_special(path: Path) -> None:
    """A one-line error if ``path`` exists and is not a regular file (it is never replaced)."""
    if path.exists() and not path.is_file():
        raise ResnetlabError(f"{path}: exists and is not a regular file; not replaced")


NAME_MAX = 255  # bytes of one name, where the file system does not say (Linux, macOS)


def name_bytes(name: str) -> int:
    return len(os.fsencode(name))


def name_max(folder: Path | str) -> int:
    """The longest name, in bytes, a file in `folder` may have."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX
    return limit if limit and limit > 0 else NAME_MAX


def temp_path(path: Path, suffix: str | None = None) -> Path:
    """A fresh temporary name beside ``path``, ``.NAME.tmp-PID-RANDOM`` then ``suffix`` (default: the target's):
    NAME is cut short where the whole would be too long a name for the folder, and the suffix dropped only
    where it alone leaves no room. It always begins with a dot and holds ``.tmp-``, which is what the sweepers
    of a killed writer's temporaries look for (`runs.directory.RunDir.sweep_temporaries`)."""
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    mark = f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
    limit = name_max(path.parent)
    if 1 + name_bytes(mark) + name_bytes(suffix) > limit:
        suffix = ""
    stem = path.name
    while stem and name_bytes(f".{stem}{mark}{suffix}") > limit:
        stem = stem[:-1]
    return path.with_name(f".{stem}{mark}{suffix}")


def output_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` leaves: an existing file's own, else 0666 & ~umask (the umask read
    without changing it where the OS tells it, Linux; else set and restored)."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


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
        os.chmod(tmp, output_mode(path))  # a writer may create its file private (safetensors: 0600)
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

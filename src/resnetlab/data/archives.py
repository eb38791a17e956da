"""Bounds on what an archive may make resnetlab read: a member by its header's stated size before reading it (a
1 MB ``.tar.gz`` holding a 1 GiB member took over 1 GB of memory), and the members walked, by count and by total
size (skipping one still decompresses it). The bounds are far above any data set resnetlab reads from archives."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from resnetlab.errors import DataError

MAX_MEMBER_BYTES = 512 * 2**20  # one member read into memory (CIFAR-100's training file: 155 MB)
MAX_TOTAL_BYTES = 16 * 2**30  # all members walked (read or skipped), decompressed
MAX_MEMBERS = 3_000_000  # members listed (tarfile keeps an entry per member)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def member_name(name: str) -> str:
    """A member's name without its leading ``./`` (``tar -C dir .`` writes them)."""
    while name.startswith("./"):
        name = name[2:]
    return name


def members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    """The archive's members in order, stopping with a one-line error past the member or byte bounds."""
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise DataError(f"{archive}: more than {MAX_MEMBERS:,} members; extract it and give the folder")
        total += max(member.size, 0)
        if total > MAX_TOTAL_BYTES:
            raise DataError(f"{archive}: its members decompress to more than {_size(MAX_TOTAL_BYTES)}; extract "
                            "it and give the folder")
        yield member


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> bytes:
    """A member's bytes, refused before reading when its stated size is beyond MAX_MEMBER_BYTES."""
    if member.size > MAX_MEMBER_BYTES:
        raise DataError(f"{archive}: member {member.name} is {_size(member.size)} decompressed, beyond the "
                        f"{_size(MAX_MEMBER_BYTES)} resnetlab reads from one member")
    handle = tar.extractfile(member)
    return handle.read(MAX_MEMBER_BYTES + 1) if handle is not None else b""


def read_regular_file(path: Path) -> bytes:
    """A data file's bytes: a regular file within MAX_MEMBER_BYTES (a FIFO would block, a device never end)."""
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_MEMBER_BYTES:
        raise DataError(f"{path}: {_size(size)}, beyond the {_size(MAX_MEMBER_BYTES)} resnetlab reads from one file")
    return path.read_bytes()

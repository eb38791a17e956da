"""A data set given by path known by what is behind the path, as one SHA-256 (the content half of a training's
identity): a file's bytes, or a folder's manifest. Per-file digests are kept in the data cache under each file's
stamp (size, mtime, ctime, inode), so a later key of an unchanged folder only stats it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

from resnetlab.data.cache import file_stamp
from resnetlab.data.loading import parse_data_spec
from resnetlab.errors import DataError, ResnetlabError
from resnetlab.files.atomic import write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.files.reading import hashes

DIGEST_VERSION = 1


def source_digest(spec: str, cache: Path | None = None) -> str | None:
    """``"sha256:HEX"`` of what a data spec's path holds; None for a spec without a path (digits,
    synthetic, the published archives fetched by name and checked by their MD5) or whose path does not exist
    (loading it then fails with the data's own message)."""
    try:
        parsed = parse_data_spec(spec)
    except DataError:
        return None
    if parsed.arg is None or parsed.scheme in ("digits", "synthetic"):
        return None
    path = Path(os.path.abspath(os.path.expanduser(parsed.arg)))
    if not path.exists():
        return None
    return "sha256:" + content_digest(path, cache)


def content_digest(path: Path, cache: Path | None = None) -> str:
    """The SHA-256 of a file's bytes, or of a folder's manifest: one line per regular file below it (relative
    path, size, SHA-256 of the bytes), sorted by path; anything else (a FIFO, a device) by name and kind, never
    opened."""
    path = Path(os.path.abspath(path))
    record = _Record(cache, path)
    if path.is_file():
        digest = record.file_digest(path, "")
    else:
        lines = [f"{rel}\t{entry}" for rel, entry in _manifest(path, record)]
        digest = hashlib.sha256(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")).hexdigest()
    record.save()
    return digest


def _manifest(root: Path, record: _Record) -> list[tuple[str, str]]:
    """(relative path, "SIZE SHA256" or the kind of a non-regular entry) for everything below `root`."""
    entries: list[tuple[str, str]] = []
    for folder, dirs, files in os.walk(root, onerror=None, followlinks=False):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            try:
                st = os.stat(full)
            except OSError:
                entries.append((rel, "unreadable"))
                continue
            if not stat.S_ISREG(st.st_mode):
                entries.append((rel, "folder-link" if stat.S_ISDIR(st.st_mode) else "special"))
                continue
            try:
                entries.append((rel, f"{st.st_size} {record.file_digest(Path(full), rel)}"))
            except DataError:  # the readers say what they make of it; the key only needs to see it
                entries.append((rel, f"{st.st_size} unreadable"))
    return sorted(entries)


class _Record:
    """The per-file digests of one path, kept in the data cache between processes."""

    def __init__(self, cache: Path | None, path: Path) -> None:
        name = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        self.file = Path(cache).expanduser() / "digests" / f"{name}.json" if cache is not None else None
        self.old: dict[str, list[object]] = {}
        self.new: dict[str, list[object]] = {}
        if self.file is not None and self.file.is_file():
            with contextlib.suppress(OSError, ValueError):
                doc = parse_json(self.file.read_bytes(), str(self.file))
                if isinstance(doc, dict) and doc.get("version") == DIGEST_VERSION and isinstance(
                        doc.get("files"), dict):
                    self.old = doc["files"]

    def file_digest(self, path: Path, rel: str) -> str:
        stamp = file_stamp(path, rel)[1:]  # size, mtime, ctime, inode
        kept = self.old.get(rel)
        if isinstance(kept, list) and len(kept) == 2 and kept[0] == stamp and isinstance(kept[1], str):
            digest = kept[1]
        else:
            try:
                digest = hashes(path, "sha256")[0]
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
        self.new[rel] = [stamp, digest]
        return digest

    def save(self) -> None:
        if self.file is None or self.new == self.old:
            return
        with contextlib.suppress(OSError, ValueError, ResnetlabError):  # no cache: the next key hashes again
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.file, json.dumps({"version": DIGEST_VERSION, "files": self.new}))

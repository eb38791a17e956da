"""A disk cache of decoded data sets (uint8 tensors, keyed by the reader, the path and every input file's
stamp), so an archive or image folder is decoded once. A malformed entry is rebuilt; a cache that cannot be
used (read-only, full, below a file, no home directory) costs a one-line note on stderr, not the run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from resnetlab.data.base import ArrayDataset, DataOptions
from resnetlab.errors import DataError, ResnetlabError, one_line
from resnetlab.files.atomic import replace_with
from resnetlab.files.reading import torch_load

CACHE_VERSION = 1
log = logging.getLogger(__name__)

Splits = tuple[ArrayDataset, ArrayDataset]


def cache_dir(options: DataOptions) -> Path:
    """The cache directory: ``options.cache_dir``, else ``$RESNETLAB_CACHE``, else ``~/.cache/resnetlab``."""
    chosen = options.cache_dir or os.environ.get("RESNETLAB_CACHE") or "~/.cache/resnetlab"
    try:
        return Path(chosen).expanduser()
    except RuntimeError:  # no $HOME and no home in the user database (a container's arbitrary user)
        raise DataError(f"the data cache {chosen} names a home directory and this user has none; set "
                        "RESNETLAB_CACHE (or data.cache_dir) to a folder") from None


def file_stamp(path: Path, name: str | None = None) -> list[object]:
    """``[name (default: the absolute path), size, mtime_ns, ctime_ns, inode]`` of ``path``, for a cache key: a file
    rewritten with its old size and mtime (``touch -r``) still misses, as no user can set a ctime back."""
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({one_line(exc.strerror or exc)})") from None
    return [str(path.resolve()) if name is None else name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def load_entry(file: Path) -> Splits | None:
    """The splits stored in ``file`` (plain tensors and strings, read with weights_only), or None when it is
    missing, unreadable or malformed."""
    try:
        if not file.is_file():  # is_file raises for a folder without search permission
            return None
        blob = torch_load(file)
        if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
            raise ValueError("not a cache entry of this version")
        classes = blob["classes"]
        if not isinstance(classes, list):
            raise ValueError("bad class list")
        return (ArrayDataset(blob["train_images"], blob["train_labels"], classes),
                ArrayDataset(blob["test_images"], blob["test_labels"], classes))
    except Exception as exc:  # any corruption means: rebuild
        log.info("ignoring corrupt data cache %s: %s", file, one_line(exc))
        return None


def save_entry(file: Path, splits: Splits) -> None:
    """Write ``splits`` to ``file`` atomically; failure to write is a one-line note on stderr, not an error."""
    train, test = splits
    blob = {"version": CACHE_VERSION, "classes": list(train.classes),
            "train_images": train.images.contiguous(), "train_labels": train.labels,
            "test_images": test.images.contiguous(), "test_labels": test.labels}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        replace_with(file, lambda tmp: torch.save(blob, tmp))
    except (OSError, RuntimeError, ResnetlabError) as exc:  # torch.save: RuntimeError for a full or read-only disk
        _note(f"cannot write the data cache {file} ({_why_not(file, exc)})")


def _why_not(file: Path, exc: BaseException) -> str:
    """What kept ``file`` from being written, in a few words."""
    with contextlib.suppress(OSError):
        blocking = next((p for p in (file.parent, *file.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            return f"{blocking} is a file, not a folder"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = one_line(exc)
    if "strerror: " in text:  # torch's writer: "... open file failed with strerror: Read-only file system"
        return text.rsplit("strerror: ", 1)[1]
    return f"torch.save failed, a full disk? {text}" if isinstance(exc, RuntimeError) else text


def _note(what: str) -> None:
    sys.stderr.write(f"note: {what}; going on without it (RESNETLAB_CACHE or data.cache_dir moves it)\n")


def cached(reader: str, path: Path, stamps: Iterable[list[object]], options: DataOptions,
           decode: Callable[[], Splits]) -> Splits:
    """The splits of ``reader`` on ``path`` from the cache, decoding and storing them on a miss."""
    try:
        folder = cache_dir(options)
    except DataError as exc:  # no folder for it at all
        _note(f"no data cache: {exc}")
        return decode()
    key = json.dumps([CACHE_VERSION, reader, str(path.resolve()), list(stamps)], separators=(",", ":"))
    file = folder / f"{reader}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"
    hit = load_entry(file)
    if hit is not None:
        return hit
    splits = decode()
    save_entry(file, splits)
    return splits

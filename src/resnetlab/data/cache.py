"""A disk cache of decoded data sets, so an archive or image folder is decoded only once.

An entry holds the uint8 train and test arrays of one source, saved with ``torch.save`` and read back
with ``torch.load(weights_only=True)`` (plain tensors and strings only). Its key hashes the format
version, the reader, the absolute path and the size and mtime of every input file, so a changed input
misses the cache. Entries are written atomically (:mod:`resnetlab.files.atomic`); an unreadable or
malformed entry is ignored and rebuilt, and a cache directory that cannot be written only costs a one-line note
on stderr (the run goes on without the cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from resnetlab.data.base import ArrayDataset, DataOptions, one_line
from resnetlab.errors import DataError, ResnetlabError
from resnetlab.files.atomic import replace_with
from resnetlab.files.reading import torch_load

CACHE_VERSION = 1
log = logging.getLogger(__name__)

Splits = tuple[ArrayDataset, ArrayDataset]


def cache_dir(options: DataOptions) -> Path:
    """The cache directory: ``options.cache_dir``, else ``$RESNETLAB_CACHE``, else ``~/.cache/resnetlab``."""
    chosen = options.cache_dir or os.environ.get("RESNETLAB_CACHE") or "~/.cache/resnetlab"
    return Path(chosen).expanduser()


def file_stamp(path: Path) -> list[object]:
    """``[absolute path, size, mtime_ns]`` of ``path``, for a cache key."""
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({one_line(exc.strerror or exc)})") from None
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_key(reader: str, path: Path, stamps: Iterable[list[object]]) -> str:
    """A hex digest naming the entry of ``reader`` on ``path`` with the given input file stamps."""
    blob = json.dumps([CACHE_VERSION, reader, str(path.resolve()), list(stamps)], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _pack(splits: Splits) -> dict[str, object]:
    train, test = splits
    return {"version": CACHE_VERSION, "classes": list(train.classes),
            "train_images": train.images.contiguous(), "train_labels": train.labels,
            "test_images": test.images.contiguous(), "test_labels": test.labels}


def _unpack(blob: object) -> Splits:
    if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
        raise ValueError("not a cache entry of this version")
    classes = blob["classes"]
    if not isinstance(classes, list):
        raise ValueError("bad class list")
    return (ArrayDataset(blob["train_images"], blob["train_labels"], classes),
            ArrayDataset(blob["test_images"], blob["test_labels"], classes))


def load_entry(file: Path) -> Splits | None:
    """The splits stored in ``file``, or None when it is missing, unreadable or malformed."""
    if not file.is_file():
        return None
    try:
        return _unpack(torch_load(file))
    except Exception as exc:  # any corruption means: rebuild
        log.info("ignoring corrupt data cache %s: %s", file, one_line(exc))
        return None


def save_entry(file: Path, splits: Splits) -> None:
    """Write ``splits`` to ``file`` atomically; failure to write is a one-line note on stderr, not an error."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        replace_with(file, lambda tmp: torch.save(_pack(splits), tmp))
    except (OSError, ResnetlabError) as exc:
        blocking = next((p for p in (file.parent, *file.parent.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocking} is a file, not a folder" if blocking else (
            exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc))
        sys.stderr.write(f"note: cannot write the data cache {file} ({why}); going on without it "
                         "(RESNETLAB_CACHE or data.cache_dir moves it)\n")


def cached(reader: str, path: Path, stamps: Iterable[list[object]], options: DataOptions,
           decode: Callable[[], Splits]) -> Splits:
    """The splits of ``reader`` on ``path`` from the cache, decoding and storing them on a miss."""
    file = cache_dir(options) / f"{reader}-{cache_key(reader, path, stamps)}.pt"
    hit = load_entry(file)
    if hit is not None:
        return hit
    splits = decode()
    save_entry(file, splits)
    return splits

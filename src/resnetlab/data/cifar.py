"""Reader of the CIFAR-10 and CIFAR-100 python-version archives: the ``.tar.gz`` (read in place), the batches
directory or its parent. Each batch is a pickled dict of an N x 3072 uint8 ``b'data'`` array (R, G, B planes
of 32 x 32) and its labels; the meta file names the classes."""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnetlab.data.archives import member_name, members, read_member, read_regular_file
from resnetlab.data.base import ArrayDataset, DataOptions
from resnetlab.data.cache import Splits, cached, file_stamp
from resnetlab.errors import DataError, one_line

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """The only use of ``_codecs.encode`` in these pickles: a str holding bytes, back to bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,  # bytes written by Python 3 at protocol 2
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals of a pickled dict of numpy arrays, since unpickling an
    arbitrary pickle can run arbitrary code; any other global is a DataError naming the file. Python 2
    strings load as ``bytes`` (``encoding="bytes"``), as the CIFAR files need.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise DataError(f"{self._source}: refusing to unpickle global {module}.{name} (not part of the data "
                            "format)")
        return found


def safe_loads(data: bytes, source: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; every failure is a DataError naming ``source``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except Exception as exc:  # corrupt pickles raise many exception types
        raise DataError(f"{source}: not a readable pickle ({one_line(exc)})") from None


@dataclass(frozen=True)
class CifarFormat:
    """Member names and keys of one CIFAR variant."""

    dirname: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train, *self.test, self.meta)


FORMATS = {
    "cifar10": CifarFormat("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "batches.meta", b"labels", b"label_names", 10),
    "cifar100": CifarFormat("cifar-100-python", ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names",
                            100),
}


def _read_dir(batches: Path, fmt: CifarFormat) -> dict[str, tuple[str, bytes]]:
    out = {}
    for name in fmt.members:
        file = batches / name
        if not file.exists():
            raise DataError(f"{file}: missing (a {fmt.dirname}/ directory needs {', '.join(fmt.members)})")
        try:
            out[name] = (str(file), read_regular_file(file))
        except OSError as exc:
            raise DataError(f"{file}: cannot read ({one_line(exc.strerror or exc)})") from None
    return out


def _read_tar(archive: Path, fmt: CifarFormat) -> dict[str, tuple[str, bytes]]:
    lookup = {key: name for name in fmt.members for key in (name, f"{fmt.dirname}/{name}")}  # member -> name
    out: dict[str, tuple[str, bytes]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in members(tar, archive):  # sequential: no seeking back in a gzip stream
                key = lookup.get(member_name(member.name))
                if key is None or not member.isfile() or key in out:
                    continue
                out[key] = (f"{archive}:{member_name(member.name)}", read_member(tar, member, archive))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: not a readable tar archive ({one_line(exc)})") from None
    for name in fmt.members:
        if name not in out:
            raise DataError(f"{archive}: member {fmt.dirname}/{name} is missing")
    return out


def _get(obj: dict[Any, Any], key: bytes, source: str) -> Any:
    for candidate in (key, key.decode()):
        if candidate in obj:
            return obj[candidate]
    raise DataError(f"{source}: missing key {key!r}")


def _load_dict(blob: bytes, source: str) -> dict[Any, Any]:
    obj = safe_loads(blob, source)
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _parse_batch(blob: bytes, source: str, fmt: CifarFormat) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one pickled batch."""
    obj = _load_dict(blob, source)
    data = _get(obj, b"data", source)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: b'data' must be a uint8 array of shape (N, 3072), got {desc}")
    try:
        labels = np.asarray(_get(obj, fmt.label_key, source))
    except (ValueError, TypeError, OverflowError):  # ragged or non-numeric label lists
        raise DataError(f"{source}: {fmt.label_key!r} is not a flat list of integer labels") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DataError(f"{source}: {fmt.label_key!r} must be {len(data)} integer labels, "
                        f"got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= fmt.num_classes):
        raise DataError(f"{source}: labels must lie in [0, {fmt.num_classes - 1}], got [{labels.min()}, "
                        f"{labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _parse_meta(blob: bytes, source: str, fmt: CifarFormat) -> list[str]:
    obj = _load_dict(blob, source)
    names = _get(obj, fmt.names_key, source)
    if not isinstance(names, (list, tuple)) or len(names) != fmt.num_classes:
        raise DataError(f"{source}: {fmt.names_key!r} must list {fmt.num_classes} class names")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError:
        raise DataError(f"{source}: class names are not UTF-8") from None


def decode_cifar(files: dict[str, tuple[str, bytes]], fmt: CifarFormat) -> Splits:
    """Check and decode the members read (name -> (where, bytes))."""
    classes = _parse_meta(files[fmt.meta][1], files[fmt.meta][0], fmt)

    def split(names: tuple[str, ...]) -> ArrayDataset:
        parts = [_parse_batch(files[n][1], files[n][0], fmt) for n in names]
        return ArrayDataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), classes)

    return split(fmt.train), split(fmt.test)


def read_cifar(kind: str, path: Path, options: DataOptions) -> Splits:
    """The train and test splits of the ``kind`` ("cifar10"/"cifar100") data at ``path`` (the archive, the
    batches directory or its parent), cached."""
    fmt = FORMATS[kind]
    if path.is_file():
        return cached(kind, path, [file_stamp(path)], options, lambda: decode_cifar(_read_tar(path, fmt), fmt))
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory")
    batches = path if (path / fmt.meta).is_file() else path / fmt.dirname
    if not (batches / fmt.meta).is_file():
        raise DataError(f"{path}: not a {fmt.dirname}/ directory or its parent (no {fmt.meta} file found)")
    stamps = [file_stamp(batches / n) for n in fmt.members]
    return cached(kind, batches, stamps, options, lambda: decode_cifar(_read_dir(batches, fmt), fmt))

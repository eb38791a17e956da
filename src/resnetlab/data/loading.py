"""Data set specs (``cifar10:PATH``, ``digits``, ...) and the ``load_data`` entry point of the package."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from resnetlab.data.base import DataOptions, DataSource
from resnetlab.data.cifar import read_cifar
from resnetlab.data.fetch import fetch
from resnetlab.data.folder import read_folder
from resnetlab.data.imagenet import ImageNetSource
from resnetlab.data.readers import SYNTHETIC_DEFAULT, read_digits, read_synthetic
from resnetlab.data.tensor_source import TensorSource
from resnetlab.errors import DataError, one_line

SCHEMES = ("digits", "synthetic", "cifar10", "cifar100", "folder", "imagenet")
SPEC_FORMS = ("digits, synthetic, synthetic:N, cifar10, cifar10:PATH, cifar100, cifar100:PATH, folder:PATH, "
              "imagenet:PATH")
FETCHED = ("cifar10", "cifar100")  # with no path: downloaded on first use (data/fetch.py)


class DataSpec(NamedTuple):
    """A parsed data spec: the scheme and its argument (a path, or N of ``synthetic:N``; None if absent)."""

    scheme: str
    arg: str | None


def parse_data_spec(spec: str) -> DataSpec:
    """Check the syntax of a data spec (paths are not opened here); DataError listing the valid forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data set spec {spec!r}; valid: {SPEC_FORMS}")
    scheme, sep, arg = spec.strip().partition(":")
    if scheme not in SCHEMES:
        raise DataError(f"unknown data set {spec!r}; valid: {SPEC_FORMS}")
    if scheme == "digits":
        if sep:
            raise DataError(f"data set {spec!r}: digits takes no argument")
        return DataSpec(scheme, None)
    if scheme == "synthetic":
        if not sep:
            return DataSpec(scheme, None)
        if not arg.isdigit() or int(arg) < 4:
            raise DataError(f"data set {spec!r}: synthetic:N needs an integer N >= 4 (training images)")
        return DataSpec(scheme, str(int(arg)))
    if not sep and scheme in FETCHED:
        return DataSpec(scheme, None)
    if not arg:
        hint = f", or {scheme} alone to download it" if scheme in FETCHED else ""
        raise DataError(f"data set {spec!r}: {scheme} needs a path, as in {scheme}:PATH{hint}")
    return DataSpec(scheme, arg)


def load_data(spec: str, options: DataOptions | None = None) -> DataSource:
    """Load the data set named by ``spec`` (see :func:`parse_data_spec`) with ``options``.

    ``digits``, ``synthetic[:N]``, ``cifar10:PATH``, ``cifar100:PATH`` and ``folder:PATH`` give an
    in-memory :class:`TensorSource`; ``imagenet:PATH`` a streaming :class:`ImageNetSource`. ``cifar10`` and
    ``cifar100`` with no path use the archive in the data cache, downloaded on first use
    (:func:`resnetlab.data.fetch.fetch`). Every problem with the data or the options is a one-line
    :class:`DataError`.
    """
    options = options if options is not None else DataOptions()
    if not isinstance(options, DataOptions):
        raise DataError(f"load_data: options must be DataOptions, got {type(options).__name__}")
    parsed = parse_data_spec(spec)
    scheme = parsed.scheme
    try:
        if scheme == "digits":
            return TensorSource("digits", *read_digits(), options)
        if scheme == "synthetic":
            count = int(parsed.arg) if parsed.arg else SYNTHETIC_DEFAULT
            return TensorSource("synthetic", *read_synthetic(count), options)
        if parsed.arg is None and scheme in FETCHED:
            return TensorSource(scheme, *read_cifar(scheme, fetch(scheme, options=options), options), options)
        path = Path(parsed.arg or "").expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or directory (data set {spec!r})")
        if scheme == "imagenet":
            return ImageNetSource(path, options)
        if scheme == "folder":
            name = re.sub(r"(\.tar\.gz|\.tgz|\.tar)$", "", path.resolve().name, flags=re.IGNORECASE)
            return TensorSource(name, *read_folder(path, options), options)
        return TensorSource(scheme, *read_cifar(scheme, path, options), options)
    except OSError as exc:  # a last guard: file-system failures the readers did not name themselves
        where = getattr(exc, "filename", None) or parsed.arg or spec
        raise DataError(f"{where}: {one_line(exc.strerror or exc)}") from None

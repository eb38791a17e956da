"""A restricted unpickler for the CIFAR python-version batch files.

The CIFAR archives are pickles, and unpickling an arbitrary pickle can run arbitrary code. The unpickler
here resolves only the few globals that a pickled dict of numpy arrays needs (numpy's array
reconstruction, ``numpy.ndarray``, ``numpy.dtype`` and latin-1 ``_codecs.encode`` for bytes written by
Python 3 at protocol 2) and refuses every other global with a :class:`DataError` naming the file.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

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
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals of a pickled dict of numpy arrays.

    Python 2 strings load as ``bytes`` (``encoding="bytes"``), as the CIFAR files need.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise DataError(
                f"{self._source}: refusing to unpickle global {module}.{name} (not part of the data format)"
            )
        return found


def safe_loads(data: bytes, source: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; every failure is a DataError naming ``source``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except Exception as exc:  # corrupt pickles raise many exception types
        raise DataError(f"{source}: not a readable pickle ({one_line(exc)})") from None

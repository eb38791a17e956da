"""Data fixtures: tiny CIFAR archives, image folders and ImageNet layouts built in ``tmp_path``; a deadline for
calls that must not hang."""

from __future__ import annotations

import contextlib
import pickle
import signal
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.data import DataOptions

CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", b"labels", b"label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names", 100),
}


class Hung(BaseException):
    """Raised by a timer in a call that did not return; nothing in resnetlab catches it."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def ring(*_args: object) -> None:
        raise Hung(f"still running after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def write_pets(root: Path) -> Path:
    """A two-class image folder (cat, dog) of 8x8 RGB PNGs, 6 train and 2 test images a class; its path."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c, cls in enumerate(("cat", "dog")):
            (root / "pets" / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) // (1 + c)
                Image.fromarray(pixels, "RGB").save(root / "pets" / split / cls / f"{i}.png")
    return root / "pets"


def _tar_dir(src: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return archive


@pytest.fixture
def data_opts(tmp_path: Path) -> Callable[..., DataOptions]:
    """DataOptions with the cache in ``tmp_path`` (other fields as keyword arguments)."""
    def make(**kw: object) -> DataOptions:
        kw.setdefault("cache_dir", str(tmp_path / "cache"))
        return DataOptions(**kw)  # type: ignore[arg-type]
    return make


@pytest.fixture
def make_cifar(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    """Write a CIFAR-format archive (``tar=True``) or directory with a few images per batch.

    ``override`` maps a member name to the bytes written instead of its pickle. Returns the path and
    the expected ``train_x``/``train_y``/``test_x``/``test_y`` arrays.
    """
    def make(kind: str = "cifar10", tar: bool = True, per_batch: int = 3,
             override: dict[str, bytes] | None = None) -> tuple[Path, dict[str, np.ndarray]]:
        dirname, train, test, meta, label_key, names_key, k = CIFAR_LAYOUT[kind]
        rng = np.random.default_rng(len(kind))
        root = tmp_path / f"src-{kind}-{tar}"
        (root / dirname).mkdir(parents=True)
        expected: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
        for split, names in (("train", train), ("test", test)):
            for name in names:
                data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
                labels = [int(v) for v in rng.integers(0, k, size=per_batch)]
                blob = {b"batch_label": b"batch", label_key: labels, b"data": data}
                (root / dirname / name).write_bytes(pickle.dumps(blob, protocol=2))
                expected[f"{split}_x"].append(data.reshape(-1, 3, 32, 32))
                expected[f"{split}_y"].append(np.asarray(labels))
        names_list = [f"name{i}".encode() for i in range(k)]
        (root / dirname / meta).write_bytes(pickle.dumps({names_key: names_list}, protocol=2))
        for name, blob in (override or {}).items():
            (root / dirname / name).write_bytes(blob)
        out = {key: np.concatenate(value) for key, value in expected.items()}
        if not tar:
            return root / dirname, out
        return _tar_dir(root / dirname, tmp_path / f"{dirname}.tar.gz", dirname), out
    return make


def write_image(path: Path, size: tuple[int, int] = (6, 6), mode: str = "RGB", seed: int = 0,
                fmt: str | None = None) -> None:
    """Write a random image of ``size`` (w, h) in ``mode`` (PNG unless the suffix says JPEG)."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")
    img = rgb.quantize(8) if mode == "P" else rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"))


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """Write ``train/`` and ``test/`` (or ``val/``) class folders of small PNGs; optionally as .tar.gz.

    ``counts`` gives (train, test) images per class; ``prefix`` wraps the layout in one top directory.
    """
    def make(classes: tuple[str, ...] = ("cat", "dog"), counts: tuple[int, int] = (3, 2),
             test_dir: str = "test", tar: bool = False, prefix: str = "", size: tuple[int, int] = (6, 6),
             name: str = "pets") -> Path:
        root = tmp_path / name
        seed = 0
        for split, n in (("train", counts[0]), (test_dir, counts[1])):
            for cls in classes:
                for i in range(n):
                    seed += 1
                    write_image(root / split / cls / f"{i:03d}.png", size, seed=seed)
        if not tar:
            return root
        return _tar_dir(root, tmp_path / f"{name}.tar.gz", prefix or ".")
    return make


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    """3 classes x 4 train and 2 val JPEGs of about 40 x 50 pixels."""
    root = tmp_path / "imagenet"
    for c, wnid in enumerate(("n01", "n02", "n03")):
        for i in range(4):
            write_image(root / "train" / wnid / f"{i}.JPEG", (40 + i, 50), seed=10 * c + i)
        for i in range(2):
            write_image(root / "val" / wnid / f"v{i}.JPEG", (50, 40), seed=100 + 10 * c + i)
    return root


@pytest.fixture
def image_writer() -> Callable[..., None]:
    """The ``write_image`` helper, as a fixture."""
    return write_image


@pytest.fixture
def py2_batch_pickle() -> bytes:
    """A batch pickled as Python 2 wrote CIFAR: str opcodes, ``numpy.core.multiarray._reconstruct``.

    Unpickles to ``{b'data': uint8 [[0, 1, 2], [3, 4, 5]], b'labels': [1, 2]}``.
    """
    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b
    return (b"\x80\x02}(" + s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
            + s(b"b") + b"\x87R(K\x01K\x02K\x03\x86cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03"
            + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(bytes(range(6))) + b"tb"
            + s(b"labels") + b"](K\x01K\x02eu.")

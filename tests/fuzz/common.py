"""What several families share: the tiny runs they copy (made once per process), files every family may
write, and the MLflow store, ports and environments of the tracked families."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.fuzz.craft import damaged_state, image_tree

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:8", "--iters", "1"]
PROXIES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ftp_proxy", "FTP_PROXY", "all_proxy",
           "ALL_PROXY", "no_proxy", "NO_PROXY")  # unset around every case that reaches the network
STEPS = [f"step-{i:08d}.pt" for i in (1, 2, 3)]  # the checkpoints of the `multi` template, oldest first
_TEMPLATES: dict[str, Path] = {}
_ONCE: dict[str, Any] = {}


def quiet_main(argv: list[str]) -> tuple[int, str]:
    """`resnetlab.cli.main(argv)` without output; (exit code, stderr)."""
    from resnetlab.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        return main(argv), err.getvalue()


def template_run() -> Path:
    """A finished tiny run (trained once per process) that run-reading cases copy and damage."""
    if "run" not in _TEMPLATES:
        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-")) / "run"
        assert quiet_main(["train", *TINY, "--out", str(where)])[0] == 0
        _TEMPLATES["run"] = where
    return _TEMPLATES["run"]


def template_folder_run() -> Path:
    """A finished tiny run trained on a good two-class image folder (cat, dog), for eval/predict cases."""
    if "folder_run" not in _TEMPLATES:
        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-"))
        for name, data in image_tree([], 0, "train").items():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            (where / name).write_bytes(data)
        assert quiet_main(["train", "--model", "resnet20", "--set", "model.depth=8", "--iters", "1", "--data",
                           f"folder:{where / 'data'}", "--out", str(where / "run")])[0] == 0
        _TEMPLATES["folder_run"] = where / "run"
    return _TEMPLATES["folder_run"]


def image_folder(where: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3, size: int = 8,
                 seed: int = 0) -> Path:
    """An image-folder data set (train/ and test/) of random RGB PNGs, all `size` x `size`: one colour
    channel brighter per class, so a net can learn something. Returns the folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c, cls in enumerate(classes):
            (where / split / cls).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                arr = rng.integers(0, 160, (size, size, 3), dtype=np.uint8)
                arr[..., c % 3] += 90
                Image.fromarray(arr).save(where / split / cls / f"{j}.png")
    return where


def tiny_run(out: Path, data: str, epochs: int = 3, keep: int = 3, depth: int = 8) -> Path:
    """A ResNet-`depth` trained for `epochs` one-step epochs, keeping `keep` step checkpoints (and best.pt)."""
    argv = ["train", "--model", "resnet20", "--set", f"model.depth={depth}", "--data", data, "--epochs",
            str(epochs), "--set", f"run.keep_checkpoints={keep}", "--out", str(out)]
    rc, err = quiet_main(argv)
    assert rc == 0, f"the template run failed: {argv}: {err.strip()[-300:]}"
    return out


def multi_run(depth: int = 8) -> Path:
    """A run on synthetic:8 (10 classes, 32x32) with step-00000001..3.pt and best.pt, all different. Depth 8
    is fast; depth 20 is the registry's resnet20 itself, which hub's `resnet20` entry accepts."""
    if f"multi{depth}" not in _TEMPLATES:
        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-")) / "run"
        _TEMPLATES[f"multi{depth}"] = tiny_run(where, "synthetic:8", depth=depth)
    return _TEMPLATES[f"multi{depth}"]


def safetensors_of(ckpt: Path) -> bytes:
    """Checkpoint `ckpt` in the layout `resnetlab export --format safetensors` writes (export.py
    `_write_safetensors`): its tensors, `normalization.mean`/`.std`, and metadata {"format": "resnetlab",
    "resnetlab": JSON of spec, classes, image size, version}. Written here, from the checkpoint file, so the
    fuzzer's inputs do not depend on the exporter under test."""
    import safetensors.torch as stt

    from resnetlab.version import __version__
    from resnetlab.weights.checkpoint import load_checkpoint

    payload = load_checkpoint(ckpt)
    tensors = {k: v.contiguous().clone() for k, v in payload["model"].items()}
    tensors["normalization.mean"] = payload["norm"]["mean"].float().contiguous().clone()
    tensors["normalization.std"] = payload["norm"]["std"].float().contiguous().clone()
    data = payload.get("data") or {}
    info = {"spec": payload["spec"], "classes": data.get("classes"), "image_size": data.get("image_size"),
            "resnetlab": __version__}
    return stt.save(tensors, metadata={"format": "resnetlab", "resnetlab": json.dumps(info)})


def exported_bytes() -> bytes:
    """The newest checkpoint of `multi_run` as an exported .safetensors file."""
    if "safetensors" not in _TEMPLATES:
        out = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-")) / "w.safetensors"
        out.write_bytes(safetensors_of(multi_run() / "checkpoints" / STEPS[-1]))
        _TEMPLATES["safetensors"] = out
    return _TEMPLATES["safetensors"].read_bytes()


def foreign_bytes() -> bytes:
    """A CIFAR ResNet-20 state_dict in the pytorch_resnet_cifar10 layout (zeros), as a torch.save file."""
    import torch

    buf = io.BytesIO()
    torch.save(damaged_state(("peer", "none", 2))[0], buf)
    return buf.getvalue()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    if "closed" not in _ONCE:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            _ONCE["closed"] = sock.getsockname()[1]
    return _ONCE["closed"]


def store_template() -> Path:
    """A migrated, empty MLflow SQLite store (its creation takes seconds: once per process, then copied)."""
    if "store" not in _ONCE:
        from mlflow.tracking import MlflowClient

        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-mlflow-"))
        # its default artifact root, ./mlruns, is taken from the cwd
        with working_directory(where), contextlib.redirect_stderr(io.StringIO()):
            MlflowClient(f"sqlite:///{where / 'mlflow.db'}").search_experiments()
        _ONCE["store"] = where / "mlflow.db"
    return _ONCE["store"]


def installed(name: str) -> bool:
    """Whether tracker `name` can run here (MLflow's SQLite store needs sqlalchemy too)."""
    from resnetlab.settings.trackers import installed as found

    return found(name) and (name != "mlflow" or found("sqlalchemy"))


@contextlib.contextmanager
def environ(values: dict[str, str | None]) -> Iterator[None]:
    """`values` set in os.environ for the duration (None unsets), then restored."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """The current directory `path` for the duration, then the one before."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)

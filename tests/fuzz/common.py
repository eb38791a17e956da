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
from functools import cache
from pathlib import Path
from unittest import mock

from tests.fuzz.craft import damaged_state, image_tree

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:8", "--iters", "1"]
TINY_NET = [*TINY[:4], "--iters", "1"]  # TINY without its data
PROXIES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ftp_proxy", "FTP_PROXY", "all_proxy",
           "ALL_PROXY", "no_proxy", "NO_PROXY")  # unset around every case that reaches the network
STEPS = [f"step-{i:08d}.pt" for i in (1, 2, 3)]  # the checkpoints of the `multi` template, oldest first


def quiet_main(argv: list[str]) -> tuple[int, str]:
    """`resnetlab.cli.main(argv)` without output; (exit code, stderr)."""
    from resnetlab.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        return main(argv), err.getvalue()


def template_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-"))


def trained(argv: list[str], where: Path | None = None) -> Path:
    """`resnetlab train ARGV --out WHERE` (default: a new template folder's `run`), quietly; it must succeed
    (the templates are made with it)."""
    where = where or template_dir() / "run"
    rc, err = quiet_main(["train", *argv, "--out", str(where)])
    assert rc == 0, f"a template training failed: {argv}: {err.strip()[-300:]}"
    return where


def write_files(root: Path, files: dict[str, bytes]) -> None:
    """Each file of `files` (relative path -> bytes) under `root`, its folders made."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@cache
def template_run() -> Path:
    """A finished tiny run (trained once per process) that run-reading cases copy and damage."""
    return trained(TINY)


SUITE_ARGS = ["--scale", "small", "--data", "synthetic:8", "--iters", "1"]


@cache
def template_suite() -> Path:
    """A finished one-member suite (made once per process): a folder of its file `s.toml`, its `--out` `suite/`
    and the trainings index beside it, `.trainings/`."""
    where = template_dir()
    (where / "s.toml").write_text('title = "walked"\nmembers = [{ label = "a", model = "resnet20", '
                                  'small = { depth = 8 } }]\n')
    rc, err = quiet_main(["experiment", str(where / "s.toml"), *SUITE_ARGS, "--out", str(where / "suite")])
    assert rc == 0, f"the template suite failed: {err.strip()[-300:]}"
    return where


@cache
def template_folder_run() -> Path:
    """A finished tiny run trained on a good two-class image folder (cat, dog), for eval/predict cases."""
    where = template_dir()
    write_files(where, image_tree([], 0, "train"))
    return trained([*TINY_NET, "--data", f"folder:{where / 'data'}"], where / "run")


def image_folder(where: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3, size: int = 8) -> Path:
    """An image-folder data set (train/ and test/) of random RGB PNGs, all `size` x `size`: one colour
    channel brighter per class, so a net can learn something. Returns the folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
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
    return trained(["--model", "resnet20", "--set", f"model.depth={depth}", "--data", data, "--epochs", str(epochs),
                    "--set", f"run.keep_checkpoints={keep}"], out)


@cache
def multi_run(depth: int = 8) -> Path:
    """A run on synthetic:8 (10 classes, 32x32) with step-00000001..3.pt and best.pt, all different. Depth 8
    is fast; depth 20 is the registry's resnet20 itself, which hub's `resnet20` entry accepts."""
    return tiny_run(template_dir() / "run", "synthetic:8", depth=depth)


def safetensors_of(ckpt: Path) -> bytes:
    """Checkpoint `ckpt` in the layout `resnetlab export --format safetensors` writes, from the checkpoint
    file here, so that the fuzzer's inputs do not depend on the exporter under test."""
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


@cache
def exported_bytes() -> bytes:
    """The newest checkpoint of `multi_run` as an exported .safetensors file."""
    return safetensors_of(multi_run() / "checkpoints" / STEPS[-1])


def foreign_bytes() -> bytes:
    """A CIFAR ResNet-20 state_dict in the pytorch_resnet_cifar10 layout (zeros), as a torch.save file."""
    import torch

    buf = io.BytesIO()
    torch.save(damaged_state(("peer", "none", 2))[0], buf)
    return buf.getvalue()


@cache
def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@cache
def store_template() -> Path:
    """A migrated, empty MLflow SQLite store (its creation takes seconds: once per process, then copied)."""
    from mlflow.tracking import MlflowClient

    where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-mlflow-"))
    # its default artifact root, ./mlruns, is taken from the cwd
    with working_directory(where), contextlib.redirect_stderr(io.StringIO()):
        MlflowClient(f"sqlite:///{where / 'mlflow.db'}").search_experiments()
    return where / "mlflow.db"


def installed(name: str) -> bool:
    """Whether tracker `name` can run here (MLflow's SQLite store needs sqlalchemy too)."""
    from resnetlab.settings.trackers import installed as found

    return found(name) and (name != "mlflow" or found("sqlalchemy"))


def wandb_env(home: Path | str, closed: int | str) -> dict[str, str]:
    """W&B offline, quiet and kept in `home` (never online: its server is the closed loopback port `closed`)."""
    return {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_BASE_URL": f"http://127.0.0.1:{closed}",
            "WANDB_DATA_DIR": f"{home}/data", "WANDB_CACHE_DIR": f"{home}/cache",
            "WANDB_CONFIG_DIR": f"{home}/config", "WANDB_ARTIFACT_DIR": f"{home}/artifacts"}


@contextlib.contextmanager
def environ(values: dict[str, str | None]) -> Iterator[None]:
    """`values` set in os.environ for the duration (None unsets), then os.environ as it was."""
    with mock.patch.dict(os.environ):
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """The current directory `path` for the duration, then the one before."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)

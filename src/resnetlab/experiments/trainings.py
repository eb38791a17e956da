"""One training, once: what identifies a training, and the index of the trainings made beside the suites.

A suite member trains one config: its spec, data, recipe, overrides, seed and budget. Another member (the
`activations` suite's unit (a) is the `degradation` suite's resnet56 at cpu scale) or a later call with
another list of suites may train the very same config. The index says where each training lives, so such a
member gets a relative symlink to that run directory instead of a second training (no copy of the weights).

    INDEX/KEY.json     where the training lives: {"run": its directory relative to INDEX, "suite", "member"}
    INDEX/KEY.claim    flock'ed by the one worker that trains (or checks) that training right now

KEY hashes the resolved config, its model as the network it builds (`resnet110` with depth 56 is `resnet56`),
without what only says where or how a run executes and reports (device, threads, progress bar, trackers and
their tags, checkpoint cadence, activation recomputation, data loader workers and cache). A claim
is dropped by the OS when its holder dies, even by SIGKILL, so another worker takes the training over and
resumes it from its newest checkpoint. flock holds across machines on NFSv4 and on Lustre mounted with
`-o flock`; the index must be on the filesystem the workers share, as the suite's `--out` is.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from resnetlab.errors import ResnetlabError
from resnetlab.files.atomic import write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.networks.registry import get_spec

__all__ = ["INDEX_NAME", "SESSION_FIELDS", "Claim", "TrainingIndex", "default_index", "identity", "link",
           "training_key"]

INDEX_NAME = ".trainings"
# config fields that do not change what a run computes, only where and how it runs and what it reports
SESSION_FIELDS = {"run": ("device", "threads", "progress", "tensorboard", "tracker", "tracker_tags",
                          "keep_checkpoints", "checkpoint_every"),
                  "data": ("workers", "cache_dir")}
# settings added after trainings were first keyed: at these values a training is the one it was before they existed
ADDED_LATER = {"data": {"split_seed": 0}}
_PATH_SOURCES = ("cifar10", "cifar100", "folder", "imagenet")  # data sources whose argument is a path


def default_index(out: Path) -> Path:
    """The index shared by the suites beside `out` (`experiments/.trainings` for the default outs)."""
    return Path(os.path.abspath(out)).parent / INDEX_NAME


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """What determines a training: the config as `config.json` holds it, without `resolved` and the
    session fields, the model as its spec's fields (not the registry name it was reached from), and a data
    path made absolute (so two spellings of one file are one data set)."""
    kept = copy.deepcopy({k: v for k, v in config.items() if k != "resolved"})
    for section, fields in SESSION_FIELDS.items():
        for name in fields:
            if isinstance(kept.get(section), dict):
                kept[section].pop(name, None)
    for section, defaults in ADDED_LATER.items():
        for name, default in defaults.items():
            if isinstance(kept.get(section), dict) and kept[section].get(name, default) == default:
                kept[section].pop(name, None)
    kept["model"] = _network(kept.get("model"))
    data = kept.get("data")
    if isinstance(data, dict) and isinstance(data.get("source"), str):
        scheme, sep, path = data["source"].partition(":")
        if sep and scheme in _PATH_SOURCES and path and os.path.exists(os.path.expanduser(path)):
            data["source"] = f"{scheme}:{os.path.realpath(os.path.expanduser(path))}"
    return kept


def _network(model: Any) -> Any:
    """The model section as the fields of the spec it builds, less its name and the recomputation (memory
    only); as it is where it does not build (the training then fails with the config's own message)."""

    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return model
    try:
        spec = get_spec(model["name"], **{k: v for k, v in model.items() if k != "name"}).to_dict()
    except (ResnetlabError, TypeError, ValueError):
        return model
    return {k: v for k, v in spec.items() if k not in ("name", "recompute")}


def training_key(config: dict[str, Any]) -> str:
    text = json.dumps(identity(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def link(own: Path, home: Path) -> None:
    """`own` becomes a relative symlink to the run directory `home` (replacing a link that was there)."""
    own.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(home, own.parent)
    tmp = own.with_name(f".{own.name}.link-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, own)  # atomic: a reader sees the old entry or the link


class Claim:
    """One training held by this process (an open, flock'ed file); `release` or the process's end frees it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


class TrainingIndex:
    """The records and claims of the trainings under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))

    def claim(self, key: str, who: str) -> Claim | None:
        """The training `key` for this process, or None while another process holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{key}.claim", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{who} (host {socket.gethostname()}, pid {os.getpid()})".encode())
        return Claim(fd)

    def holder(self, key: str) -> str:
        """Who holds `key`, as the holder wrote it (empty when unknown)."""
        try:
            return (self.root / f"{key}.claim").read_text(errors="replace").strip()[:200]
        except OSError:
            return ""

    def home(self, key: str) -> Path | None:
        """The run directory recorded for `key`, if the record and the directory exist."""
        try:
            record = parse_json((self.root / f"{key}.json").read_bytes(), f"{key}.json")
            run = Path(os.path.normpath(self.root / record["run"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return run if run.is_dir() else None

    def record(self, key: str, run: Path, about: dict[str, Any]) -> None:
        """`run` is where the training `key` lives (written by the claim's holder only)."""
        self.root.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(os.path.abspath(run), self.root)
        write_text_atomic(self.root / f"{key}.json", json.dumps({"run": rel, **about}, indent=1) + "\n")

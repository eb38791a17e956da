"""One training, once: the index of the trainings made beside the suites, so that a member whose training
another member or suite already made (the `activations` suite's unit (a) is the `degradation` suite's
resnet56 at cpu scale) gets a relative symlink to that run directory, not a second training.

    INDEX/KEY.json     where the training lives: {"run": its directory relative to INDEX, "suite", "member"}
    INDEX/KEY.claim    flock'ed by the one worker that trains (or checks) that training right now

KEY is `training.identity.training_key`. A record is trusted only while the run directory it names still
holds that training (`key_of_run`), so an `--out` deleted and reused for another training is never linked. A
claim is dropped by the OS when its holder dies, even by SIGKILL, so another worker takes the training over.
flock holds across machines on NFSv4 and on Lustre mounted with `-o flock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from resnetlab.files.atomic import write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.training.identity import key_of_run

INDEX_NAME = ".trainings"


def default_index(out: Path) -> Path:
    """The index shared by the suites beside `out` (`experiments/.trainings` for the default outs)."""
    return Path(os.path.abspath(out)).parent / INDEX_NAME


def link(own: Path, home: Path) -> None:
    """`own` becomes a relative symlink to the run directory `home` (replacing a link that was there)."""
    own.parent.mkdir(parents=True, exist_ok=True)
    tmp = own.with_name(f".{own.name}.link-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(home, own.parent), tmp)
    os.replace(tmp, own)  # atomic: a reader sees the old entry or the link


class TrainingIndex:
    """The records and claims of the trainings under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))

    def claim(self, key: str, who: str) -> int | None:
        """The training `key` for this process: an open, flock'ed file that `release` (or the process's end)
        frees; None while another process holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{key}.claim", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{who} (host {socket.gethostname()}, pid {os.getpid()})".encode())
        return fd

    @staticmethod
    def release(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def holder(self, key: str) -> str:
        """Who holds `key`, as the holder wrote it (empty when unknown)."""
        try:
            return (self.root / f"{key}.claim").read_text(errors="replace").strip()[:200]
        except OSError:
            return ""

    def home(self, key: str) -> Path | None:
        """The run directory recorded for `key`, if the record exists and the directory still holds that
        training (a folder deleted and made again for another training does not)."""
        try:
            record = parse_json((self.root / f"{key}.json").read_bytes(), f"{key}.json")
            run = Path(os.path.normpath(self.root / record["run"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return run if run.is_dir() and key_of_run(run) == key else None

    def record(self, key: str, run: Path, about: dict[str, Any]) -> None:
        """`run` is where the training `key` lives (written by the claim's holder only)."""
        self.root.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(os.path.abspath(run), self.root)
        write_text_atomic(self.root / f"{key}.json", json.dumps({"run": rel, **about}, indent=1) + "\n")

"""The run directory, the unit of output: config, metrics as JSON lines, checkpoints, summary, figure.

    RUN/config.json        resolved config (what `--resume` and `eval` rebuild from)
    RUN/metrics.jsonl      one line per evaluation
    RUN/checkpoints/       step-XXXXXXXX.pt (rolling), best.pt
    RUN/summary.json       final and best errors, the paper's "fail" verdict, divergence
    RUN/curves.png         training error dashed, test error solid, against iterations
    RUN/log.txt            the log lines printed during training
    RUN/trackers.json      the tracker runs it reports to (run.tracker), continued by a resume
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from resnetlab.errors import CheckpointError, RunDirError
from resnetlab.files.atomic import fsync_dir, replace_with, temp_path
from resnetlab.files.jsondoc import JSONDocError, parse_json

_STEP = re.compile(r"^step-(\d{8})\.pt$")


class RunDir:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    figure = property(lambda self: self.path / "curves.png")
    log = property(lambda self: self.path / "log.txt")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best = property(lambda self: self.path / "checkpoints" / "best.pt")

    # creation and locking ------------------------------------------------------------------------------
    def check_new(self) -> None:
        try:
            here = Path.cwd()
            inside = self.path.resolve() in (here, *here.parents)
        except OSError:  # the current directory was removed: nothing of it can be replaced
            inside = False
        if self.path.name in ("", "..") or inside:  # "" is ".", "./"; both also when the cwd is gone
            raise RunDirError(f"{self.path}: the current directory or one above it cannot become a run directory "
                              "(a run directory is created whole, by one rename); give a new path, e.g. runs/NAME")
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())) \
                and not self.died_before_checkpoint():
            raise RunDirError(f"{self.path}: exists and is not empty (use --resume {self.path} to continue it)")

    def has_checkpoint(self) -> bool:
        """A rolling or best checkpoint exists: the run has trained something worth resuming."""
        return bool(self.step_checkpoints()) or self.best.exists()

    def died_before_checkpoint(self) -> bool:
        """A run that crashed or was killed before its first checkpoint (config and log, no checkpoint, no
        summary, no process holding it): nothing in it is worth keeping, so a new run may take its place."""
        p = self.path
        if not (p.is_dir() and self.config.is_file()) or self.summary.exists() or self.has_checkpoint():
            return False
        try:
            fd = os.open(p / ".lock", os.O_RDONLY)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
            return True
        except OSError:
            return False  # a process is running it
        finally:
            os.close(fd)

    def create(self, config: dict[str, Any]) -> None:
        """Create the directory with its config, locked, in one rename: it exists complete or not at all.
        A run that died before its first checkpoint is replaced (`died_before_checkpoint`)."""
        self.check_new()
        if self.path.exists() and self.died_before_checkpoint():
            shutil.rmtree(self.path, ignore_errors=True)
        final = self.path
        tmp = temp_path(final, suffix="")  # a name that fits wherever the run's own name fits
        try:
            (tmp / "checkpoints").mkdir(parents=True)
            self.path = tmp
            self.lock()  # the lock is on the inode: it stays held across the rename
            self.write_json(self.config, config)
            os.rename(tmp, final)  # replaces an empty directory of that name, if any
            self.path = final
            fsync_dir(final.parent)
        except OSError as exc:
            self.path = final
            self.unlock()
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunDirError(f"{final}: cannot create ({exc.strerror or exc})") from None

    def lock(self) -> None:
        """One writer per run directory; the OS drops the lock when the process dies, even by SIGKILL."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(f"{self.path}: in use by process {holder} (one writer per run)") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # files -----------------------------------------------------------------------------------------------
    def write_json(self, path: Path, data: Any) -> None:
        """`data` as indented JSON, atomically; an OSError as it comes (`create` words it)."""
        text = json.dumps(data, indent=2) + "\n"
        replace_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def read_config(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such run directory")
        try:
            return parse_json(self.config.read_bytes(), str(self.config))
        except FileNotFoundError:
            raise RunDirError(f"{self.path}: not a run directory (no config.json)") from None
        except OSError as exc:
            raise RunDirError(f"{self.config}: unreadable ({exc.strerror or exc})") from None
        except JSONDocError as exc:
            raise RunDirError(str(exc)) from None

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl, in order. A line that is not a JSON object is dropped: one cut by a crash,
        one nested too deep, one of another shape, one whose bytes are not UTF-8 (decoded line by line, so a
        bad byte costs its own line only)."""
        rows = []
        if self.metrics.exists():
            for line in self.metrics.read_bytes().splitlines():
                with contextlib.suppress(ValueError):  # not UTF-8 (UnicodeDecodeError), not JSON or too deep
                    row = parse_json(line.decode("utf-8"), "metrics.jsonl")
                    if isinstance(row, dict):  # and a line of another shape
                        rows.append(row)
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop rows after `step` (a resumed run recomputes them), and rows whose step is not a number."""
        rows = [r for r in self.read_metrics()
                if isinstance(s := r.get("step", 0), int | float) and not isinstance(s, bool) and s <= step]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        replace_with(self.metrics, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    # checkpoints -----------------------------------------------------------------------------------------
    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.pt"

    def step_checkpoints(self) -> list[Path]:
        """Rolling checkpoints, newest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if _STEP.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def prune(self, keep: int) -> None:
        for old in self.step_checkpoints()[keep:]:
            with contextlib.suppress(OSError):
                old.unlink()
        fsync_dir(self.checkpoints)

    def sweep_temporaries(self) -> None:
        """Remove the temporaries a process killed mid-write left (of a checkpoint, curves.png, metrics.jsonl,
        summary.json, ...): only an earlier process can have left them, so a resume sweeps once, under the lock."""
        for folder in (self.checkpoints, self.path):
            for tmp in folder.glob(".*.tmp-*"):
                if tmp.is_file():
                    with contextlib.suppress(OSError):
                        tmp.unlink()

    def latest_good(self, loader: Any) -> tuple[Path, dict[str, Any], list[str]]:
        """The newest checkpoint that verifies; also the problems of newer ones that did not."""
        problems = []
        for path in self.step_checkpoints():
            try:
                return path, loader(path), problems
            except CheckpointError as exc:
                problems.append(str(exc))
        detail = f" ({problems[0]})" if problems else ""
        raise CheckpointError(f"{self.path}: no checkpoint of this run verifies{detail}")

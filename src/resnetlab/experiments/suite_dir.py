"""A suite's output directory as the workers share it: which suite it holds (`suite.json`), the lock every
worker holds while it works, and the results written by the last of them."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnetlab.errors import ConfigError
from resnetlab.files.atomic import create_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.runs.outputs import SUITE_FILE


class SuiteDir:
    """A suite's output directory: which suite it holds, and who is writing into it.

    `suite.json` names the suite, scale, data, recipe and budget on the first call; a later call with another
    of these is refused, so two suites never write into each other's members or results. A lock (flock on
    `.suite.lock`, dropped by the OS when the process dies) is held shared by every worker for its call
    (`suite_work.py`: a per-training claim keeps two workers off one member); a worker that is done takes it
    exclusively for an instant, to learn whether it is the last (`last`), and so writes the results."""

    WAIT_S = 2.0  # how long a worker waits for an exclusive holder (another worker asking `last`)

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def claim(self, identity: dict[str, Any], shared: bool) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {self.path}: cannot create ({exc.strerror or exc})") from None
        if not self.path.is_dir():
            raise ConfigError(f"--out {self.path}: is not a directory")
        fd = os.open(self.path / ".suite.lock", os.O_RDWR | os.O_CREAT, 0o644)
        waited_until = time.monotonic() + self.WAIT_S
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > waited_until:
                    os.close(fd)
                    raise ConfigError(f"--out {self.path}: another resnetlab experiment is writing into it "
                                      "alone; wait for it or give another --out") from None
                time.sleep(0.05)
        self._fd = fd
        try:
            held = self.path / SUITE_FILE
            if held.exists():
                try:
                    before = parse_json(held.read_bytes(), str(held))
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"{held}: unreadable ({exc}); remove it to reuse this --out") from None
                if not isinstance(before, dict):
                    raise ConfigError(f"{held}: expected a JSON object, got {type(before).__name__}")
                differ = [k for k in identity if k in before and before[k] != identity[k]]
                if differ:
                    k = differ[0]
                    raise ConfigError(f"--out {self.path} holds {before.get('suite')!r} with {k} "
                                      f"{before[k]!r}, not {identity[k]!r}: give another --out")
            elif not create_text_atomic(held, json.dumps(identity, indent=2) + "\n"):
                self.release()  # another worker wrote it first: compare with theirs
                self.claim(identity, shared)
        except BaseException:
            self.release()
            raise

    def last(self) -> bool:
        """Whether no other worker holds the directory now (this one then writes the results); the lock is
        given up either way."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
            return True
        except (OSError, TypeError):
            return False
        finally:
            self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_when_last(suite_dir: SuiteDir, out: Path, write: Callable[[], None], log: Callable[[str], Any],
                    now: bool = False) -> bool:
    """Write the results if this worker is the last one on the suite (or `now`, for `--collect`); the
    writers of one suite take turns (`.results.lock`). Whether they were written."""
    if not now and not suite_dir.last():
        log(f"results: left to the last worker on {out} (others are still training)")
        return False
    fd = os.open(Path(out) / ".results.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write()
    finally:
        os.close(fd)
    log(f"results: {Path(out) / 'results.md'} (and results.csv, curves.png, errors.png)")
    return True

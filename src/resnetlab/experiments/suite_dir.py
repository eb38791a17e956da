"""A suite's output directory as the workers share it: the call it holds (`suite.json`), the lock every
worker holds while it works, and the results written by the last of them."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnetlab.errors import ConfigError, ResnetlabError, one_line
from resnetlab.files.atomic import create_text_atomic, write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.files.reading import read_file
from resnetlab.runs.outputs import SUITE_FILE

# what a call of `resnetlab experiment` asks for: another call on the same --out must ask for the same
CALL_FIELDS = ("suite", "scale", "data", "recipe", "epochs", "iters", "seeds", "settings")
FIRST_FIELDS = ("suite", "scale", "recipe", "epochs", "iters")  # what suite.json held before (and data, as given)


def try_lock(path: Path, shared: bool = False) -> int | None:
    """`path` (made if missing) opened and flock'ed without waiting: the open file, whose closing (or the
    process's end, even by SIGKILL) drops the lock; None while another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class SuiteDir:
    """A suite's output directory: `suite.json`, the whole call that made it (what it asks for, the contents of
    the files it names, every member's training key), so that a call or worker that asks for anything else is
    refused in one line naming what differs; and `.suite.lock`, flock'ed shared by every worker for its call
    (dropped by the OS when the process dies) and taken exclusively for an instant by a worker that is done, to
    learn whether it is the last (which writes the results)."""

    WAIT_S = 2.0  # how long a worker waits for an exclusive holder (another worker asking if it is the last)

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def claim(self, call: dict[str, Any], shared: bool,
              holds: Callable[[dict[str, Any]], str | None] | None = None, add_seeds: bool = False) -> None:
        """Hold the directory for `call`. `holds(call)`, for a suite.json written before calls were recorded
        whole: what in the directory is not this call's (None when it all is), then suite.json is upgraded.
        `add_seeds`: a call that differs from the recorded one only in asking for more seeds takes the --out
        over (`experiment --add-seeds`), once no worker of the recorded call is running."""
        self._lock(shared)
        try:
            held = self.path / SUITE_FILE
            if held.exists():
                before = self._read(held)
                if "trainings" not in before:  # made before whole calls were kept: check its runs instead
                    problem = _compare(before, call, FIRST_FIELDS) or (holds(call) if holds else None)
                    if problem:
                        raise ConfigError(f"--out {self.path} {problem}: give another --out")
                    write_text_atomic(held, json.dumps(call, indent=2) + "\n")
                    return
                problem = _compare(before, call, CALL_FIELDS + ("contents", "trainings"))
                if problem and add_seeds and _more_seeds(before, call):
                    if not self._rewrite(held, call, shared):
                        raise ConfigError(f"--out {self.path}: workers of its call with {before['seeds']} seed(s) "
                                          "are running; add seeds once they are done")
                elif problem and (self._holds_work() or not self._rewrite(held, call, shared)):
                    hint = " (--add-seeds trains more seeds into it)" if _more_seeds(before, call) else ""
                    raise ConfigError(f"--out {self.path} {problem}{hint}: give another --out")
            elif not create_text_atomic(held, json.dumps(call, indent=2) + "\n"):
                self.release()  # another worker wrote it first: compare with theirs
                self.claim(call, shared, holds, add_seeds)
        except BaseException:
            self.release()
            raise

    def _holds_work(self) -> bool:
        """Whether any training of the recorded call began: an --out where none did (its members failed before,
        or never started) is taken over by another call when no other worker holds it."""
        return any((run / "config.json").exists() or run.is_symlink() for run in self.path.glob("*/seed*"))

    def _rewrite(self, held: Path, call: dict[str, Any], shared: bool) -> bool:
        """`call` into suite.json, if no other worker holds the directory now (False otherwise)."""
        if not self._alone():
            return False
        try:
            write_text_atomic(held, json.dumps(call, indent=2) + "\n")
        finally:
            if shared:
                fcntl.flock(self._fd, fcntl.LOCK_SH)  # type: ignore[arg-type]
        return True

    def _lock(self, shared: bool) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {self.path}: cannot create ({exc.strerror or exc})") from None
        if not self.path.is_dir():
            raise ConfigError(f"--out {self.path}: is not a directory")
        waited_until = time.monotonic() + self.WAIT_S
        while (fd := try_lock(self.path / ".suite.lock", shared)) is None:
            if time.monotonic() > waited_until:
                raise ConfigError(f"--out {self.path}: another resnetlab experiment is writing into it "
                                  "alone; wait for it or give another --out")
            time.sleep(0.05)
        self._fd = fd

    @staticmethod
    def _read(held: Path) -> dict[str, Any]:
        try:
            before = parse_json(read_file(held), str(held))
        except (OSError, ValueError, ResnetlabError) as exc:
            raise ConfigError(f"{held}: unreadable ({one_line(exc)}); remove it to reuse this --out") from None
        if not isinstance(before, dict):
            raise ConfigError(f"{held}: expected a JSON object, got {type(before).__name__}")
        return before

    def _alone(self) -> bool:
        """Whether no other worker holds the directory now (this one then holds it exclusively)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
        except (OSError, TypeError):
            return False
        return True

    def _none_left(self) -> bool:
        """Whether no worker holds the directory, asked after letting go: two workers done at once can each
        find the other still holding it, and then the one that lets go last finds it free."""
        fd = try_lock(self.path / ".suite.lock")
        if fd is not None:
            os.close(fd)
        return fd is not None

    def write_when_last(self, write: Callable[[], None], log: Callable[[str], Any], now: bool = False) -> None:
        """`write` the results if this worker is the last on the suite (or `now`, for `--collect`); the lock is
        given up either way, and the writers of one suite take turns (`.results.lock`)."""
        if not now:
            last = self._alone()
            self.release()
            if not last and not self._none_left():
                log(f"results: left to the last worker on {self.path} (others are still training)")
                return
        fd = os.open(self.path / ".results.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            write()
        finally:
            os.close(fd)
        log(f"results: {self.path / 'results.md'} (and results.csv, curves.png, errors.png)")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _compare(before: dict[str, Any], call: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """What the call recorded in `before` asks for that `call` does not, in words; None when they agree."""
    for k in fields:
        old, new = _plain(before.get(k)), _plain(call.get(k))
        if old == new or (k == "data" and "data" in _table(before.get("contents"))
                          and "data" in _table(call.get("contents"))):  # a path is the same data by content
            continue
        if k == "trainings" and isinstance(old, dict) and isinstance(new, dict):
            other = sorted(t for t in set(old) | set(new) if old.get(t) != new.get(t))
            more = f" (and {len(other) - 1} more)" if len(other) > 1 else ""
            return (f"holds {'other trainings' if more else 'another training'} for {other[0]}{more} than this "
                    "call makes (the suite's file or resnetlab changed since)")
        if k == "contents":
            if not isinstance(old, dict):
                return f"has a damaged suite.json (contents: {_shown(old)}, not a record of files)"
            new = _table(new)
            changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
            return f"was made from other contents of {', '.join(changed)} (the files behind the path changed)"
        if isinstance(old, dict) or isinstance(new, dict):
            old, new = _table(old), _table(new)
            changed = [f"{n}: {_shown(old.get(n, '-'))} -> {_shown(new.get(n, '-'))}"
                       for n in sorted(set(old) | set(new)) if old.get(n, "-") != new.get(n, "-")]
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            return f"holds {before.get('suite')!r} made with other {k} ({'; '.join(changed[:3])}{more})"
        if k == "suite":
            return f"holds suite {_shown(old)}, not {_shown(new)}"
        return f"holds {before.get('suite')!r} with {k} {_shown(old)}, not {_shown(new)}"
    return None


def _more_seeds(before: dict[str, Any], call: dict[str, Any]) -> bool:
    """Whether `call` is the recorded call with more seeds: the same in all else, the same trainings for the
    seeds it had."""
    same = all(_plain(before.get(k)) == _plain(call.get(k)) for k in CALL_FIELDS + ("contents",) if k != "seeds")
    old, new = before.get("trainings"), call.get("trainings")
    return (same and isinstance(before.get("seeds"), int) and call["seeds"] > before["seeds"]
            and isinstance(old, dict) and isinstance(new, dict) and all(new.get(k) == v for k, v in old.items()))


def _table(value: Any) -> dict[str, Any]:
    """A recorded object field as a dict; another shape (a hand-edited suite.json) as an empty one."""
    return value if isinstance(value, dict) else {}


def _plain(value: Any) -> Any:
    """A value as it reads back from JSON (tuples as lists), so a call compares equal to its record."""
    return json.loads(json.dumps(value, default=str))


def _shown(value: Any) -> str:
    text = "none" if value is None else "unset" if value == "-" else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


"""The fuzzer's core: what a case is, how it ended, and the registry of families (each a hypothesis strategy of
`Case`s with optional hooks, registered by name, so that the running and the judge never name a family)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

# the hostile paths a case may name as {NAME}: made once per case directory ({root})
PATHS = {"missing": "{root}/missing", "dir": "{root}/dir", "empty": "{root}/empty.pt", "garbage": "{root}/garbage.pt",
         "text": "{root}/text.toml", "json": "{root}/doc.json", "fifo": "{root}/fifo", "loop": "{root}/loop",
         "devnull": "/dev/null", "devzero": "/dev/zero", "dot": ".", "blank": "", "long": "{root}/" + "a" * 300,
         "deep": "{root}/dir/x/y/z.png"}
PATH_ARG = st.sampled_from([f"{{{k}}}" for k in PATHS])  # one of the hostile paths, as its placeholder


def _paths(root: Path) -> dict[str, str]:
    (root / "dir").mkdir(exist_ok=True)
    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(os.urandom(257))
    (root / "text.toml").write_text("this is = not [toml\n")
    (root / "doc.json").write_text('{"model": 5}')
    if not (root / "fifo").exists():
        os.mkfifo(root / "fifo")
    if not (root / "loop").is_symlink():
        (root / "loop").symlink_to(root / "loop")
    return {k: v.replace("{root}", str(root)) for k, v in PATHS.items()}


@dataclass
class Case:
    """One generated input: the argument list (with `{NAME}` placeholders), the files and set-up it needs."""

    family: str
    argv: list[str]
    files: dict[str, Any] = field(default_factory=dict)  # relative path -> JSON value, bytes or TOML text
    env: dict[str, str | None] = field(default_factory=dict)  # set around the command ({root} filled; None: unset)
    writable: tuple[str, ...] | None = None  # paths (relative) it may change; None: its -o/--out/--resume targets
    invalid: str = ""  # why the input must be refused, where it must: exit 0 on it is a finding
    steps: tuple[Any, ...] = ()  # set-up steps, in order, carried out by the family's `setup`

    def render(self, root: Path) -> list[str]:
        """The argument list with {NAME} placeholders replaced by paths under `root`."""
        paths = _paths(root) | {"root": str(root)}
        return [re.sub(r"\{(\w+)\}", lambda m: paths.get(m.group(1), m.group(0)), a) for a in self.argv]


@dataclass
class Outcome:
    """How a case ended; `problem` None: as bad input should."""

    argv: list[str]
    rc: int | None
    err: str
    problem: str | None


@dataclass
class Ended:
    """A case's command for the judge's checks: its case, rendered argv and directory, what the directory held
    before the command ran and the answers known in advance; once it has ended, its exit code and output."""

    case: Case
    argv: list[str]
    root: Path
    files: dict[str, tuple[Any, ...]]  # relative path -> ("file", size, sha256) | ("link", target) | (kind,)
    writable: tuple[str, ...]
    expected: Path | None = None  # the checkpoint (or weights file) a reader must use, where one is known
    images: list[str] | None = None  # predict: the image files it must answer for, in order
    output: str | None = None  # export: the -o path
    extra: dict[str, Any] = field(default_factory=dict)
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class Family:
    """A family of cases: its strategy and the hooks the running and the judge call."""

    name: str
    strategy: Callable[[], st.SearchStrategy[Case]]
    setup: Callable[[Path, Any], None] | None = None  # carries out one of `Case.steps` in the case's directory
    around: Callable[[Case, Path], AbstractContextManager[None]] | None = None  # around the command
    after: Callable[[Ended], str | None] | None = None  # its own checks, once the common judge has passed
    main: Callable[[list[str]], int] | None = None  # what the argv is given to (not `resnetlab.cli.main`)
    run: Callable[[Case, Path], Outcome] | None = None  # runs and judges its cases itself (child processes)


FAMILIES: dict[str, Family] = {}


def register(*families: Family) -> None:
    """Add families to the registry (a module registers its own when imported)."""
    for family in families:
        FAMILIES[family.name] = family


_AT_END: list[Callable[[], None]] = []


def at_case_end(callback: Callable[[], None]) -> None:
    """Call `callback` when the running case ends, however it ends (a lock a set-up step holds, closed)."""
    _AT_END.append(callback)


def end_case() -> None:
    """Call what the case asked to be called at its end (the running calls it)."""
    while _AT_END:
        _AT_END.pop()()

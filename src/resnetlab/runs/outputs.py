"""Where a command may write a file of its own (an export, a report, a figure): never over its input, never over
a file of a run or suite directory, never into a run's checkpoints/."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from resnetlab.errors import ResnetlabError
from resnetlab.files.atomic import name_bytes, name_max, refuse_special
from resnetlab.runs.directory import RunDir

SUITE_FILE = "suite.json"  # what makes a folder a suite's output (experiments.suite_dir.SuiteDir writes it)


def check_output(out: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """The checks made on a file a command will write, before any work: it must not be one of the command's
    `inputs` (nor a link to one), nor replace a file of a run or suite directory, nor go into a run's
    checkpoints/; its folder must exist and its name fit the file system.
    Returns the path; a one-line ResnetlabError otherwise."""
    out = Path(out).expanduser()
    if not out.name:  # ".", "/", "": a folder, and no name to write beside it
        raise ResnetlabError(f"{out}: names a folder, not a file to write")
    parent = out.parent
    size, limit = name_bytes(out.name), name_max(parent if parent.is_dir() else ".")
    if size > limit:  # its temporary names fit wherever it fits (`files.atomic.temp_path`)
        raise ResnetlabError(f"{out}: the file name is too long ({size} bytes; this file system takes {limit})")
    if not parent.is_dir():
        raise ResnetlabError(f"{out}: no such directory {parent}")
    refuse_special(out)
    try:
        target = out.resolve()
    except (RuntimeError, OSError) as exc:  # a symbolic link loop (RuntimeError before Python 3.13)
        raise ResnetlabError(f"{out}: cannot be resolved ({getattr(exc, 'strerror', None) or 'a symbolic link loop'})"
                             ) from None
    for given in inputs:
        given = Path(given).expanduser()
        if given.exists() and (target == given.resolve() or (out.exists() and os.path.samefile(out, given))):
            raise ResnetlabError(f"{out}: is this command's input {given}; an output never replaces its input")
    for folder in target.parents:  # the nearest run or suite directory it lies in, if any
        run = RunDir(folder)
        if run.config.is_file() and run.checkpoints.is_dir():
            if run.checkpoints in (target, *target.parents):
                raise ResnetlabError(f"{out}: inside the checkpoints/ of run {folder}; write it elsewhere")
            kind = "run"
        elif (folder / SUITE_FILE).is_file():
            kind = "suite"
        else:
            continue
        if out.exists():
            raise ResnetlabError(f"{out}: a file of {kind} directory {folder}; an output never replaces one "
                                 "(give a new name)")
        break
    return out

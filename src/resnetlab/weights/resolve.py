"""What a path means, once for every command (`eval`, `train --resume` and `--init`, `export`, `predict`, `analyze
--checkpoint`, the hub): a run directory is its newest checkpoint that verifies (or `best.pt` with --best), a file
is its own format (`formats.read_weights`)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from resnetlab.data import DataSource
from resnetlab.errors import CheckpointError, ConfigError, ResnetlabError
from resnetlab.networks.net import ResNet
from resnetlab.runs.directory import RunDir
from resnetlab.weights.formats import Weights, load_into, read_weights


def resolve(path: str | Path, best: bool = False) -> Weights:
    """The weights a path means, the same for every command: a run directory's newest checkpoint that verifies
    (newer ones that do not are listed in `skipped`), or its `best.pt` with `best`; a file, its own contents.
    Any problem is a one-line CheckpointError naming the path."""
    path = Path(path).expanduser()
    if not path.is_dir():
        if best:
            raise ConfigError("--best picks a run directory's best.pt; it does not apply to a file")
        return read_weights(path)
    run = RunDir(path)
    if not (run.config.is_file() or run.checkpoints.is_dir()):
        raise CheckpointError(f"{path}: a folder, not a run directory (no config.json or checkpoints/)")
    if best:
        if not run.best.is_file():
            raise CheckpointError(f"{path}: no checkpoints/best.pt in this run directory")
        return read_weights(run.best)
    if not run.step_checkpoints():
        hint = " (it has a best.pt: use --best)" if run.best.is_file() else ""
        raise CheckpointError(f"{path}: no checkpoint in this run directory{hint}")
    _, weights, problems = run.latest_good(read_weights)
    return dataclasses.replace(weights, skipped=tuple(problems))


def start_from(model: ResNet, source: DataSource, path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """A new run's initial weights and input normalisation from a weights file; the record for config.json.
    `sha256`: the file must still be the one a run recorded when it started (a restart before any checkpoint)."""
    weights = resolve(path)
    if sha256 is not None and weights.sha256 != sha256:
        raise CheckpointError(f"{weights.path}: changed since the run started (SHA-256 {weights.sha256[:16]}..., "
                              f"recorded {sha256[:16]}...)")
    load_into(model, weights)
    try:  # the source's images normalised as the weights were trained to see them
        source.load_norm_state(weights.norm)
    except ResnetlabError as exc:
        raise CheckpointError(f"{weights.path}: its input normalisation does not fit the data ({exc})") from None
    return weights.record()


def note_skipped(skipped: tuple[str, ...], used: str | Path) -> None:
    """Say on stderr which newer checkpoints of a run directory did not verify, so using an older one is
    never silent (commands call it once their work has succeeded)."""
    for problem in skipped:
        sys.stderr.write(f"note: skipped {problem}; used {Path(used).name}\n")

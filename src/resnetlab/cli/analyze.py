"""`resnetlab analyze propagation`: forward signal and gradient per residual unit (v2 eq. 4-7) of registry nets
at init and of trained runs, as a table on stdout and a figure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from resnetlab.api.studies import check_propagation, propagation
from resnetlab.cli.commands import print_json
from resnetlab.errors import ConfigError, ResnetlabError
from resnetlab.experiments.propagation import FIGURE_FORMATS
from resnetlab.runs.outputs import check_output
from resnetlab.settings.overrides import parse_assignments
from resnetlab.weights.resolve import note_skipped


def cmd_propagation(args: argparse.Namespace) -> int:
    return run_propagation_cli(args.model or [], args.override or [], args.checkpoint, args.data, args.batch_size,
                               args.seed, args.out, args.eval_mode, json=args.json)


def run_propagation_cli(models: list[str], overrides: list[str], checkpoint: str | None, data: str | None,
                        batch_size: int, seed: int, out: str | None, eval_mode: bool, json: bool = False) -> int:
    """Table on stdout, figure at `out` (default ./propagation.png): `resnetlab.api.propagation`'s numbers.

    Registry models (`models`, each with `overrides` applied) are built at their paper init under `seed`,
    fitted to the data's channels and classes. A `checkpoint` (run directory or file) adds its trained model;
    it brings its data set and normalisation, which `data` may replace. The batch is the first
    `batch_size` images of the test split, normalised as training normalises them. `json`: the numbers as
    JSON on stdout instead of the table.
    """
    spec_overrides, figure = _checked(models, overrides, checkpoint, batch_size, out)
    found = propagation(models, checkpoint, data, batch_size, seed, eval_mode, **spec_overrides)
    if json:
        _make_folder(figure)
        found.plot(figure)
        print_json({"data": found.data, "batch": found.batch, "eval_mode": eval_mode, "seed": seed,
                    "checkpoint": found.checkpoint, "figure": str(figure), "nets": found.results,
                    "summary": found.summary()})
    else:
        _print_and_plot(found, seed, figure)
    if found.checkpoint is not None:
        note_skipped(found.skipped, found.checkpoint)
    return 0


def _print_and_plot(found: Any, seed: int, figure: Path) -> None:
    print(f"signal propagation on one {found.data} test batch of {found.batch}, {found.mode}, seed {seed}:")
    print(found.table())
    _make_folder(figure)
    found.plot(figure)
    print(f"figure: {figure}")


def _make_folder(figure: Path) -> None:
    try:
        figure.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(f"{figure.parent}: cannot create the figure's directory ({exc.strerror or exc})") from None


def _checked(models: list[str], overrides: list[str], checkpoint: str | None, batch_size: int,
             out: str | None) -> tuple[dict[str, Any], Path]:
    """The arguments checked before anything is loaded: the spec overrides and the figure's path."""
    spec_overrides = parse_assignments(overrides, "--override")
    check_propagation(models, checkpoint, batch_size, spec_overrides)
    figure = Path(out) if out else Path("propagation.png")
    if figure.suffix.lower() not in FIGURE_FORMATS:
        raise ConfigError(f"--out {figure}: figure must end with {', '.join(FIGURE_FORMATS)}")
    if figure.parent.is_dir():  # a missing folder is created below; in one, the figure replaces no run's file
        check_output(figure, [checkpoint] if checkpoint else [])
    return spec_overrides, figure

"""`resnetlab analyze propagation`: forward signal and gradient per residual unit (v2 eq. 4-7) of registry nets
at init and of trained runs, as a table on stdout and a figure."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    """`resnetlab.api.propagation`'s numbers as a table (with `json`: as JSON) on stdout, and its figure at `out`
    (default ./propagation.png). Every argument, the figure's path included, is checked before anything is loaded.
    """
    spec_overrides = parse_assignments(overrides, "--override")
    check_propagation(models, checkpoint, batch_size, spec_overrides)
    figure = Path(out) if out else Path("propagation.png")
    if figure.suffix.lower() not in FIGURE_FORMATS:
        raise ConfigError(f"--out {figure}: figure must end with {', '.join(FIGURE_FORMATS)}")
    if figure.parent.is_dir():  # a missing folder is created below; in one, the figure replaces no run's file
        check_output(figure, [checkpoint] if checkpoint else [])
    found = propagation(models, checkpoint, data, batch_size, seed, eval_mode, **spec_overrides)
    if not json:
        print(f"signal propagation on one {found.data} test batch of {found.batch}, {found.mode}, seed {seed}:")
        print(found.table())
    try:
        figure.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(f"{figure.parent}: cannot create the figure's directory ({exc.strerror or exc})") from None
    found.plot(figure)
    if json:
        print_json({"data": found.data, "batch": found.batch, "eval_mode": eval_mode, "seed": seed,
                    "checkpoint": found.checkpoint, "figure": str(figure), "nets": found.results,
                    "summary": found.summary()})
    else:
        print(f"figure: {figure}")
    if found.checkpoint is not None:
        note_skipped(found.skipped, found.checkpoint)
    return 0

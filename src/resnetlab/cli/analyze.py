"""`resnetlab analyze propagation`: forward signal and gradient per residual unit (v2 eq. 4-7) of registry nets
at init and of trained runs, as a table on stdout and a figure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from resnetlab.errors import ConfigError, ResnetlabError


def cmd_propagation(args: argparse.Namespace) -> int:
    return run_propagation_cli(args.model or [], args.override or [], args.checkpoint, args.data, args.batch_size,
                               args.seed, args.out, args.eval_mode)


def run_propagation_cli(models: list[str], overrides: list[str], checkpoint: str | None, data: str | None,
                        batch_size: int, seed: int, out: str | None, eval_mode: bool) -> int:
    """Table on stdout, figure at `out` (default ./propagation.png).

    Registry models (`models`, each with `overrides` applied) are built at their paper init under `seed`,
    fitted to the data's channels and classes. A `checkpoint` (run directory or file) adds its trained model;
    it brings its data set and normalisation, which `data` may replace. The batch is the first
    `batch_size` images of the test split, normalised as training normalises them.
    """
    import torch

    from resnetlab.experiments.propagation import format_propagation, plot_propagation, propagation

    spec_overrides, figure = _checked(models, overrides, checkpoint, batch_size, out)
    named, source, weights = _networks(models, spec_overrides, checkpoint, data, seed)
    x, y = next(iter(source.eval_batches("test", batch_size)))
    results: dict[str, Any] = {}
    for name, model in named.items():
        torch.manual_seed(seed)  # the same dropout draws for every model, run to run
        try:
            results[name] = propagation(model, x, y, eval_mode=eval_mode)
        except (RuntimeError, ValueError) as exc:  # e.g. an ImageNet stem pools an 8x8 input to nothing
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ResnetlabError(f"{name}: cannot run on {source.name} input {tuple(x.shape)} ({first})") from None

    mode = "eval mode (running BN statistics)" if eval_mode else "train mode (batch BN statistics)"
    print(f"signal propagation on one {source.name} test batch of {len(y)}, {mode}, seed {seed}:")
    print(format_propagation(results))
    try:
        figure.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(f"{figure.parent}: cannot create the figure's directory ({exc.strerror or exc})") from None
    plot_propagation(results, figure, title=f"{', '.join(named)} on {source.name} (batch {len(y)}, {mode})")
    print(f"figure: {figure}")
    if weights is not None:
        from resnetlab.weights.resolve import note_skipped

        note_skipped(weights.skipped, weights.path)
    return 0


def _checked(models: list[str], overrides: list[str], checkpoint: str | None, batch_size: int,
             out: str | None) -> tuple[dict[str, Any], Path]:
    """The arguments checked before anything is loaded: the spec overrides and the figure's path."""
    from resnetlab.experiments.propagation import FIGURE_FORMATS
    from resnetlab.runs.outputs import check_output
    from resnetlab.settings.overrides import parse_assignments

    if not models and checkpoint is None:
        raise ConfigError("give at least one --model NAME or a --checkpoint RUN_DIR")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size: expected an integer >= 1, got {batch_size!r}")
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise ConfigError(f"--model {repeated[0]} given twice")
    spec_overrides = parse_assignments(overrides, "--override")
    if spec_overrides and not models:
        raise ConfigError("--override applies to --model networks; a checkpoint keeps its own spec")
    for key in ("in_channels", "num_classes"):
        if key in spec_overrides:
            raise ConfigError(f"--override {key}: set from the data, not by hand")
    figure = Path(out) if out else Path("propagation.png")
    if figure.suffix.lower() not in FIGURE_FORMATS:
        raise ConfigError(f"--out {figure}: figure must end with {', '.join(FIGURE_FORMATS)}")
    if figure.parent.is_dir():  # a missing folder is created below; in one, the figure replaces no run's file
        check_output(figure, [checkpoint] if checkpoint else [])
    return spec_overrides, figure


def _networks(models: list[str], spec_overrides: dict[str, Any], checkpoint: str | None, data: str | None,
              seed: int) -> tuple[dict[str, Any], Any, Any]:
    """The nets by their shown names, the data the batch comes from, and the checkpoint's weights (or None)."""
    import torch

    from resnetlab.data import load_data
    from resnetlab.networks.registry import create_model
    from resnetlab.settings.config import build_config
    from resnetlab.training.setup import data_options, evaluation_source
    from resnetlab.weights.formats import model_for
    from resnetlab.weights.resolve import resolve

    named: dict[str, Any] = {}
    weights = None
    if checkpoint is not None:
        weights = resolve(checkpoint)
        trained, where = model_for(weights), weights.path
        source = evaluation_source(trained.spec, weights.config, weights.norm, data, where,
                                   (weights.data or {}).get("classes"))
        named[f"{trained.spec.name or 'model'} (trained: {where.name})"] = trained
    else:
        data = data or "synthetic"
        source = load_data(data, data_options(build_config(data=data)))
    for name in models:
        torch.manual_seed(seed)
        named[name] = create_model(name, in_channels=source.channels, num_classes=source.num_classes,
                                   **spec_overrides)
    return named, source, weights

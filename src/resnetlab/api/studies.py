"""The papers' experiments and the propagation analysis from Python, as `resnetlab experiment` and `resnetlab
analyze propagation` run them: `experiment(...)` returns the results rows (`MemberResult`, as results.md and
the HTML report show them), `propagation(...)` the numbers per unit of each net (`Propagation`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resnetlab.api.runs import net_and_data, silent
from resnetlab.data import load_data
from resnetlab.data.fetch import fetch as fetch_archive
from resnetlab.errors import ConfigError, ResnetlabError, one_line
from resnetlab.experiments.propagation import Row, format_propagation, plot_propagation, summarize
from resnetlab.experiments.propagation import propagation as propagation_rows
from resnetlab.experiments.results import MemberResult
from resnetlab.experiments.runner import run_suite
from resnetlab.experiments.suite import Suite, load_suite, suite_names
from resnetlab.networks.registry import create_model
from resnetlab.settings.config import build_config

__all__ = ["Propagation", "check_propagation", "experiment", "fetch", "list_suites", "propagation"]


def list_suites() -> list[str]:
    """The suites shipped with resnetlab, one per paper table or figure."""
    return suite_names()


def fetch(name: str = "cifar10", out: str | Path | None = None, mirror: str | None = None,
          progress: bool | str = False) -> Path:
    """The verified archive of a published data set (`resnetlab data fetch`: cifar10, cifar100), downloaded into
    `out` (default: the data cache) unless a good copy is there; `mirror` (else `$RESNETLAB_DATA_MIRROR`) is a
    base URL it is fetched from instead. Checked against the published MD5."""
    return fetch_archive(name, out, mirror=mirror, progress=progress,
                         **({} if progress else {"log": silent}))


def experiment(suite: str, scale: str = "paper", data: str | None = None, seeds: int = 1, *,
               out: str | Path | None = None, epochs: float | None = None, iters: int | None = None,
               device: str | None = None, set: dict[str, Any] | None = None,  # noqa: A002 - the --set flag
               only: list[str] | None = None, jobs: int = 1, devices: list[str] | None = None,
               trainings: str | None = None, collect: bool = False, add_seeds: bool = False,
               results: bool = True, progress: bool = False) -> list[MemberResult]:
    """Run a suite (`resnetlab experiment SUITE`): train every member x seed not trained yet, into `out`
    (default `experiments/SUITE-SCALE`), and return one row per member with our errors beside the paper's.
    `collect=True` trains nothing and returns the rows of what has finished."""
    chosen, where, call = suite_call(suite, scale, data, seeds, out=out, epochs=epochs, iters=iters, device=device,
                                     set=set, only=only, jobs=jobs, devices=devices, trainings=trainings,
                                     collect=collect, add_seeds=add_seeds, results=results)
    return run_suite(chosen, where, **call, log=print if progress else silent)


def suite_call(suite: str, scale: str, data: str | None, seeds: int, *, out: str | Path | None,
               epochs: float | None, iters: int | None, device: str | None, set: dict[str, Any] | None,  # noqa: A002
               only: list[str] | None, jobs: int, devices: list[str] | None, trainings: str | None, collect: bool,
               add_seeds: bool, results: bool) -> tuple[Suite, Path, dict[str, Any]]:
    """`experiment`'s arguments as the suite, its `--out` and `run_suite`'s keywords (less `log`): what a
    call here and the workers `--launcher` submits both run."""
    chosen = load_suite(suite)
    where = Path(out) if out is not None else Path(f"experiments/{chosen.name}-{scale}")
    return chosen, where, dict(data=data, seeds=seeds, epochs=epochs, iters=iters, scale=scale, device=device,
                               settings=dict(set or {}), only=only, results=results, jobs=jobs, devices=devices,
                               trainings=trainings, train=not collect, add_seeds=add_seeds)


@dataclass
class Propagation:
    """Forward signal and backward gradient per residual unit of each net (v2 eq. 4-7), on one batch."""

    results: dict[str, list[Row]]  # net name -> one row per unit
    data: str
    batch: int
    eval_mode: bool
    seed: int
    checkpoint: str | None = None  # the checkpoint file a trained net came from
    skipped: tuple[str, ...] = ()  # newer checkpoints of that run directory that did not verify

    def summary(self) -> dict[str, dict[str, float]]:
        """Per net: the ratios that tell the story (signal and gradient growth from first to last unit)."""
        return {name: summarize(rows) for name, rows in self.results.items()}

    def table(self) -> str:
        return format_propagation(self.results)

    @property
    def mode(self) -> str:
        return "eval mode (running BN statistics)" if self.eval_mode else "train mode (batch BN statistics)"

    def plot(self, path: str | Path) -> Path:
        """The figure (PNG, PDF or SVG by suffix)."""
        names = ", ".join(self.results)
        return plot_propagation(self.results, path,
                                title=f"{names} on {self.data} (batch {self.batch}, {self.mode})")


def check_propagation(models: list[str], checkpoint: str | Path | None, batch_size: Any,
                      overrides: dict[str, Any]) -> None:
    """The arguments of a propagation analysis, checked before anything is loaded (the API and `resnetlab
    analyze propagation` alike); a one-line ConfigError naming the keyword and the command's flag."""
    if not models and checkpoint is None:
        raise ConfigError("give at least one model (--model NAME) or a checkpoint (--checkpoint RUN_OR_WEIGHTS)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size (--batch-size): expected an integer >= 1, got {batch_size!r}")
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise ConfigError(f"model {repeated[0]} given twice")
    if overrides and not models:
        raise ConfigError("overrides (--override) apply to registry models; a checkpoint keeps its own spec")
    for key in ("in_channels", "num_classes"):
        if key in overrides:
            raise ConfigError(f"override {key}: set from the data, not by hand")


def propagation(models: list[str] | tuple[str, ...] = (), checkpoint: str | Path | None = None,
                data: str | None = None, batch_size: int = 128, seed: int = 0, eval_mode: bool = False,
                **overrides: Any) -> Propagation:
    """Signal and gradient through depth (`resnetlab analyze propagation`): registry `models` at their paper
    init under `seed` (spec fields changed by `overrides`), and a trained `checkpoint` (a run directory or
    weights file), on the first `batch_size` test images of `data` (default: the checkpoint's, else synthetic),
    normalised as training normalises them."""
    models = list(models)
    check_propagation(models, checkpoint, batch_size, overrides)
    named: dict[str, Any] = {}  # the nets by their shown names
    weights = None
    if checkpoint is not None:
        weights, trained, source = net_and_data(checkpoint, data)
        named[f"{trained.spec.name or 'model'} (trained: {weights.path.name})"] = trained
    else:
        data = data or "synthetic"
        source = load_data(data, build_config(data=data).data.options())
    for name in models:
        torch.manual_seed(seed)
        named[name] = create_model(name, in_channels=source.channels, num_classes=source.num_classes, **overrides)
    x, y = next(iter(source.eval_batches("test", batch_size)))
    results: dict[str, list[Row]] = {}
    for name, model in named.items():
        torch.manual_seed(seed)  # the same dropout draws for every model, run to run
        try:
            results[name] = propagation_rows(model, x, y, eval_mode=eval_mode)
        except (RuntimeError, ValueError) as exc:  # e.g. an ImageNet stem pools an 8x8 input to nothing
            first = one_line(exc, 160)
            raise ResnetlabError(f"{name}: cannot run on {source.name} input {tuple(x.shape)} ({first})") from None
    return Propagation(results, source.name, len(y), eval_mode, seed, str(weights.path) if weights else None,
                       weights.skipped if weights else ())


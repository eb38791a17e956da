"""Training and runs from Python: `train(...)` returns a `Run`, `Run.open(path)` reads one; each step is the one
the command line takes (`resnetlab train`, `eval`, `export`, `predict`, `train --resume`), so the numbers and
files are the same. `set` is `--set` by config keys (`{"optim.lr": 0.05}`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from resnetlab.api.models import Trained, load
from resnetlab.errors import ConfigError
from resnetlab.experiments.results import read_summary
from resnetlab.runs.directory import RunDir
from resnetlab.runs.records import Summary, WorkerResult
from resnetlab.settings.config import build_config
from resnetlab.settings.device import resolve_device
from resnetlab.training import entry, evaluation
from resnetlab.training.fast import channels_last_default
from resnetlab.weights.formats import model_for
from resnetlab.weights.pretrained import ImageLike
from resnetlab.weights.resolve import resolve

__all__ = ["Run", "evaluate", "train", "train_overrides"]


def silent(_line: str) -> None:
    """The log of a call that asked for no output."""


def train_overrides(epochs: float | None = None, iters: int | None = None, seed: int | None = None,
                    device: str | None = None, init: str | Path | None = None, val_split: int | None = None,
                    set: dict[str, Any] | None = None) -> dict[str, Any]:  # noqa: A002 - the --set flag's name
    """The config overrides the command line's flags give (`--set` first, then the named flags over it)."""
    overrides = dict(set or {})
    for key, value in (("schedule.epochs", epochs), ("schedule.iters", iters), ("run.device", device),
                       ("run.seed", seed), ("data.val_split", val_split)):
        if value is not None:
            overrides[key] = value
    if init is not None:  # absolute, so that a resume from elsewhere finds the same file
        if not str(init).strip():
            raise ConfigError("init: an empty path (leave it unset to train from the papers' initialisation)")
        overrides["run.init"] = os.path.abspath(os.path.expanduser(str(init)))
    return overrides


def train(model: str | None = None, data: str | None = None, recipe: str | None = None,
          out: str | Path | None = None, *, epochs: float | None = None, iters: int | None = None,
          seed: int | None = None, device: str | None = None, init: str | Path | None = None,
          val_split: int | None = None, set: dict[str, Any] | None = None,  # noqa: A002
          progress: bool | str = False) -> Run:
    """Train a net with a recipe (`resnetlab train`): defaults, then the recipe, then the settings; the run
    directory `out` (default `runs/MODEL-DATA-TIME`) holds its config, metrics, checkpoints and summary.
    `progress`: False prints nothing; True prints the log lines and shows a progress bar (tqdm.auto: a widget
    in a notebook); "auto" prints the log lines and shows the bar on a terminal only, as the command does."""
    overrides = train_overrides(epochs, iters, seed, device, init, val_split, set)
    if progress != "auto":
        overrides.setdefault("run.progress", bool(progress))
    cfg = build_config(recipe=recipe, model=model, data=data, overrides=overrides)
    run, summary = entry.train(cfg, out, log=print if progress else silent)
    return Run(run.path, summary)


class Run:
    """A run directory: its config, metrics and summary, the net it trained, and what can be done with it."""

    def __init__(self, path: str | Path, summary: Summary | WorkerResult | None = None) -> None:
        self.path = Path(path)
        self._summary = summary

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """An existing run directory; a one-line RunDirError if it is not one."""
        RunDir(path).read_config()
        return cls(path)

    def __repr__(self) -> str:
        status = self.summary.status if self.summary else "unfinished"
        return f"Run({str(self.path)!r}, {status})"

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config the run trained with (config.json)."""
        return RunDir(self.path).read_config()

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl: one per evaluation (train and test error and loss, lr, step, epoch)."""
        return RunDir(self.path).read_metrics()

    @property
    def summary(self) -> Summary | None:
        """summary.json (status, final and best errors, the paper's fail verdict); None before the run ends."""
        if isinstance(self._summary, Summary):
            return self._summary
        return read_summary(self.path)

    def model(self, best: bool = False) -> Trained:
        """The trained net: the newest checkpoint that verifies, or `best.pt` with `best`."""
        return load(self.path, best=best)

    def evaluate(self, split: str = "test", data: str | None = None, batch_size: int = 256,
                 device: str = "auto", best: bool = False) -> dict[str, float]:
        """Top-1 and top-5 error and loss on a split of the run's data (or `data`), as `resnetlab eval`."""
        return evaluate(self.path, split=split, data=data, batch_size=batch_size, device=device, best=best)

    def export(self, format: str, out: str | Path, best: bool = False) -> dict[str, Any]:  # noqa: A002
        """The net as `safetensors`, `onnx` or `pt2` at `out`, as `resnetlab export` writes it; what was written
        (path, bytes and, for graphs, the largest difference from PyTorch's outputs)."""
        return load(self.path, best=best).export(format, out)

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5,
                best: bool = False) -> list[list[tuple[str, float]]]:
        """Top-k (class, probability) per image: paths, folders, PIL images or tensors (`Trained.predict`)."""
        return self.model(best).predict(images, top_k)

    @property
    def result(self) -> Summary | WorkerResult | None:
        """What this session's training ended with: the summary, or a worker rank's result (multi-process)."""
        return self._summary if self._summary is not None else self.summary

    def resume(self, device: str | None = None, progress: bool = False, model: str | None = None) -> Run:
        """Continue the run from its newest good checkpoint (`resnetlab train --resume`); `model`, where given,
        must be the net the run trains."""
        _, summary = entry.resume(self.path, model=model, device=device, log=print if progress else silent)
        self._summary = summary
        return self


def evaluate(path: str | Path, split: str = "test", data: str | None = None, batch_size: int = 256,
             device: str = "auto", best: bool = False, model: str | None = None) -> dict[str, Any]:
    """Evaluate the net a path means (`resnetlab eval`): {"error", "top5_error", "loss", "images", "data",
    "path", "model", "claimed_error" (a file's own record, where it has one), "skipped"}."""
    if split not in ("test", "val"):
        raise ConfigError(f"split: {split!r} is not test or val")
    weights, net, source = net_and_data(path, data, best, model)
    dev = resolve_device(device)
    cl = channels_last_default(dev)
    net = net.to(dev, memory_format=torch.channels_last if cl else torch.preserve_format)
    result = evaluation.evaluate(net, source, split, batch_size, dev, channels_last=cl)
    return {**result, "images": source.eval_size(split), "data": source.name, "path": str(weights.path),
            "model": net.spec.name, "claimed_error": weights.claimed_error, "skipped": list(weights.skipped)}


def net_and_data(path: str | Path, data: str | None, best: bool = False, model: str | None = None) -> tuple[Any, ...]:
    """The weights a path means (the net export and predict see), their net, and the data it is evaluated on."""
    weights = resolve(path, best=best)
    net = model_for(weights, model)
    return weights, net, evaluation.evaluation_source(net.spec, weights.config, weights.norm, data, weights.path,
                                           (weights.data or {}).get("classes"))

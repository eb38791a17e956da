"""What a run tells the person watching it: log lines, the progress bar, the summary, the figure and the
experiment trackers (`trackers.py`). Only rank 0 reports; nothing here changes the training."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from resnetlab.runs.directory import RunDir
from resnetlab.runs.plots import plot_curves
from resnetlab.runs.records import FAIL_ERROR, DivergenceRow, MetricsRow, Summary, evaluation_rows
from resnetlab.training.trackers import Trackers
from resnetlab.version import __version__

Log = Callable[[str], None]


def tee(log: Log, path: Path) -> Log:
    """Every line to `log` and appended to the run's log file."""
    def write(line: str) -> None:
        log(line)
        with open(path, "a") as f:
            f.write(line + "\n")

    return write


class Reporter:
    """The outputs of one run. `trackers`: the run's `run.tracker` (None: this process reports to none,
    TensorBoard included); a name that is unknown or not installed is a ConfigError here, before the run starts."""

    def __init__(self, run: RunDir, log: Log, *, tensorboard: bool | str, progress: bool | str,
                 total_steps: int, steps_per_epoch: int, batch: int, trackers: Sequence[str] | None = ()) -> None:
        self.log, self.run, self.progress = log, run, progress  # entry tees the log into log.txt once it exists
        self.total_steps, self.steps_per_epoch, self.batch = total_steps, steps_per_epoch, batch
        self.total_epochs = math.ceil(total_steps / steps_per_epoch)
        self.trackers = Trackers(trackers, tensorboard, lambda line: self.log(line))

    def bar(self, epoch: int, steps: int) -> Any:
        """A bar over the images of this epoch's remaining `steps` global batches (or None: no terminal)."""
        if self.progress is False or (self.progress == "auto" and not sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm  # a widget in a notebook, text on a terminal

        return tqdm(total=steps * self.batch, unit="img", unit_scale=True, leave=False,
                    desc=f"epoch {epoch + 1}/{self.total_epochs}", file=sys.stderr, dynamic_ncols=True)

    def started(self, name: str | None, params: int, source: Any, device: torch.device, processes: int) -> None:
        """The run's first line: the net, the data, the budget and the hardware."""
        total = self.total_steps
        self.log(f"{name} ({params:,} parameters) on {source.name}: {source.train_size} training images, "
                 f"{total} iterations ({total / self.steps_per_epoch:.1f} epochs) on {device_name(device)}"
                 + (f" x {processes} processes" if processes > 1 else ""))

    def evaluation(self, row: MetricsRow) -> None:
        val = f" val err {row.val_error:.2%}" if row.has_val else ""
        self.log(f"epoch {row.epoch}/{self.total_epochs} step {row.step}/{self.total_steps} "
                 f"lr {row.lr:.3g} train loss {row.train_loss:.4f} err {row.train_error:.2%}{val} "
                 f"test err {row.test_error:.2%} (top-5 {row.test_top5_error:.2%}) "
                 f"{row.images_per_s:.0f} img/s")
        self.trackers.metrics(row.to_dict())

    def divergence(self, row: DivergenceRow) -> None:
        self.log(f"loss became NaN/Inf at step {row.diverged_at_step}: run stopped and recorded as diverged "
                 "(the paper's fail)")
        self.trackers.metrics(row.to_dict())

    def stopped(self, signum: int | None, step: int) -> None:
        self.log(f"stopped by signal {signum} at step {step}: checkpoint written, "
                 f"continue with: resnetlab train --resume {self.run.path}")

    def summary(self, *, status: str, diverged_at: int | None, progress: Any, model: str | None, data: str,
                recipe: str, params: int, device: torch.device, title: str) -> Summary:
        """summary.json from the run's metrics and progress, and the figure of its error curves."""
        rows = evaluation_rows(self.run.read_metrics())
        final = rows[-1] if rows else None
        speeds = sorted(r.images_per_s for r in rows if r.images_per_s)
        summary = Summary(
            model=model, data=data, recipe=recipe, status=status, diverged=status == "diverged",
            diverged_at_step=diverged_at, steps=progress.step, total_steps=self.total_steps,
            epochs=round(progress.step / self.steps_per_epoch, 3), final=final.final() if final else {},
            best=progress.best, fail=status == "diverged" or (final is not None and final.test_error > FAIL_ERROR),
            params=params, wall_time_s=round(progress.elapsed, 3),
            images_per_s=speeds[len(speeds) // 2] if speeds else None,  # the median
            device=device_name(device), torch=torch.__version__, resnetlab=__version__,
            threads=torch.get_num_threads(),
        )
        self.run.write_json(self.run.summary, summary.to_dict())
        if rows:
            plot_curves({model or "model": rows}, self.run.figure, title=title)
        self.trackers.end(summary.to_dict(), self.run.path, [self.run.figure, self.run.summary], status)
        return summary


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"

"""Training with the papers' recipes: SGD with momentum and step decay, evaluation, checkpoints, resume.

The loop counts iterations (v1 sec. 4.2). Everything random is a function of the seed and the iteration, and a
checkpoint holds all the loop's state, so a resumed run continues exactly where the killed one stopped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.data import DataSource, derive_seed
from resnetlab.errors import CheckpointError, one_line
from resnetlab.networks.counting import count_params
from resnetlab.networks.net import ResNet
from resnetlab.networks.spec import ResNetSpec
from resnetlab.runs.directory import RunDir
from resnetlab.runs.records import DivergenceRow, Summary, WorkerResult, best_of
from resnetlab.settings.config import Config
from resnetlab.training.distributed import World, all_reduce, barrier
from resnetlab.training.evaluation import metrics_row
from resnetlab.training.fast import CompileChoice
from resnetlab.training.progress import DivergenceMonitor, EpochSums, Progress, Schedule, StopFlag, StopReason
from resnetlab.training.reporting import Reporter
from resnetlab.version import __version__
from resnetlab.weights.checkpoint import load_state, save_checkpoint


@dataclass(eq=False)
class Trainer:
    """One training run in one run directory, built from its config by `build.build_trainer`."""

    cfg: Config
    run: RunDir
    world: World
    device: torch.device
    source: DataSource
    spec: ResNetSpec
    model: ResNet  # the net whose state is saved
    train_model: nn.Module  # what a step calls: the same parameters, wrapped for DDP and compiled
    eager_model: nn.Module  # the same, uncompiled
    channels_last: bool
    batch: int  # the global batch of one step
    steps_per_epoch: int
    optimizer: torch.optim.SGD
    schedule: Schedule
    compile: CompileChoice
    amp: Any  # the autocast context of the forward
    reporter: Reporter
    sums: EpochSums  # the epoch's loss and error sums, on the device
    progress: Progress = field(default_factory=Progress)

    def resolved(self) -> dict[str, Any]:
        """What the config resolved to on this run, written beside it in config.json."""
        return self.schedule.to_dict() | {
            "steps_per_epoch": self.steps_per_epoch, "global_batch": self.batch, "world_size": self.world.size,
            "spec": self.spec.to_dict(), "device": str(self.device), "compile": self.compile.mode}

    # checkpoints ---------------------------------------------------------------------------------------
    def restore(self, payload: dict[str, Any]) -> None:
        """Take back a checkpoint's state; one of another net or shape is a one-line CheckpointError."""
        try:
            saved = ResNetSpec.from_dict(payload["spec"])
            if saved != self.spec:
                raise CheckpointError(f"checkpoint is a {saved.name or 'different'} net, not this run's model")
            load_state(self.model, payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            progress = Progress(**payload["progress"])
            torch.set_rng_state(payload["rng"]["cpu"])
            if "cuda" in payload["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(payload["rng"]["cuda"], self.device)
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not fit this run ({one_line(exc, 200)})") from None
        self.progress = progress

    def save(self, best: bool = False) -> None:
        payload = checkpoint(self)
        save_checkpoint(self.run.step_checkpoint(self.progress.step), payload)
        if best:
            save_checkpoint(self.run.best, payload)
        self.run.prune(self.cfg.run.keep_checkpoints)

    # the loop -------------------------------------------------------------------------------------------
    def fit(self) -> Summary | WorkerResult:
        """Epochs until the schedule ends, a signal stops the run or the loss diverges."""
        progress, world = self.progress, self.world
        self.reporter.trackers.start(self.run.path)  # the run's config.json is their parameters
        progress.start_session()
        monitor = DivergenceMonitor.for_device(self.device, world)
        reason, diverged_at = StopReason.RUNNING, None
        with StopFlag() as stop:
            while progress.step < self.schedule.total and reason is StopReason.RUNNING:
                epoch = progress.step // self.steps_per_epoch
                reason, diverged_at = self._epoch(epoch, monitor, stop)
                if reason is StopReason.DIVERGED:
                    if world.main:
                        self._record_divergence(epoch, diverged_at)
                elif reason is StopReason.STOPPED:
                    if world.main:
                        self.save()
                    self.reporter.stopped(stop.signal, progress.step)
                elif self._evaluation_due(epoch):
                    self._evaluate(epoch)
        barrier(world)
        if not world.main:
            return WorkerResult(reason.status, reason is StopReason.DIVERGED, world.rank)
        return self.reporter.summary(status=reason.status, diverged_at=diverged_at, progress=progress,
                                     model=self.spec.name, data=self.cfg.data.source, recipe=self.cfg.recipe,
                                     params=count_params(self.model), device=self.device,
                                     title=f"{self.spec.name} on {self.source.name}")

    def _epoch(self, epoch: int, monitor: DivergenceMonitor, stop: StopFlag) -> tuple[StopReason, int | None]:
        """The rest of epoch `epoch` (from the step the run is at); why it ended early, if it did."""
        progress, world, total = self.progress, self.world, self.schedule.total
        start = progress.step - epoch * self.steps_per_epoch
        bar = self.reporter.bar(epoch, min(self.steps_per_epoch - start, total - progress.step))
        clock = time.perf_counter()
        batches = self.source.train_batches(epoch, self.batch, seed=self.cfg.run.seed, device=self.device,
                                            start_step=start, rank=world.rank, world_size=world.size)
        self.train_model.train()
        reason, diverged_at = StopReason.RUNNING, None
        for x, y in batches:
            if progress.step >= total:
                break
            finite = self.train_step(x, y, self.cfg.run.seed)
            diverged_at = monitor.after_step(finite, progress.step, stop)
            if diverged_at is not None:
                reason = StopReason.DIVERGED
                break
            if bar is not None:
                bar.update(y.numel() * world.size)
            if stop.signal is not None:
                reason = StopReason.STOPPED
                break
            if self._mid_epoch_checkpoint_due():
                clock = self._sync_time(clock)
                if world.main:
                    self.save()
        late = monitor.drain()
        if reason is StopReason.RUNNING and late is not None:
            reason, diverged_at = StopReason.DIVERGED, late
        self._sync_time(clock)
        if bar is not None:
            bar.close()
        return reason, diverged_at

    def _mid_epoch_checkpoint_due(self) -> bool:
        """`run.checkpoint_every` steps, except where an epoch's end or the run's end checkpoints anyway."""
        every, step = self.cfg.run.checkpoint_every, self.progress.step
        return bool(every) and step % every == 0 and step % self.steps_per_epoch != 0 and step < self.schedule.total

    def _evaluation_due(self, epoch: int) -> bool:
        step = self.progress.step
        epoch_done = step % self.steps_per_epoch == 0
        return (epoch_done and (epoch + 1) % self.cfg.run.eval_every == 0) or step >= self.schedule.total

    def train_step(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        """One SGD step on this rank's slice, in `optim.accumulate` micro-batches (each with its own BN
        statistics, exactly as each DDP rank normalises its own slice)."""
        progress, schedule, world = self.progress, self.schedule, self.world
        micro_batches = self.cfg.optim.accumulate
        lr = schedule.lr(progress.step, progress.warmup_end)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        for i, (x_part, y_part) in enumerate(zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True)):
            # dropout shortcuts: a function of the step and the micro-batch's place in the global batch
            torch.manual_seed(derive_seed(seed, "step", progress.step, world.rank * micro_batches + i))
            sync = i == micro_batches - 1 or not world.active
            with nullcontext() if sync else self.train_model.no_sync(), self.amp:
                logits = self.train_model(x_part)
            loss = F.cross_entropy(logits.float(), y_part) * (y_part.numel() / y.numel())
            loss.backward()
            total += loss.detach()
            wrong += (logits.detach().argmax(1) != y_part).sum()
        self.optimizer.step()
        self.sums.add(total * y.numel(), wrong)  # read back once per epoch
        in_warmup = schedule.warmup and progress.warmup_end is None and progress.step < schedule.warmup_iters
        if in_warmup:  # v1: warm up until the training error is below 80%
            global_wrong = all_reduce(wrong.clone(), world).item()
            if global_wrong / (y.numel() * world.size) < schedule.warmup_until_error:
                progress.warmup_end = progress.step + 1
        progress.seen += y.numel() * world.size
        progress.step += 1
        return torch.isfinite(total)

    def _sync_time(self, clock: float) -> float:
        """Add the training time since `clock` and bring the wall time up to now; now, the next clock."""
        self.sums.flush(self.progress, self.world)  # a host sync: the time below covers finished work
        now = time.perf_counter()
        self.progress.train_time += now - clock
        self.progress.tick()
        return now

    # evaluation and the records ------------------------------------------------------------------------
    def _evaluate(self, epoch: int) -> None:
        """Rank 0 evaluates, writes the row and checkpoints, and only then reports the row: a row a tracker holds
        is one the checkpoint keeps, so a resumed run never computes it again. The others wait."""
        progress = self.progress
        if not self.world.main:
            progress.reset_epoch()
            return
        row = metrics_row(progress, self.steps_per_epoch, self.schedule, self.model, self.source,
                          self.cfg.optim.batch_size, self.device, self.amp, self.channels_last)
        self.run.append_metrics(row.to_dict())
        selected = row.val_error if row.has_val else row.test_error
        if not progress.best or selected <= progress.best["val_error" if row.has_val else "test_error"]:
            progress.best = best_of(row)
        progress.reset_epoch()
        progress.tick()
        self.save(best=progress.best.get("step") == progress.step)
        self.reporter.evaluation(row)

    def _record_divergence(self, epoch: int, step: int | None) -> None:
        self.sums.flush(self.progress, self.world)
        progress = self.progress
        row = DivergenceRow(epoch=epoch + 1, step=progress.step, diverged_at_step=step,
                            lr=self.schedule.lr(max(progress.step - 1, 0), progress.warmup_end))
        self.run.append_metrics(row.to_dict())
        self.reporter.divergence(row)


def checkpoint(trainer: Trainer) -> dict[str, Any]:
    """What a checkpoint holds: the loop's state and what the net needs elsewhere (config, normalisation, ...)."""
    device, source = trainer.device, trainer.source
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {"spec": trainer.spec.to_dict(), "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(), "progress": trainer.progress.to_dict(),
            "norm": source.norm_state(), "rng": rng, "config": trainer.cfg.to_dict(),
            "schedule": trainer.schedule.to_dict(), "version": __version__,
            "data": {"classes": list(source.classes), "image_size": source.image_size, "channels": source.channels}}


@contextmanager
def eager(trainer: Trainer) -> Iterator[None]:
    """Steps taken inside run the uncompiled module (the same parameters and wrapping): what a benchmark counts
    operator by operator, which a compiled graph would fuse out of sight."""
    compiled, trainer.train_model = trainer.train_model, trainer.eager_model
    try:
        yield
    finally:
        trainer.train_model = compiled

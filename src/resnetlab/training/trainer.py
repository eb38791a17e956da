"""Training with the papers' recipes: SGD with momentum and step decay, evaluation, checkpoints, resume.

The loop is iteration-based (v1 sec. 4.2 counts iterations). Everything random is a function of the seed
and the iteration (data order, augmentation, dropout), and the checkpoint holds the model, optimizer,
schedule position and epoch accumulators, so a resumed run continues exactly where the killed one stopped.

The trainer owns the model, the optimizer, the step and the epoch; it leaves the device and data set-up
to `runtime`, the stop decisions to `monitor`, the outputs to `reporting` and the records' shapes to
`records`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from resnetlab.data import DataSource, derive_seed
from resnetlab.errors import CheckpointError
from resnetlab.networks.counting import count_params
from resnetlab.networks.spec import ResNetSpec
from resnetlab.runs.directory import RunDir
from resnetlab.runs.records import DivergenceRow, MetricsRow, Summary, WorkerResult, best_of
from resnetlab.settings.config import Config
from resnetlab.training.build import Parts, build_parts
from resnetlab.training.distributed import World, all_reduce_sum, barrier
from resnetlab.training.evaluation import evaluate
from resnetlab.training.monitor import DivergenceMonitor, StopFlag, StopReason
from resnetlab.training.progress import Progress
from resnetlab.training.reporting import Log, Reporter, quiet
from resnetlab.training.setup import Setup
from resnetlab.version import __version__
from resnetlab.weights.checkpoint import load_state, save_checkpoint

EXIT_STOPPED = 3  # SIGTERM/SIGINT: checkpoint written, resume with --resume


class Trainer:
    """One training run in one run directory."""

    def __init__(self, cfg: Config, run: RunDir, source: DataSource, spec: ResNetSpec, device: torch.device,
                 parts: Parts, reporter: Reporter, world: World | None = None) -> None:
        """A trainer of built parts (`build.build_parts`); `create` builds them from a config."""
        self.cfg, self.run, self.source, self.spec, self.device = cfg, run, source, spec, device
        self.world = world or World()
        self.model, self.train_model, self._eager_model = parts.model, parts.train_model, parts.eager_model
        self.channels_last, self.batch, self.spe, self.amp = parts.channels_last, parts.batch, parts.spe, parts.amp
        self.optimizer, self.schedule, self.compile = parts.optimizer, parts.schedule, parts.compile
        self.reporter = reporter
        self.progress = Progress()
        self._sums: list[torch.Tensor] | None = None  # device-side loss and error sums of the epoch

    @classmethod
    def create(cls, cfg: Config, run: RunDir, source: DataSource, spec: ResNetSpec, device: torch.device,
               log: Log = print, world: World | None = None) -> Trainer:
        """Seed, build the parts (net, wrappings, optimizer, schedule, compile) and the reporter; the trainer."""
        world = world or World()
        parts = build_parts(cfg, source, spec, device, world)
        reporter = Reporter(run, log if world.main else quiet, tensorboard=cfg.run.tensorboard,
                            progress=cfg.run.progress, total_steps=parts.schedule.total,
                            steps_per_epoch=parts.spe, batch=parts.batch,
                            trackers=cfg.run.tracker if world.main else None)
        return cls(cfg, run, source, spec, device, parts, reporter, world)

    @classmethod
    def from_setup(cls, setup: Setup, run: RunDir, log: Log = print) -> Trainer:
        return cls.create(setup.cfg, run, setup.source, setup.spec, setup.device, log, setup.world)

    @property
    def log(self) -> Log:
        return self.reporter.log

    @log.setter
    def log(self, log: Log) -> None:
        self.reporter.log = log

    @contextmanager
    def eager(self) -> Iterator[None]:
        """Steps taken inside run the uncompiled module (the same parameters and wrapping): what a benchmark
        counts operator by operator, which a compiled graph would fuse out of sight."""
        compiled, self.train_model = self.train_model, self._eager_model
        try:
            yield
        finally:
            self.train_model = compiled

    def resolved(self) -> dict[str, Any]:
        """What the config resolved to on this run, written beside it in config.json."""
        return self.schedule.to_dict() | {
            "steps_per_epoch": self.spe, "global_batch": self.batch, "world_size": self.world.size,
            "spec": self.spec.to_dict(), "device": str(self.device), "compile": self.compile.mode}

    # checkpoints ---------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"spec": self.spec.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "progress": self.progress.to_dict(),
                "norm": self.source.norm_state(), "rng": rng, "config": self.cfg.to_dict(),
                "schedule": self.schedule.to_dict(), "version": __version__,
                "data": {"classes": list(self.source.classes), "image_size": self.source.image_size,
                         "channels": self.source.channels}}  # what a trained net needs to be used elsewhere

    def restore(self, payload: dict[str, Any]) -> None:
        try:
            saved = ResNetSpec.from_dict(payload["spec"])
            if saved != self.spec:
                raise CheckpointError(f"checkpoint is a {saved.name or 'different'} net, not this run's model")
            load_state(self.model, payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.progress = Progress(**payload["progress"])
            torch.set_rng_state(payload["rng"]["cpu"])
            if "cuda" in payload["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(payload["rng"]["cuda"], self.device)
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not fit this run ({str(exc).splitlines()[0][:200]})") from None

    def save(self, best: bool = False) -> None:
        payload = self.state()
        save_checkpoint(self.run.step_checkpoint(self.progress.step), payload)
        if best:
            save_checkpoint(self.run.best, payload)
        self.run.prune(self.cfg.run.keep_checkpoints)

    # the loop -------------------------------------------------------------------------------------------
    def fit(self) -> Summary | WorkerResult:
        """Epochs until the schedule ends, a signal stops the run or the loss diverges."""
        p, world = self.progress, self.world
        self.reporter.open()
        p.start_session()
        monitor = DivergenceMonitor.for_device(self.device, world)
        reason, diverged_at = StopReason.RUNNING, None
        with StopFlag() as stop:
            while p.step < self.schedule.total and reason is StopReason.RUNNING:
                epoch = p.step // self.spe
                reason, diverged_at = self._epoch(epoch, monitor, stop)
                if reason is StopReason.DIVERGED:
                    if world.main:
                        self._record_divergence(epoch, diverged_at)
                elif reason is StopReason.STOPPED:
                    if world.main:
                        self.save()
                    self.reporter.stopped(stop.signal, p.step)
                elif self._evaluation_due(epoch):
                    self._evaluate(epoch)
        self.reporter.close()
        barrier(world)
        if not world.main:
            return WorkerResult(reason.status, reason is StopReason.DIVERGED, world.rank)
        return self.write_summary(reason.status, diverged_at)

    def _epoch(self, epoch: int, monitor: DivergenceMonitor,
               stop: StopFlag) -> tuple[StopReason, int | None]:
        """The rest of epoch `epoch` (from the step the run is at); why it ended early, if it did."""
        p, world, total = self.progress, self.world, self.schedule.total
        start = p.step - epoch * self.spe
        bar = self.reporter.bar(epoch, min(self.spe - start, total - p.step))
        t0 = time.perf_counter()
        batches = self.source.train_batches(epoch, self.batch, seed=self.cfg.run.seed, device=self.device,
                                            start_step=start, rank=world.rank, world_size=world.size)
        self.train_model.train()
        reason, diverged_at = StopReason.RUNNING, None
        for x, y in batches:
            if p.step >= total:
                break
            finite = self.train_step(x, y, self.cfg.run.seed)
            diverged_at = monitor.after_step(finite, p.step, stop)
            if diverged_at is not None:
                reason = StopReason.DIVERGED
                break
            if bar is not None:
                bar.update(y.numel() * world.size)
            if stop.signal is not None:
                reason = StopReason.STOPPED
                break
            if self._mid_epoch_checkpoint_due():
                self._sync_time(t0)
                t0 = time.perf_counter()
                p.tick()
                if world.main:
                    self.save()
        late = monitor.drain()
        if reason is StopReason.RUNNING and late is not None:
            reason, diverged_at = StopReason.DIVERGED, late
        self._sync_time(t0)
        if bar is not None:
            bar.close()
        p.tick()
        return reason, diverged_at

    def _mid_epoch_checkpoint_due(self) -> bool:
        """`run.checkpoint_every` steps, except where an epoch's end or the run's end checkpoints anyway."""
        every, step = self.cfg.run.checkpoint_every, self.progress.step
        return bool(every) and step % every == 0 and step % self.spe != 0 and step < self.schedule.total

    def _evaluation_due(self, epoch: int) -> bool:
        step = self.progress.step
        epoch_done = step % self.spe == 0
        return (epoch_done and (epoch + 1) % self.cfg.run.eval_every == 0) or step >= self.schedule.total

    def train_step(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        """One SGD step on this rank's slice, in `optim.accumulate` micro-batches (each with its own BN
        statistics, exactly as each DDP rank normalises its own slice)."""
        p, sched, world, k = self.progress, self.schedule, self.world, self.cfg.optim.accumulate
        lr = sched.lr(p.step, p.warmup_end)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        for i, (xc, yc) in enumerate(zip(x.chunk(k), y.chunk(k), strict=True)):
            # dropout shortcuts: a function of the step and the micro-batch's place in the global batch
            torch.manual_seed(derive_seed(seed, "step", p.step, world.rank * k + i))
            sync = i == k - 1 or not world.active
            with nullcontext() if sync else self.train_model.no_sync(), self.amp:
                logits = self.train_model(xc)
            loss = F.cross_entropy(logits.float(), yc) * (yc.numel() / y.numel())
            loss.backward()
            total += loss.detach()
            wrong += (logits.detach().argmax(1) != yc).sum()
        self.optimizer.step()
        self._device_sums(total * y.numel(), wrong)  # read back once per epoch
        in_warmup = sched.warmup and p.warmup_end is None and p.step < sched.warmup_iters
        if in_warmup:  # v1: warm up until the training error is below 80%
            global_wrong = all_reduce_sum(wrong.clone(), world).item()
            if global_wrong / (y.numel() * world.size) < sched.warmup_until_error:
                p.warmup_end = p.step + 1
        p.seen += y.numel() * world.size
        p.step += 1
        return torch.isfinite(total)

    def _device_sums(self, loss: torch.Tensor, wrong: torch.Tensor) -> None:
        if self._sums is None:
            self._sums = [torch.zeros((), device=self.device, dtype=torch.float64),
                          torch.zeros((), device=self.device, dtype=torch.int64)]
        self._sums[0] += loss.double()
        self._sums[1] += wrong

    def _flush_sums(self) -> None:
        """Move the device-side epoch sums into the (checkpointed) progress record."""
        if self._sums is not None:
            loss, wrong = (all_reduce_sum(t, self.world) for t in self._sums)  # over all ranks
            self.progress.loss_sum += loss.item()
            self.progress.wrong += int(wrong.item())
            self._sums = None

    def _sync_time(self, t0: float) -> None:
        self._flush_sums()  # a host sync: the elapsed time below covers finished work
        self.progress.train_time += time.perf_counter() - t0

    # evaluation and the records ------------------------------------------------------------------------
    def _evaluate(self, epoch: int) -> None:
        """Rank 0 evaluates, writes the row and checkpoints; the others wait at the next collective."""
        p = self.progress
        if not self.world.main:
            p.reset_epoch()
            return
        row = self._metrics_row()
        self.run.append_metrics(row.to_dict())
        selected = row.val_error if row.has_val else row.test_error
        if not p.best or selected <= p.best["val_error" if row.has_val else "test_error"]:
            p.best = best_of(row)
        self.reporter.evaluation(row)
        p.reset_epoch()
        p.tick()
        self.save(best=p.best.get("step") == p.step)

    def _metrics_row(self) -> MetricsRow:
        p, bs = self.progress, self.cfg.optim.batch_size
        test = evaluate(self.model, self.source, "test", bs, self.device, self.amp, self.channels_last)
        val = (evaluate(self.model, self.source, "val", bs, self.device, self.amp, self.channels_last)
               if self.source.has_val else None)
        train_loss = p.loss_sum / max(p.seen, 1)
        return MetricsRow(
            epoch=p.epoch_label(self.spe), step=p.step, lr=self.schedule.lr(p.step - 1, p.warmup_end),
            train_loss=train_loss if math.isfinite(train_loss) else None, train_error=p.wrong / max(p.seen, 1),
            test_loss=test["loss"], test_error=test["error"], test_top5_error=test["top5_error"],
            val_loss=val and val["loss"], val_error=val and val["error"], val_top5_error=val and val["top5_error"],
            images_per_s=p.seen / p.train_time if p.train_time > 0 else 0.0,
            eval_images_per_s=test["images_per_s"], epoch_time_s=p.train_time, wall_time_s=p.elapsed)

    def _record_divergence(self, epoch: int, step: int | None) -> None:
        self._flush_sums()
        p = self.progress
        row = DivergenceRow(epoch=epoch + 1, step=p.step, diverged_at_step=step,
                            lr=self.schedule.lr(max(p.step - 1, 0), p.warmup_end))
        self.run.append_metrics(row.to_dict())
        self.reporter.divergence(row)

    def write_summary(self, status: str, diverged_at: int | None) -> Summary:
        return self.reporter.summary(status=status, diverged_at=diverged_at, progress=self.progress,
                                     model=self.spec.name, data=self.cfg.data.source, recipe=self.cfg.recipe,
                                     params=count_params(self.model), device=self.device,
                                     title=f"{self.spec.name} on {self.source.name}")

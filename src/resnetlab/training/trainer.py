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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.data import DataSource, cache_dir, derive_seed
from resnetlab.errors import CheckpointError, ConfigError, RunDirError
from resnetlab.networks.counting import count_macs, count_params
from resnetlab.networks.net import ResNet
from resnetlab.networks.spec import ResNetSpec
from resnetlab.runs.directory import RunDir
from resnetlab.runs.records import DivergenceRow, MetricsRow, Summary, WorkerResult, best_of
from resnetlab.settings.config import Config, config_from_dict
from resnetlab.training.distributed import World, all_reduce_sum, barrier, broadcast, init_from_env, shutdown
from resnetlab.training.evaluation import evaluate
from resnetlab.training.fast import (
    COMPILE_GAIN,
    MIN_GAIN,
    CompileChoice,
    choose_compile,
    compile_module,
    has_cxx_compiler,
    make_sgd,
    use_compile_cache,
)
from resnetlab.training.monitor import DivergenceMonitor, StopFlag, StopReason
from resnetlab.training.progress import Progress
from resnetlab.training.reporting import Log, Reporter, quiet, started, tee
from resnetlab.training.schedule import Schedule, build_schedule
from resnetlab.training.setup import Setup, autocast, check_trainable, data_options, prepare, use_channels_last
from resnetlab.version import __version__
from resnetlab.weights.checkpoint import load_checkpoint, load_state, save_checkpoint
from resnetlab.weights.formats import resolve, start_from

EXIT_STOPPED = 3  # SIGTERM/SIGINT: checkpoint written, resume with --resume


class Trainer:
    """One training run in one run directory."""

    def __init__(self, cfg: Config, run: RunDir, source: DataSource, spec: ResNetSpec, device: torch.device,
                 log: Log = print, world: World | None = None) -> None:
        world = world or World()
        self.cfg, self.run, self.source, self.spec, self.device, self.world = cfg, run, source, spec, device, world
        torch.manual_seed(cfg.run.seed)
        self.model = ResNet(spec).to(device)
        self.channels_last = use_channels_last(cfg, device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.run.sync_bn and world.active and device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.train_model: nn.Module = self.model
        if world.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        o = cfg.optim
        # global batch: the recipe's, split over ranks; or, with linear scaling, the recipe's per rank
        self.batch = o.batch_size * (world.size if o.linear_scaling else 1)
        if self.batch % (world.size * o.accumulate):
            raise ConfigError(f"optim.batch_size: global batch {self.batch} does not split into {world.size} "
                              f"rank(s) x {o.accumulate} micro-batch(es)")
        micro = min(self.batch, source.train_size) // (world.size * o.accumulate)
        check_trainable(spec, max(micro, 1), source.image_size)
        self.optimizer = make_sgd(self.model.parameters(), device, lr=o.lr, momentum=o.momentum,
                                  weight_decay=o.weight_decay, nesterov=o.nesterov and o.momentum > 0)
        self.spe = source.steps_per_epoch(self.batch)
        self.schedule: Schedule = build_schedule(cfg, self.spe, spec.depth, world.size)
        self.compile = self._choose_compile()
        self._eager_model = self.train_model
        self.train_model = compile_module(self.train_model, self.compile.mode, device)  # the same parameters
        self.amp = autocast(cfg, device)
        self.progress = Progress()
        self.reporter = Reporter(run, log if world.main else quiet, tensorboard=cfg.run.tensorboard,
                                 progress=cfg.run.progress, total_steps=self.schedule.total,
                                 steps_per_epoch=self.spe, batch=self.batch,
                                 trackers=cfg.run.tracker if world.main else None)
        self._sums: list[torch.Tensor] | None = None  # device-side loss and error sums of the epoch

    @classmethod
    def from_setup(cls, setup: Setup, run: RunDir, log: Log = print) -> Trainer:
        return cls(setup.cfg, run, setup.source, setup.spec, setup.device, log, setup.world)

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

    def _choose_compile(self) -> CompileChoice:
        """`run.compile` resolved ("auto": by the cost model of fast.choose_compile); the compile cache on."""
        setting, device = self.cfg.run.compile, self.device
        macs, images = 0, 0
        if setting == "auto" and device.type == "cpu" and COMPILE_GAIN.get(self.spec.block, 1.0) >= MIN_GAIN:
            macs = count_macs(self.model, self.source.image_size, self.source.channels)
            images = self.schedule.total * self.batch // self.world.size  # this process's share
        choice = choose_compile(setting, device, self.spec.block, self.spec.depth, images, macs,
                                has_cxx_compiler())
        if choice.mode != "off":
            use_compile_cache(cache_dir(data_options(self.cfg)))
        return choice

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


# ---- entry points ---------------------------------------------------------------------------------------
def train(cfg: Config, out: str | Path | None = None, log: Log = print) -> tuple[RunDir, Summary | WorkerResult]:
    """Start a new run: everything is validated and loaded before the run directory is created."""
    world = init_from_env(cfg.run.device)
    try:
        setup = prepare(cfg, world)
        if out is None:
            out = broadcast(Path("runs") / f"{setup.spec.name}-{setup.source.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                            world)
        run = RunDir(out)
        run.check_new()
        trainer = Trainer.from_setup(setup, run, log)
        init = _start_from(trainer, cfg)
        barrier(world)  # every rank has checked its input before rank 0 creates anything
        if world.main:
            run.create(cfg.to_dict() | {"resolved": trainer.resolved() | init})
            trainer.log = tee(log, run.log)
        try:
            started(trainer.reporter, name=setup.spec.name, params=count_params(trainer.model), source=setup.source,
                    total=trainer.schedule.total, spe=trainer.spe, device=setup.device, processes=world.size)
            trainer.log(trainer.compile.reason)
            if init:
                trainer.log("initial weights: " + ", ".join(f"{k} {v}" for k, v in init["init"].items()))
            return run, trainer.fit()
        finally:
            run.unlock()
    finally:
        shutdown(world)


def resume(path: str | Path, model: str | None = None, device: str | None = None,
           log: Log = print) -> tuple[RunDir, Summary | WorkerResult]:
    """Continue a run from its newest good checkpoint; architecture and config come from the run (read,
    never changed: `device` only says where this session runs).

    The step counts global batches, so a run may resume on a different number of processes."""
    run = RunDir(path)
    saved = run.read_config()
    cfg = config_from_dict(saved, where=str(run.config))
    if model is not None and model != cfg.model["name"]:
        raise RunDirError(f"{run.path}: this run trains {cfg.model['name']}, not {model}")
    fresh = _check_resumable(run)
    world = init_from_env(device or cfg.run.device)
    try:
        if world.main:
            run.lock()
        trainer = Trainer.from_setup(prepare(cfg, world, device), run, tee(log, run.log))
        trainer.log(trainer.compile.reason)
        if fresh:  # killed before its first checkpoint: start again
            _start_from(trainer, cfg, (saved.get("resolved") or {}).get("init", {}).get("sha256"))
            if world.main:
                run.truncate_metrics(0)
            trainer.log(f"{run.path}: no checkpoint yet, starting from the beginning")
            return run, trainer.fit()
        weights = resolve(run.path)  # what the run directory means to every command: its newest good checkpoint
        ckpt_path, payload = weights.path, weights.payload
        assert payload is not None  # a run directory's checkpoints are ours: read_weights keeps their payload
        for problem in weights.skipped:
            trainer.log(f"skipping bad checkpoint: {problem}")
        trainer.restore(payload)
        trainer.source.load_norm_state(payload["norm"])
        barrier(world)  # all ranks have read the checkpoint before rank 0 rewrites metrics
        if world.main:
            run.truncate_metrics(trainer.progress.step)
            _repair_best(run, payload, trainer.log)
            run.prune(cfg.run.keep_checkpoints)
        if trainer.progress.step >= trainer.schedule.total:
            trainer.log(f"{run.path}: already finished at step {trainer.progress.step}")
        else:
            trainer.log(f"resuming {run.path} from {ckpt_path.name} (step {trainer.progress.step})")
        return run, trainer.fit()
    finally:
        run.unlock()
        shutdown(world)


def _check_resumable(run: RunDir) -> bool:
    """Whether `run` may be resumed, checked before anything is built: True when it died before its first
    checkpoint (it starts again from the beginning). A run whose checkpoints are gone after it ended, or whose
    checkpoints/ folder is gone, is refused: resuming would train it again from scratch and replace its
    summary and metrics (or train the whole budget and only then fail to write)."""
    if not run.checkpoints.is_dir():
        raise RunDirError(f"{run.path}: its checkpoints/ folder is gone: nothing to resume from, nowhere to write")
    if run.step_checkpoints():
        return False
    if run.summary.exists():
        raise RunDirError(f"{run.path}: ended (it has a summary.json) but its checkpoints are gone: nothing to "
                          "resume from; start a new run (--init can take its weights from a checkpoint)")
    if run.best.exists():
        raise RunDirError(f"{run.path}: its step checkpoints are gone (only best.pt is left): nothing to resume "
                          "from; evaluate it with --best, or start a new run")
    return True


def _start_from(trainer: Trainer, cfg: Config, sha256: str | None = None) -> dict[str, Any]:
    """`run.init`: the weights file the run starts from, loaded with its input normalisation (`weights.py`)."""
    if cfg.run.init is None:
        return {}
    return {"init": start_from(trainer.model, trainer.source, cfg.run.init, sha256)}


def _repair_best(run: RunDir, payload: dict[str, Any], log: Log) -> None:
    """A kill between the step checkpoint and best.pt: the step checkpoint is the best, so copy it."""
    best_step = payload["progress"].get("best", {}).get("step")
    if best_step != payload["progress"]["step"]:
        return
    try:
        have = load_checkpoint(run.best)["progress"]["step"] if run.best.exists() else None
    except (CheckpointError, KeyError, TypeError):
        have = None
    if have != best_step:
        save_checkpoint(run.best, payload)
        log(f"best.pt rewritten from the step-{best_step} checkpoint (it was missing or stale)")

"""Training with the papers' recipes: SGD with momentum and step decay, evaluation, checkpoints, resume.

The loop is iteration-based (v1 sec. 4.2 counts iterations). Everything random is a function of the seed
and the iteration (data order, augmentation, dropout), and the checkpoint holds the model, optimizer,
schedule position and epoch accumulators, so a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, config_from_dict
from .counting import count_macs, count_params
from .data import DataOptions, DataSource, cache_dir, derive_seed, load_data
from .distributed import World, all_reduce_max, all_reduce_sum, barrier, broadcast, init_from_env, shutdown
from .errors import CheckpointError, ConfigError, RunDirError
from .evaluation import evaluate
from .fast import (
    CompileChoice,
    channels_last_default,
    choose_compile,
    compile_module,
    has_cxx_compiler,
    make_sgd,
    use_compile_cache,
)
from .net import ResNet
from .registry import get_spec
from .rundir import RunDir
from .schedule import Schedule, build_schedule
from .spec import ResNetSpec

FAIL_ERROR = 0.20  # the papers' "fail": test error above 20%
EXIT_STOPPED = 3  # SIGTERM/SIGINT: checkpoint written, resume with --resume


# ---- set-up -------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {name!r} requested but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"run.device: {name!r} is not supported (cpu or cuda)")
    return device


def configure_runtime(cfg: Config, device: torch.device) -> None:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def data_options(cfg: Config) -> DataOptions:
    d = cfg.data
    return DataOptions(normalize=d.normalize, pad=d.pad, flip=d.flip, val_split=d.val_split, workers=d.workers,
                       ten_crop=d.ten_crop, crop_size=d.crop_size, scale=(d.scale[0], d.scale[1]),
                       test_resize=d.test_resize, cache_dir=d.cache_dir)


def model_spec(cfg: Config, source: DataSource) -> ResNetSpec:
    """The registry spec with the config's overrides, fitted to the data's channels and classes."""
    overrides = {k: v for k, v in cfg.model.items() if k != "name"}
    for key, value in (("in_channels", source.channels), ("num_classes", source.num_classes)):
        if key in overrides and overrides[key] != value:
            raise ConfigError(f"model.{key}: {overrides[key]} does not match the data ({source.name}: {value})")
        overrides[key] = value
    return get_spec(cfg.model["name"], **overrides)


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    value = cfg.run.channels_last
    return channels_last_default(device) if value == "auto" else bool(value)


def autocast(cfg: Config, device: torch.device) -> Any:
    if cfg.run.amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# ---- the training state ---------------------------------------------------------------------------------
@dataclass
class Progress:
    """Where the run is, and the running sums of the current epoch (saved in every checkpoint)."""

    step: int = 0
    warmup_end: int | None = None  # iteration where warm-up ended early (training error below threshold)
    loss_sum: float = 0.0
    wrong: int = 0
    seen: int = 0
    train_time: float = 0.0
    elapsed: float = 0.0  # wall time of all sessions of this run
    best: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to finish the current step, checkpoint and exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: signals stay with the caller
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """One training run in one run directory."""

    def __init__(self, cfg: Config, run: RunDir, source: DataSource, spec: ResNetSpec, device: torch.device,
                 log: Any = print, world: World | None = None) -> None:
        world = world or World()
        self.cfg, self.run, self.source, self.spec, self.device, self.world = cfg, run, source, spec, device, world
        self.log = log if world.main else (lambda line: None)
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
        self.optimizer = make_sgd(self.model.parameters(), device, lr=o.lr, momentum=o.momentum,
                                  weight_decay=o.weight_decay, nesterov=o.nesterov and o.momentum > 0)
        self.spe = source.steps_per_epoch(self.batch)
        self.schedule: Schedule = build_schedule(cfg, self.spe, spec.depth)
        if o.linear_scaling and world.active:  # the linear scaling rule: lr x (global batch / recipe batch)
            self.schedule = dataclasses.replace(self.schedule, base_lr=self.schedule.base_lr * world.size,
                                                warmup_lr=self.schedule.warmup_lr * world.size)
        self.compile = self._choose_compile()
        self.train_model = compile_module(self.train_model, self.compile.mode, device)  # the same parameters
        self.amp = autocast(cfg, device)
        self.progress = Progress()
        self.tb: Any = None
        self._sums: list[torch.Tensor] | None = None  # device-side loss and error sums of the epoch

    def _choose_compile(self) -> CompileChoice:
        """`run.compile` resolved ("auto": by the cost model of fast.choose_compile); the compile cache on."""
        setting, device = self.cfg.run.compile, self.device
        macs, images = 0, 0
        if setting == "auto" and device.type == "cpu" and self.spec.block == "basic":
            macs = count_macs(self.model, self.source.image_size, self.source.channels)
            images = self.schedule.total * self.batch // self.world.size  # this process's share
        choice = choose_compile(setting, device, self.spec.block, self.spec.depth, images, macs,
                                has_cxx_compiler())
        if choice.mode != "off":
            use_compile_cache(cache_dir(data_options(self.cfg)))
        return choice

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
            self.model.load_state_dict(payload["model"])
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
    def fit(self) -> dict[str, Any]:
        p, sched, cfg = self.progress, self.schedule, self.cfg
        self._open_tensorboard()
        session_start = time.perf_counter() - p.elapsed
        bs, seed, world = self.batch, cfg.run.seed, self.world
        status, diverged_at = "finished", None
        pending: list[torch.Tensor] = []  # finite-loss flags, checked one step late on CUDA (no stall)
        lag = 1 if self.device.type == "cuda" else 0
        with _StopFlag() as stop:
            while p.step < sched.total and status == "finished":
                epoch, start = divmod(p.step, self.spe)
                steps = min(self.spe - start, sched.total - p.step)
                bar = self._bar(epoch, start, steps)
                t0 = time.perf_counter()
                batches = self.source.train_batches(epoch, bs, seed=seed, device=self.device, start_step=start,
                                                    rank=world.rank, world_size=world.size)
                self.train_model.train()
                for x, y in batches:
                    if p.step >= sched.total:
                        break
                    finite = self.train_step(x, y, seed)
                    if world.active:  # every rank must stop at the same step: agree on the flags
                        flags = torch.stack([torch.tensor(float(stop.signal is not None), device=self.device),
                                             (~finite).float()])
                        stop_now, bad = all_reduce_max(flags, world).tolist()
                        if bad:
                            status, diverged_at = "diverged", p.step - 1
                            break
                        if stop_now and stop.signal is None:
                            stop.signal = signal.SIGTERM
                    else:
                        pending.append(finite)
                        if len(pending) > lag and not bool(pending.pop(0)):
                            status, diverged_at = "diverged", p.step - lag
                            break
                    if bar is not None:
                        bar.update(y.numel() * world.size)
                    if stop.signal is not None:
                        status = "stopped"
                        break
                    if cfg.run.checkpoint_every and p.step % cfg.run.checkpoint_every == 0 \
                            and p.step % self.spe != 0 and p.step < sched.total:
                        self._sync_time(t0)
                        t0 = time.perf_counter()
                        p.elapsed = time.perf_counter() - session_start
                        if world.main:
                            self.save()
                if status == "finished" and pending and not all(bool(f) for f in pending):
                    status, diverged_at = "diverged", p.step
                pending.clear()
                self._sync_time(t0)
                if bar is not None:
                    bar.close()
                p.elapsed = time.perf_counter() - session_start
                if status == "diverged":
                    if world.main:
                        self._record_divergence(epoch, diverged_at)
                    break
                if status == "stopped":
                    if world.main:
                        self.save()
                    self.log(f"stopped by signal {stop.signal} at step {p.step}: checkpoint written, "
                             f"continue with: resnetlab train --resume {self.run.path}")
                    break
                epoch_done = p.step % self.spe == 0
                if (epoch_done and (epoch + 1) % cfg.run.eval_every == 0) or p.step >= sched.total:
                    if world.main:  # rank 0 evaluates and writes; the others wait at the next collective
                        self._end_of_epoch(epoch)
                        p.elapsed = time.perf_counter() - session_start
                        self.save(best=p.best.get("step") == p.step)
                    else:
                        p.loss_sum, p.wrong, p.seen, p.train_time = 0.0, 0, 0, 0.0
        if self.tb is not None:
            self.tb.close()
        barrier(world)
        if not world.main:
            return {"status": status, "diverged": status == "diverged", "rank": world.rank}
        return self.write_summary(status, diverged_at)

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

    def _end_of_epoch(self, epoch: int) -> None:
        p, cfg = self.progress, self.cfg
        bs = cfg.optim.batch_size
        test = evaluate(self.model, self.source, "test", bs, self.device, self.amp, self.channels_last)
        row: dict[str, Any] = {
            "epoch": epoch + 1 if p.step % self.spe == 0 else round(p.step / self.spe, 3), "step": p.step,
            "lr": self.schedule.lr(p.step - 1, p.warmup_end),
            "train_loss": p.loss_sum / max(p.seen, 1), "train_error": p.wrong / max(p.seen, 1),
            "test_loss": test["loss"], "test_error": test["error"], "test_top5_error": test["top5_error"],
        }
        if self.source.has_val:
            val = evaluate(self.model, self.source, "val", bs, self.device, self.amp, self.channels_last)
            row.update(val_loss=val["loss"], val_error=val["error"], val_top5_error=val["top5_error"])
        row.update(images_per_s=p.seen / p.train_time if p.train_time > 0 else 0.0,
                   eval_images_per_s=test["images_per_s"], epoch_time_s=p.train_time, wall_time_s=p.elapsed)
        if not math.isfinite(row["train_loss"]):
            row["train_loss"] = None
        self.run.append_metrics(row)
        key = "val_error" if self.source.has_val else "test_error"
        if not p.best or row[key] <= p.best[key]:
            p.best = {k: row[k] for k in ("epoch", "step", "test_error", "test_top5_error") + (
                ("val_error",) if self.source.has_val else ())}
            p.best["selected_on"] = "val" if self.source.has_val else "test"
        self._log_row(row)
        p.loss_sum, p.wrong, p.seen, p.train_time = 0.0, 0, 0, 0.0

    def _record_divergence(self, epoch: int, step: int | None) -> None:
        self._flush_sums()
        self.run.append_metrics({"epoch": epoch + 1, "step": self.progress.step, "diverged": True,
                                 "diverged_at_step": step, "lr": self.schedule.lr(max(self.progress.step - 1, 0),
                                                                                 self.progress.warmup_end)})
        self.log(f"loss became NaN/Inf at step {step}: run stopped and recorded as diverged (the paper's fail)")

    # reporting --------------------------------------------------------------------------------------------
    def _bar(self, epoch: int, start: int, steps: int) -> Any:
        show = self.cfg.run.progress
        if show is False or (show == "auto" and not sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        total_epochs = math.ceil(self.schedule.total / self.spe)
        return tqdm(total=steps * self.cfg.optim.batch_size, unit="img", unit_scale=True, leave=False,
                    desc=f"epoch {epoch + 1}/{total_epochs}", file=sys.stderr, dynamic_ncols=True)

    def _log_row(self, row: dict[str, Any]) -> None:
        total_epochs = math.ceil(self.schedule.total / self.spe)
        val = f" val err {row['val_error']:.2%}" if "val_error" in row else ""
        self.log(f"epoch {row['epoch']}/{total_epochs} step {row['step']}/{self.schedule.total} "
                 f"lr {row['lr']:.3g} train loss {row['train_loss']:.4f} err {row['train_error']:.2%}{val} "
                 f"test err {row['test_error']:.2%} (top-5 {row['test_top5_error']:.2%}) "
                 f"{row['images_per_s']:.0f} img/s")
        if self.tb is not None:
            for key in ("train_loss", "train_error", "test_loss", "test_error", "val_error", "lr"):
                if row.get(key) is not None:
                    self.tb.add_scalar(key, row[key], row["step"])

    def _open_tensorboard(self) -> None:
        if self.cfg.run.tensorboard is False:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if self.cfg.run.tensorboard is True:
                self.log("tensorboard is not installed: no events written")
            return
        self.tb = SummaryWriter(str(self.run.path / "tensorboard"))

    def write_summary(self, status: str, diverged_at: int | None) -> dict[str, Any]:
        rows = [r for r in self.run.read_metrics() if "test_error" in r]
        final = rows[-1] if rows else {}
        p = self.progress
        summary: dict[str, Any] = {
            "model": self.spec.name, "data": self.cfg.data.source, "recipe": self.cfg.recipe,
            "status": status, "diverged": status == "diverged", "diverged_at_step": diverged_at,
            "steps": p.step, "total_steps": self.schedule.total, "epochs": round(p.step / self.spe, 3),
            "final": {k: final.get(k) for k in ("test_error", "test_top5_error", "test_loss",
                                                 "train_error", "train_loss", "val_error") if k in final},
            "best": p.best,
            "fail": status == "diverged" or (bool(final) and final["test_error"] > FAIL_ERROR),
            "params": count_params(self.model), "wall_time_s": round(p.elapsed, 3),
            "images_per_s": _median([r["images_per_s"] for r in rows]),
            "device": _device_name(self.device), "torch": torch.__version__, "resnetlab": __version__,
            "threads": torch.get_num_threads(),
        }
        self.run.write_json(self.run.summary, summary)
        if rows:
            from .plots import plot_curves

            plot_curves({self.spec.name or "model": rows}, self.run.figure,
                        title=f"{self.spec.name} on {self.source.name}")
        return summary


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v)
    return values[len(values) // 2] if values else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


# ---- entry points ---------------------------------------------------------------------------------------
def train(cfg: Config, out: str | Path | None = None, log: Any = print) -> tuple[RunDir, dict[str, Any]]:
    """Start a new run: everything is validated and loaded before the run directory is created."""
    world = init_from_env(cfg.run.device)
    try:
        device = _rank_device(resolve_device(cfg.run.device), world)
        configure_runtime(cfg, device)
        source = load_data(cfg.data.source, data_options(cfg))
        spec = model_spec(cfg, source)
        if out is None:
            out = broadcast(Path("runs") / f"{spec.name}-{source.name}-{time.strftime('%Y%m%d-%H%M%S')}", world)
        run = RunDir(out)
        run.check_new()
        trainer = Trainer(cfg, run, source, spec, device, log, world)
        init = _start_from(trainer, cfg)
        barrier(world)  # every rank has checked its input before rank 0 creates anything
        if world.main:
            run.create(cfg.to_dict() | {"resolved": trainer.schedule.to_dict() | {
                "steps_per_epoch": trainer.spe, "global_batch": trainer.batch, "world_size": world.size,
                "spec": spec.to_dict(), "device": str(device), "compile": trainer.compile.mode} | init})
            trainer.log = _tee(log, run.log)
        try:
            trainer.log(f"{spec.name} ({count_params(trainer.model):,} parameters) on {source.name}: "
                        f"{source.train_size} training images, {trainer.schedule.total} iterations "
                        f"({trainer.schedule.total / trainer.spe:.1f} epochs) on {_device_name(device)}"
                        + (f" x {world.size} processes" if world.active else ""))
            trainer.log(trainer.compile.reason)
            if init:
                trainer.log("initial weights: " + ", ".join(f"{k} {v}" for k, v in init["init"].items()))
            return run, trainer.fit()
        finally:
            run.unlock()
    finally:
        shutdown(world)


def resume(path: str | Path, model: str | None = None, device: str | None = None,
           log: Any = print) -> tuple[RunDir, dict[str, Any]]:
    """Continue a run from its newest good checkpoint; architecture and config come from the run.

    The step counts global batches, so a run may resume on a different number of processes."""
    run = RunDir(path)
    saved = run.read_config()
    cfg = config_from_dict(saved)
    if model is not None and model != cfg.model["name"]:
        raise RunDirError(f"{run.path}: this run trains {cfg.model['name']}, not {model}")
    if device is not None:
        cfg.run.device = device
    world = init_from_env(cfg.run.device)
    try:
        if world.main:
            run.lock()
        dev = _rank_device(resolve_device(cfg.run.device), world)
        configure_runtime(cfg, dev)
        source = load_data(cfg.data.source, data_options(cfg))
        spec = model_spec(cfg, source)
        trainer = Trainer(cfg, run, source, spec, dev, _tee(log, run.log), world)
        trainer.log(trainer.compile.reason)
        if not run.step_checkpoints():  # killed before its first checkpoint: start again
            _start_from(trainer, cfg, (saved.get("resolved") or {}).get("init", {}).get("sha256"))
            if world.main:
                run.truncate_metrics(0)
            trainer.log(f"{run.path}: no checkpoint yet, starting from the beginning")
            return run, trainer.fit()
        ckpt_path, payload, problems = run.latest_good(load_checkpoint)
        for problem in problems:
            trainer.log(f"skipping bad checkpoint: {problem}")
        trainer.restore(payload)
        source.load_norm_state(payload["norm"])
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


def _start_from(trainer: Trainer, cfg: Config, sha256: str | None = None) -> dict[str, Any]:
    """`run.init`: the weights file the run starts from, loaded with its input normalisation (`weights.py`)."""
    if not cfg.run.init:
        return {}
    from .weights import start_from

    return {"init": start_from(trainer.model, trainer.source, cfg.run.init, sha256)}


def _repair_best(run: RunDir, payload: dict[str, Any], log: Any) -> None:
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


def _rank_device(device: torch.device, world: World) -> torch.device:
    if world.active and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def _tee(log: Any, path: Path) -> Any:
    def write(line: str) -> None:
        log(line)
        with open(path, "a") as f:
            f.write(line + "\n")

    return write

"""Where a run is and where it goes: the learning-rate schedule, the progress saved in every checkpoint, and why
the loop stops.

The schedule counts iterations: step decay at milestones, with the papers' warm-up (v1 sec. 4.2: lr 0.1, divided by
10 at 32k and 48k iterations, stop at 64k; ResNet-110 warms up at 0.01 until training error is below 80%, about 400
iterations). A shorter budget keeps the milestones' fractions. A resumed run continues the epoch's sums and wall
time where it stopped. Divergence is the papers' "fail" taken to its end (v1 sec. 4.2: ResNet-110 without warm-up
"fails to start converging" at lr 0.1): the run is recorded as diverged rather than crashing."""

from __future__ import annotations

import contextlib
import enum
import functools
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from resnetlab.settings.config import Config
from resnetlab.training.distributed import World, all_reduce


@dataclass(frozen=True)
class Schedule:
    base_lr: float
    total: int  # iterations
    milestones: tuple[int, ...]  # iterations at which lr is multiplied by gamma
    gamma: float
    warmup: bool
    warmup_lr: float
    warmup_iters: int
    warmup_until_error: float

    def lr(self, step: int, warmup_end: int | None = None) -> float:
        """lr of iteration `step` (0-based); `warmup_end` is where warm-up stopped early, if it did."""
        end = self.warmup_iters if warmup_end is None else min(warmup_end, self.warmup_iters)
        if self.warmup and step < end:
            return self.warmup_lr
        return self.base_lr * self.gamma ** sum(1 for m in self.milestones if step >= m)

    def to_dict(self) -> dict[str, object]:
        fields = asdict(self)
        return {"total_iters": fields.pop("total"), "milestone_iters": list(fields.pop("milestones"))} | fields


def build_schedule(cfg: Config, steps_per_epoch: int, depth: int, world_size: int = 1) -> Schedule:
    """The recipe's schedule (in iterations or epochs) and budget in iterations. With `optim.linear_scaling` each
    of `world_size` processes takes the recipe's batch and the learning rates scale with the global batch: the
    linear scaling rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 2.1)."""
    s, warmup = cfg.schedule, cfg.warmup
    unit = steps_per_epoch if s.unit == "epoch" else 1
    total, milestones = s.total * unit, [m * unit for m in s.milestones]
    budget = max(1, round(s.epochs * steps_per_epoch)) if s.epochs is not None else s.iters
    if budget is not None and budget != total:
        milestones = [math.floor(m * budget / total + 0.5) for m in milestones]  # same fractions
        total = budget
    scale = world_size if cfg.optim.linear_scaling else 1  # x 1 is exact: one process keeps the recipe's lr
    return Schedule(cfg.optim.lr * scale, total, tuple(milestones), s.gamma,
                    depth >= 110 if warmup.enabled == "auto" else bool(warmup.enabled), warmup.lr * scale,
                    warmup.iters, warmup.until_error)


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
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def start_session(self) -> None:
        """A session (the first, or a resumed one) continues the wall time of the sessions before it."""
        self._session_start = time.perf_counter() - self.elapsed

    def tick(self) -> None:
        """Bring `elapsed` up to now."""
        self.elapsed = time.perf_counter() - self._session_start

    def reset_epoch(self) -> None:
        """An evaluation has reported the epoch's sums: the next epoch starts from zero."""
        self.loss_sum, self.wrong, self.seen, self.train_time = 0.0, 0, 0, 0.0

    def epoch_label(self, steps_per_epoch: int) -> int | float:
        """The epoch of a metrics row: whole at an epoch's end, a fraction at a run's partial last epoch."""
        done, rest = divmod(self.step, steps_per_epoch)
        return done if rest == 0 else round(self.step / steps_per_epoch, 3)


class EpochSums:
    """The epoch's training loss and error sums kept on the device (no host sync per step), moved into the
    checkpointed `Progress` at a sync point (`flush`, summed over the ranks)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: list[torch.Tensor] | None = None

    def add(self, loss: torch.Tensor, wrong: torch.Tensor) -> None:
        if self.sums is None:
            self.sums = [torch.zeros((), device=self.device, dtype=torch.float64),
                         torch.zeros((), device=self.device, dtype=torch.int64)]
        self.sums[0] += loss.double()
        self.sums[1] += wrong

    def loss(self) -> float:
        """The loss summed over the epoch's images so far (a host sync; 0 before the first step)."""
        return self.sums[0].item() if self.sums is not None else 0.0

    def flush(self, progress: Progress, world: World) -> None:
        if self.sums is not None:
            loss, wrong = (all_reduce(t, world) for t in self.sums)
            progress.loss_sum += loss.item()
            progress.wrong += int(wrong.item())
            self.sums = None


class StopReason(enum.Enum):
    """The loop's state; the value of a final reason is summary.json's "status"."""

    RUNNING = "running"
    FINISHED = "finished"  # the schedule's last step is done
    STOPPED = "stopped"  # SIGTERM/SIGINT: checkpoint written, resume with --resume
    DIVERGED = "diverged"  # the loss became NaN/Inf

    @property
    def status(self) -> str:
        """What summary.json records: a loop that ended while running ran to the end of its schedule."""
        return StopReason.FINISHED.value if self is StopReason.RUNNING else self.value


class StopFlag:
    """SIGTERM/SIGINT ask the loop to finish the current step, checkpoint and exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: signals stay with the caller
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class DivergenceMonitor:
    """Finds the first step whose loss was not finite, `lag` steps late: reading the flag is a host-device sync,
    so on CUDA a step's flag is read one step later, when the GPU has long finished it (0 on the CPU). Across
    ranks, one all-reduce per step makes every rank stop at the same step, on a divergence or a signal anywhere.
    `after_step(finite, step, stop)` returns the step (counting from 1) of a divergence once it is known."""

    def __init__(self, lag: int, world: World,
                 reduce: Callable[[torch.Tensor, World], torch.Tensor] | None = None) -> None:
        self.world, self.reduce = world, reduce or functools.partial(all_reduce, op="max")
        self.lag = 0 if world.active else lag  # the all-reduce synchronises anyway
        self._pending: list[tuple[int, torch.Tensor]] = []

    @classmethod
    def for_device(cls, device: torch.device, world: World) -> DivergenceMonitor:
        return cls(1 if device.type == "cuda" else 0, world)

    def after_step(self, finite: torch.Tensor, step: int, stop: StopFlag) -> int | None:
        if self.world.active:
            return self._agree(finite, step, stop)
        self._pending.append((step, finite))
        return self.drain(keep=self.lag)

    def _agree(self, finite: torch.Tensor, step: int, stop: StopFlag) -> int | None:
        """All ranks stop together: at a divergence on any rank, or at a signal received by any rank."""
        flags = torch.stack([torch.tensor(float(stop.signal is not None), device=finite.device),
                             (~finite).float()])
        stop_now, bad = self.reduce(flags, self.world).tolist()
        if bad:
            return step
        if stop_now and stop.signal is None:
            stop.signal = signal.SIGTERM
        return None

    def drain(self, keep: int = 0) -> int | None:
        """Read the flags not read yet but the newest `keep` (at an epoch's end: all of them) and forget them."""
        cut = max(len(self._pending) - keep, 0)
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        return next((at for at, flag in ready if not bool(flag)), None)

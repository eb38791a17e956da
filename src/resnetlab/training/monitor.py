"""Why the training loop stops: the schedule's end, a signal, or a loss that is no longer finite. Divergence is
the papers' "fail" taken to its end (v1 sec. 4.2: ResNet-110 without warm-up "fails to start converging" at lr
0.1): the run is recorded as diverged rather than crashing."""

from __future__ import annotations

import contextlib
import enum
import functools
import signal
from collections.abc import Callable
from typing import Any

import torch

from resnetlab.training.distributed import World, all_reduce


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

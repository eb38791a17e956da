"""Where a run is: the step, the warm-up's end, the sums of the current epoch, the best evaluation, wall time;
all saved in every checkpoint, so a resumed run continues the epoch's sums and wall time where it stopped."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from resnetlab.training.distributed import World, all_reduce


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

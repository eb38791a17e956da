"""The learning-rate schedule in iterations: step decay at milestones, with the papers' warm-up.

v1 sec. 4.2: lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k; ResNet-110 warms up at 0.01
until training error is below 80% (about 400 iterations). A shorter budget keeps the milestones' fractions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from resnetlab.settings.config import Config


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
        return {"total_iters": self.total, "milestone_iters": list(self.milestones), "base_lr": self.base_lr,
                "gamma": self.gamma, "warmup": self.warmup, "warmup_lr": self.warmup_lr,
                "warmup_iters": self.warmup_iters, "warmup_until_error": self.warmup_until_error}


def build_schedule(cfg: Config, steps_per_epoch: int, depth: int, world_size: int = 1) -> Schedule:
    """Resolve the recipe's schedule (in iterations or epochs) and budget into iterations.

    With `optim.linear_scaling` on `world_size` processes each process takes the recipe's batch, so the
    global batch is `world_size` times the recipe's, and the learning rates (base and warm-up) scale with it:
    the linear scaling rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 2.1)."""
    s = cfg.schedule
    unit = steps_per_epoch if s.unit == "epoch" else 1
    total = s.total * unit
    milestones = [m * unit for m in s.milestones]
    budget = None
    if s.epochs is not None:
        budget = max(1, round(s.epochs * steps_per_epoch))
    elif s.iters is not None:
        budget = s.iters
    if budget is not None and budget != total:
        milestones = [math.floor(m * budget / total + 0.5) for m in milestones]  # same fractions
        total = budget
    enabled = cfg.warmup.enabled
    warmup = depth >= 110 if enabled == "auto" else bool(enabled)
    scale = world_size if cfg.optim.linear_scaling and world_size > 1 else 1
    base_lr, warmup_lr = cfg.optim.lr, cfg.warmup.lr
    if scale > 1:
        base_lr, warmup_lr = base_lr * scale, warmup_lr * scale
    return Schedule(base_lr, total, tuple(milestones), s.gamma, warmup, warmup_lr,
                    cfg.warmup.iters, cfg.warmup.until_error)

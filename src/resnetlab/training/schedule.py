"""The learning-rate schedule in iterations: step decay at milestones, with the papers' warm-up. v1 sec. 4.2: lr
0.1, divided by 10 at 32k and 48k iterations, stop at 64k; ResNet-110 warms up at 0.01 until training error is
below 80% (about 400 iterations). A shorter budget keeps the milestones' fractions."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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

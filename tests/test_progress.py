"""The checkpointed progress bookkeeping and the schedule's linear scaling (`training/progress.py`)."""

from __future__ import annotations

from resnetlab.settings.config import build_config
from resnetlab.training.progress import Progress, build_schedule


def test_progress_checkpoints_only_its_fields() -> None:
    p = Progress(step=5, seen=10)
    p.start_session()
    p.tick()
    assert set(p.to_dict()) == {"step", "warmup_end", "loss_sum", "wrong", "seen", "train_time", "elapsed", "best"}
    assert Progress(**p.to_dict()) == p
    p.loss_sum, p.wrong = 1.0, 3
    p.reset_epoch()
    assert (p.loss_sum, p.wrong, p.seen, p.train_time) == (0.0, 0, 0, 0.0)
    assert Progress(step=88).epoch_label(44) == 2 and Progress(step=60).epoch_label(44) == 1.364


def test_linear_scaling_is_part_of_the_schedule() -> None:
    cfg = build_config(overrides={"optim.linear_scaling": True})
    one, four = build_schedule(cfg, 10, 20), build_schedule(cfg, 10, 20, world_size=4)
    assert four.base_lr == 4 * one.base_lr and four.warmup_lr == 4 * one.warmup_lr
    plain = build_config()
    assert build_schedule(plain, 10, 20, world_size=4).base_lr == plain.optim.lr

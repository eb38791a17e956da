"""Evaluation: top-1 and top-5 error of a model on a split (what a path means: `weights.resolve`), and the data a
trained net is evaluated on (`evaluation_source`), resolved here for `eval` and `analyze` so that each fails with
the same one-line error."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.data import DataOptions, DataSource, load_data
from resnetlab.errors import CheckpointError, ResnetlabError
from resnetlab.networks.folding import fold_bn
from resnetlab.networks.spec import ResNetSpec
from resnetlab.runs.records import MetricsRow
from resnetlab.settings.config import config_from_dict
from resnetlab.training.progress import Progress, Schedule


@torch.no_grad()
def evaluate(model: nn.Module, source: DataSource, split: str, batch_size: int, device: torch.device,
             amp: Any = None, channels_last: bool = False, fold: bool = True) -> dict[str, float]:
    """Loss, top-1 and top-5 error on a split (multi-crop batches averaged over the crops). `fold`: of a copy with
    BN folded into the convs before it (`networks.folding.fold_bn`), the same function to float32 rounding."""
    was_training = model.training
    model.eval()
    net = fold_bn(model) if fold else model
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    wrong1 = torch.zeros((), device=device, dtype=torch.int64)
    wrong5 = torch.zeros_like(wrong1)
    seen, start = 0, time.perf_counter()
    k = min(5, source.num_classes)
    for x, y in source.eval_batches(split, batch_size, device=device):
        crops = x.shape[1] if x.dim() == 5 else 1
        if crops > 1:
            x = x.flatten(0, 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp or nullcontext():
            logits = net(x).float()
        if crops > 1:
            logits = logits.view(-1, crops, logits.shape[-1]).softmax(-1).mean(1).log()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(k, dim=1).indices
        wrong1 += (top[:, 0] != y).sum()
        wrong5 += (~(top == y[:, None]).any(1)).sum()
        seen += y.numel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    n = max(seen, 1)
    return {"loss": loss_sum.item() / n, "error": wrong1.item() / n, "top5_error": wrong5.item() / n,
            "images_per_s": seen / elapsed if elapsed > 0 else 0.0}


def metrics_row(progress: Progress, steps_per_epoch: int, schedule: Schedule, model: nn.Module, source: DataSource,
                batch_size: int, device: torch.device, amp: Any, channels_last: bool) -> MetricsRow:
    """The metrics row of an evaluation: the epoch's training sums (`progress`), test (and val) loss and errors."""
    test = evaluate(model, source, "test", batch_size, device, amp, channels_last)
    val = evaluate(model, source, "val", batch_size, device, amp, channels_last) if source.has_val else None
    seen = max(progress.seen, 1)
    train_loss = progress.loss_sum / seen
    return MetricsRow(
        epoch=progress.epoch_label(steps_per_epoch), step=progress.step,
        lr=schedule.lr(progress.step - 1, progress.warmup_end),
        train_loss=train_loss if math.isfinite(train_loss) else None, train_error=progress.wrong / seen,
        test_loss=test["loss"], test_error=test["error"], test_top5_error=test["top5_error"],
        val_loss=val and val["loss"], val_error=val and val["error"], val_top5_error=val and val["top5_error"],
        images_per_s=progress.seen / progress.train_time if progress.train_time > 0 else 0.0,
        eval_images_per_s=test["images_per_s"], epoch_time_s=progress.train_time, wall_time_s=progress.elapsed)


def evaluation_source(spec: ResNetSpec, config: dict[str, Any] | None, norm: Any, data: str | None,
                      where: Path, classes: Any = None) -> DataSource:
    """The data a trained net is evaluated on: `data` or the run's own, loaded with the run's options, checked
    against the net (and its `classes`, where its checkpoint keeps them), normalised with the run's statistics."""
    cfg = config_from_dict(config, where=f"{where} (its config)") if config is not None else None
    data = data or (cfg.data.source if cfg is not None else None)
    if data is None:
        raise ResnetlabError(f"{where}: names no data set; give --data")
    source = load_data(data, cfg.data.options() if cfg is not None else DataOptions(normalize="none"))
    if (spec.in_channels, spec.num_classes) != (source.channels, source.num_classes):
        raise CheckpointError(
            f"{where}: {spec.name or 'the model'} takes {spec.in_channels} channel(s) and {spec.num_classes} "
            f"classes; data {source.name!r} has {source.channels} and {source.num_classes}")
    if isinstance(classes, list) and list(source.classes) != [str(c) for c in classes]:
        ours, theirs = ", ".join(map(str, classes[:4])), ", ".join(map(str, list(source.classes)[:4]))
        raise CheckpointError(f"{where}: trained on classes {ours}, ...; data {source.name!r} has {theirs}, ...: "
                              "its errors would not mean anything")
    source.load_norm_state(norm)
    return source

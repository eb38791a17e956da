"""A training's parts, built from its config before the loop starts: the net and its wrappings (channels-last,
SyncBN, DDP, torch.compile), the batch arithmetic, the optimizer and the schedule. `trainer.create_trainer` builds them
and the `Trainer` is given the results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnetlab.data import DataSource, cache_dir
from resnetlab.errors import ConfigError
from resnetlab.networks.counting import count_macs
from resnetlab.networks.net import ResNet
from resnetlab.networks.spec import ResNetSpec
from resnetlab.settings.config import Config
from resnetlab.training.distributed import World
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
from resnetlab.training.schedule import Schedule, build_schedule
from resnetlab.training.setup import autocast, check_trainable, data_options, use_channels_last


@dataclass
class Parts:
    """What the loop runs: `model` is the net whose state is saved; `train_model` is what a step calls (the
    same parameters, wrapped for DDP and compiled), `eager_model` the same uncompiled."""

    model: ResNet
    train_model: nn.Module
    eager_model: nn.Module
    channels_last: bool
    batch: int  # the global batch of one step
    spe: int  # steps per epoch
    optimizer: torch.optim.SGD
    schedule: Schedule
    compile: CompileChoice
    amp: Any  # the autocast context of the forward


def build_parts(cfg: Config, source: DataSource, spec: ResNetSpec, device: torch.device, world: World) -> Parts:
    """The parts, in the order that fixes the random state: the seed, then the net's init."""
    torch.manual_seed(cfg.run.seed)
    model, channels_last = build_model(cfg, spec, device, world)
    wrapped = wrap_model(model, cfg, device, world)
    batch = global_batch(cfg, source, spec, world)
    o = cfg.optim
    optimizer = make_sgd(model.parameters(), device, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                         nesterov=o.nesterov and o.momentum > 0)
    spe = source.steps_per_epoch(batch)
    schedule = build_schedule(cfg, spe, spec.depth, world.size)
    choice = decide_compile(cfg, source, spec, model, device, schedule.total * batch // world.size)
    return Parts(model, compile_module(wrapped, choice.mode, device), wrapped, channels_last, batch, spe,
                 optimizer, schedule, choice, autocast(cfg, device))


def build_model(cfg: Config, spec: ResNetSpec, device: torch.device, world: World) -> tuple[ResNet, bool]:
    """The net on its device, in channels-last where that is faster, with SyncBN across CUDA processes."""
    model = ResNet(spec).to(device)
    channels_last = use_channels_last(cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.run.sync_bn and world.active and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, channels_last


def wrap_model(model: nn.Module, cfg: Config, device: torch.device, world: World) -> nn.Module:
    """DDP around the net when several processes train it (the same parameters)."""
    if not world.active:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def global_batch(cfg: Config, source: DataSource, spec: ResNetSpec, world: World) -> int:
    """The recipe's batch split over ranks, or with linear scaling the recipe's per rank; checked to split
    into ranks x micro-batches, and a micro-batch checked to train the net (BN needs two values)."""
    o = cfg.optim
    batch = o.batch_size * (world.size if o.linear_scaling else 1)
    if batch % (world.size * o.accumulate):
        raise ConfigError(f"optim.batch_size: global batch {batch} does not split into {world.size} "
                          f"rank(s) x {o.accumulate} micro-batch(es)")
    micro = min(batch, source.train_size) // (world.size * o.accumulate)
    check_trainable(spec, max(micro, 1), source.image_size)
    return batch


def decide_compile(cfg: Config, source: DataSource, spec: ResNetSpec, model: ResNet, device: torch.device,
                   images: int) -> CompileChoice:
    """`run.compile` resolved ("auto": by the cost model of fast.choose_compile, on `images`, this process's
    share of the run); the compile cache on when compiling."""
    setting, macs = cfg.run.compile, 0
    if setting == "auto" and device.type == "cpu" and COMPILE_GAIN.get(spec.block, 1.0) >= MIN_GAIN:
        macs = count_macs(model, source.image_size, source.channels)
    else:
        images = 0
    choice = choose_compile(setting, device, spec.block, spec.depth, images, macs, has_cxx_compiler())
    if choice.mode != "off":
        use_compile_cache(cache_dir(data_options(cfg)))
    return choice

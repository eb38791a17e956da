"""From a config to a ready trainer, in one function: `build_trainer`, which `train`, `resume`, the benchmarks
and the tests all call. It builds the parts in the order that fixes the random state: the seed, then the net."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnetlab.data import DataSource, cache_dir, load_data
from resnetlab.errors import ConfigError, one_line
from resnetlab.networks.net import ResNet
from resnetlab.networks.spec import ResNetSpec
from resnetlab.runs.directory import RunDir
from resnetlab.settings.config import Config
from resnetlab.settings.device import resolve_device
from resnetlab.training.distributed import World, broadcast
from resnetlab.training.fast import channels_last_default, choose_compile, compile_module, make_sgd
from resnetlab.training.progress import EpochSums, build_schedule
from resnetlab.training.reporting import Log, Reporter
from resnetlab.training.trainer import Trainer


def build_trainer(cfg: Config, run: RunDir | str | Path | None = None, *, world: World | None = None,
                  device: str | None = None, log: Log = print) -> Trainer:
    """The trainer of `cfg` in `run`: a `RunDir`, or a path that must not hold a run yet (None:
    `runs/MODEL-DATA-TIME`), which `entry.train` creates. `device` replaces `run.device` for this session."""
    world = world or World()
    torch_device = resolve_device(device or cfg.run.device)
    if world.active and torch_device.type == "cuda":  # each process of a multi-GPU run on its own GPU
        torch_device = torch.device("cuda", world.local_rank)
    configure_runtime(cfg, torch_device)
    source = load_data(cfg.data.source, cfg.data.options())
    if cfg.data.pad > source.image_size:  # a crop could miss the image; the padded batch grows with pad squared
        raise ConfigError(f"data.pad: {cfg.data.pad} is more than the images' side ({source.image_size} pixels "
                          f"of {source.name}); the papers pad 4 on 32")
    spec = cfg.model.spec(source.channels, source.num_classes, source.name)
    if not isinstance(run, RunDir):
        name = f"{spec.name}-{source.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = RunDir(run if run is not None else broadcast(Path("runs") / name, world))
        run.check_new()
    torch.manual_seed(cfg.run.seed)
    model = ResNet(spec).to(torch_device)
    channels_last = cfg.run.channels_last  # auto: on where it was measured faster
    channels_last = channels_last_default(torch_device) if channels_last == "auto" else bool(channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.run.sync_bn and world.active and torch_device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    eager_model = model if not world.active else DistributedDataParallel(
        model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None)
    batch = global_batch(cfg, source, spec, world)
    optim = cfg.optim
    optimizer = make_sgd(model.parameters(), torch_device, lr=optim.lr, momentum=optim.momentum,
                         weight_decay=optim.weight_decay, nesterov=optim.nesterov and optim.momentum > 0)
    steps_per_epoch = source.steps_per_epoch(batch)
    schedule = build_schedule(cfg, steps_per_epoch, spec.depth, world.size)
    compile_choice = choose_compile(cfg.run.compile, torch_device)
    train_model = compile_module(eager_model, compile_choice.mode, torch_device, cache_dir(cfg.data.options()))
    reporter = Reporter(run, log if world.main else lambda _line: None, tensorboard=cfg.run.tensorboard,
                        progress=cfg.run.progress, total_steps=schedule.total, steps_per_epoch=steps_per_epoch,
                        batch=batch, trackers=cfg.run.tracker if world.main else None)
    amp = torch.autocast(torch_device.type, dtype=torch.bfloat16) if cfg.run.amp == "bf16" else nullcontext()
    return Trainer(cfg=cfg, run=run, world=world, device=torch_device, source=source, spec=spec, model=model,
                   train_model=train_model, eager_model=eager_model, channels_last=channels_last, batch=batch,
                   steps_per_epoch=steps_per_epoch, optimizer=optimizer, schedule=schedule, compile=compile_choice,
                   amp=amp, reporter=reporter, sums=EpochSums(torch_device))


def configure_runtime(cfg: Config, device: torch.device) -> None:
    """Threads and the deterministic/autotuned kernel choice, process-wide, before anything is built."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def global_batch(cfg: Config, source: DataSource, spec: ResNetSpec, world: World) -> int:
    """The recipe's batch split over ranks, or with linear scaling the recipe's per rank; checked to split
    into ranks x micro-batches, and a micro-batch checked to train the net (BN needs two values)."""
    optim = cfg.optim
    batch = optim.batch_size * (world.size if optim.linear_scaling else 1)
    if batch % (world.size * optim.accumulate):
        raise ConfigError(f"optim.batch_size: global batch {batch} does not split into {world.size} "
                          f"rank(s) x {optim.accumulate} micro-batch(es)")
    micro = min(batch, source.train_size) // (world.size * optim.accumulate)
    check_trainable(spec, max(micro, 1), source.image_size)
    return batch


def check_trainable(spec: ResNetSpec, batch: int, size: int) -> None:
    """A training step of `batch` images of side `size` runs through the net (BN in training needs more than one
    value per channel, which one image fails where maps are 1x1): on the meta device, no memory, no compute."""
    try:
        with torch.device("meta"):
            ResNet(spec).train()(torch.empty(batch, spec.in_channels, size, size))
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"optim.batch_size: a step of {batch} image(s) of {size}x{size} cannot train "
                          f"{spec.name or 'this net'} ({one_line(exc, 160)}); use a larger batch") from None

"""Where a run executes and what it is built from: device, threads, data options, the model's spec.

Every entry point that turns a config into a model on a device (`train`, `resume`, `resnetlab eval`,
`resnetlab analyze`, the benchmarks and the tests) goes through this module, so a device name, a data
set or a model override is resolved the same way everywhere and fails with the same one-line error.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resnetlab.data import DataOptions, DataSource, load_data
from resnetlab.errors import CheckpointError, ConfigError, ResnetlabError, one_line
from resnetlab.networks.net import ResNet
from resnetlab.networks.spec import ResNetSpec
from resnetlab.settings.config import Config, config_from_dict
from resnetlab.training.distributed import World
from resnetlab.training.evaluation import check_fits
from resnetlab.training.fast import channels_last_default


# ---- devices and threads --------------------------------------------------------------------------------
def resolve_device(name: str | torch.device) -> torch.device:
    """`run.device` (auto, cpu, cuda, cuda:N) as a torch.device that exists here; one-line ConfigError."""
    if isinstance(name, torch.device):
        name = str(name)
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


def rank_device(device: torch.device, world: World) -> torch.device:
    """Each process of a multi-GPU run trains on its own GPU (its local rank)."""
    if world.active and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


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


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    value = cfg.run.channels_last
    return channels_last_default(device) if value == "auto" else bool(value)


def autocast(cfg: Config, device: torch.device) -> Any:
    if cfg.run.amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


# ---- data and model ---------------------------------------------------------------------------------------
def data_options(cfg: Config) -> DataOptions:
    """The config's data section as the data loaders' options (validated when the config was built)."""
    return cfg.data.options()  # type: ignore[no-any-return]


def model_spec(cfg: Config, source: DataSource) -> ResNetSpec:
    """The registry spec with the config's overrides, fitted to the data's channels and classes."""
    return cfg.model.spec(source.channels, source.num_classes, source.name)


@dataclass
class Setup:
    """What a config resolves to on this process: the device, the loaded data and the model's spec."""

    cfg: Config
    world: World
    device: torch.device
    source: DataSource
    spec: ResNetSpec


def prepare(cfg: Config, world: World | None = None, device: str | None = None) -> Setup:
    """Resolve the device (`device` replaces `run.device` without touching the config), set threads and
    kernels, load the data and fit the model's spec to it: everything a run checks before it writes."""

    world = world or World()
    dev = rank_device(resolve_device(device or cfg.run.device), world)
    configure_runtime(cfg, dev)
    source = load_data(cfg.data.source, data_options(cfg))
    if cfg.data.pad > source.image_size:  # a crop could miss the image; the padded batch grows with pad squared
        raise ConfigError(f"data.pad: {cfg.data.pad} is more than the images' side ({source.image_size} pixels "
                          f"of {source.name}); the papers pad 4 on 32")
    return Setup(cfg, world, dev, source, model_spec(cfg, source))


def check_trainable(spec: ResNetSpec, batch: int, size: int) -> None:
    """A training step of `batch` images of side `size` runs through the net: batch norm in training mode needs
    more than one value per channel, which a batch of one image fails where a stage's maps are 1x1. Checked on
    the meta device (no memory, no compute) before a run starts."""

    try:
        with torch.device("meta"):
            ResNet(spec).train()(torch.empty(batch, spec.in_channels, size, size))
    except (ValueError, RuntimeError) as exc:
        first = one_line(exc, 160)
        raise ConfigError(f"optim.batch_size: a step of {batch} image(s) of {size}x{size} cannot train "
                          f"{spec.name or 'this net'} ({first}); use a larger batch") from None


def evaluation_source(spec: ResNetSpec, config: dict[str, Any] | None, norm: Any, data: str | None,
                      where: Path, classes: Any = None) -> DataSource:
    """The data a trained net is evaluated on: `data` or the run's own, loaded with the run's options (plain
    options without a config), checked against the net, normalised with the run's statistics. Where the
    net's class names are known (`classes`, kept in its checkpoint), other data must have the same ones."""

    cfg = config_from_dict(config, where=f"{where} (its config)") if config is not None else None
    data = data or (cfg.data.source if cfg is not None else None)
    if data is None:
        raise ResnetlabError(f"{where}: names no data set; give --data")
    source = load_data(data, data_options(cfg) if cfg is not None else DataOptions(normalize="none"))
    check_fits(spec, source, where)
    if data is not None and isinstance(classes, list) and list(source.classes) != [str(c) for c in classes]:
        ours, theirs = ", ".join(map(str, classes[:4])), ", ".join(map(str, list(source.classes)[:4]))
        raise CheckpointError(f"{where}: trained on classes {ours}, ...; data {source.name!r} has {theirs}, ...: "
                              "its errors would not mean anything")
    source.load_norm_state(norm)
    return source

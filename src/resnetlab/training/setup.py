"""Where a run executes and what it reads: the device, threads and kernels, the data options, the data a trained
net is evaluated on.

Every entry point that turns a config or a trained net into work on a device (`build.build_trainer` for
`train`, `resume`, the benchmarks and the tests; `resnetlab eval` and `analyze`) resolves a device name or a
data set here, so each is resolved the same way everywhere and fails with the same one-line error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from resnetlab.data import DataOptions, DataSource, load_data
from resnetlab.errors import CheckpointError, ConfigError, ResnetlabError
from resnetlab.networks.spec import ResNetSpec
from resnetlab.settings.config import Config, config_from_dict
from resnetlab.training.evaluation import check_fits


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


# ---- data and model ---------------------------------------------------------------------------------------
def data_options(cfg: Config) -> DataOptions:
    """The config's data section as the data loaders' options (validated when the config was built)."""
    return cfg.data.options()  # type: ignore[no-any-return]


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

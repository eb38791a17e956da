"""`run.device` as a torch.device that exists here (`resolve_device`), for every command that takes a device."""

from __future__ import annotations

import torch

from resnetlab.errors import ConfigError


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

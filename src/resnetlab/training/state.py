"""What a checkpoint holds of a training, and how a training takes it back: model, optimizer, progress, random
state, and what a trained net needs to be used elsewhere (config, spec, normalisation, classes)."""

from __future__ import annotations

from typing import Any

import torch

from resnetlab.data import DataSource
from resnetlab.errors import CheckpointError, one_line
from resnetlab.networks.net import ResNet
from resnetlab.networks.spec import ResNetSpec
from resnetlab.settings.config import Config
from resnetlab.training.progress import Progress
from resnetlab.training.schedule import Schedule
from resnetlab.version import __version__
from resnetlab.weights.checkpoint import load_state


def run_state(spec: ResNetSpec, model: ResNet, optimizer: torch.optim.Optimizer, progress: Progress,
              source: DataSource, cfg: Config, schedule: Schedule, device: torch.device) -> dict[str, Any]:
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {"spec": spec.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "progress": progress.to_dict(), "norm": source.norm_state(), "rng": rng, "config": cfg.to_dict(),
            "schedule": schedule.to_dict(), "version": __version__,
            "data": {"classes": list(source.classes), "image_size": source.image_size,
                     "channels": source.channels}}  # what a trained net needs to be used elsewhere


def restore_state(payload: dict[str, Any], spec: ResNetSpec, model: ResNet, optimizer: torch.optim.Optimizer,
                  device: torch.device) -> Progress:
    """The checkpoint's weights, optimizer and random state restored; its progress. A checkpoint of another
    net, or of another shape, is a one-line CheckpointError."""
    try:
        saved = ResNetSpec.from_dict(payload["spec"])
        if saved != spec:
            raise CheckpointError(f"checkpoint is a {saved.name or 'different'} net, not this run's model")
        load_state(model, payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        progress = Progress(**payload["progress"])
        torch.set_rng_state(payload["rng"]["cpu"])
        if "cuda" in payload["rng"] and device.type == "cuda":
            torch.cuda.set_rng_state(payload["rng"]["cuda"], device)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not fit this run ({one_line(exc, 200)})") from None
    return progress

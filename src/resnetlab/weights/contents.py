"""The contents of one weights file, whatever its format: tensors under the file's own names, the input
normalisation they were trained with, and what the file says of its net and its run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from resnetlab.networks.spec import ResNetSpec

RESNETLAB = "resnetlab"


@dataclass(frozen=True)
class Weights:
    """The contents of one weights file."""

    path: Path
    sha256: str
    format: str  # RESNETLAB, CIFAR_PEER or TORCHVISION
    state: dict[str, Tensor]  # under the file's own key names
    norm: dict[str, Tensor]  # the input normalisation the weights were trained with
    spec: ResNetSpec | None  # the net the file holds, where it says (not torchvision's files)
    config: dict[str, Any] | None = None  # our checkpoint's run config
    claimed_error: float | None = None  # the file's own top-1 test error, where it records one
    data: dict[str, Any] | None = None  # our checkpoint's class names, image size and channels, where it has them
    payload: dict[str, Any] | None = None  # the whole checkpoint (optimizer, progress, ...), for resuming
    skipped: tuple[str, ...] = ()  # newer checkpoints of a run directory that did not verify, and why

    def record(self) -> dict[str, Any]:
        """Where a run's weights came from, for its config.json."""
        return {"path": str(self.path), "sha256": self.sha256, "format": self.format,
                "normalization": describe_norm(self.norm)}


def describe_norm(norm: dict[str, Tensor]) -> str:
    mean, std = norm["mean"], norm["std"]
    if mean.dim() == 3 and mean.shape[1:] == (1, 1) and std.shape[1:] == (1, 1):
        return (f"channel mean ({', '.join(f'{v:.4g}' for v in mean.flatten().tolist())}), "
                f"std ({', '.join(f'{v:.4g}' for v in std.flatten().tolist())})")
    return f"per-pixel mean image {tuple(mean.shape)}" + ("" if bool((std == 1).all()) else ", per-pixel std")

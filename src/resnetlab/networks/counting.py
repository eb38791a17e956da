"""Parameter and multiply-add counts measured on the real model with forward hooks (v1 table 1, 6). Multiply-adds
count convolutions and fully-connected layers, the work the papers count (not BN, ReLU, pooling or additions)."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module, weights_only: bool = False) -> int:
    """Number of parameters; `weights_only` counts conv and FC layers only, leaving out BN's scale and shift.

    The papers differ here: v1 table 6 counts every parameter (ResNet-1202: 19.4M, 19.3M without BN), v2
    counts weight layers (pre-act ResNet-1001: 10.2M; 10.3M with BN)."""
    if not weights_only:
        return sum(p.numel() for p in model.parameters())
    layers = (nn.Conv2d, nn.Linear)
    return sum(p.numel() for m in model.modules() if isinstance(m, layers) for p in m.parameters(recurse=False))


def count_macs(model: nn.Module, input_size: int | tuple[int, int], in_channels: int | None = None) -> int:
    """Multiply-adds of one forward pass of one image at `input_size`, measured with hooks."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    if in_channels is None:
        spec = getattr(model, "spec", None)
        in_channels = spec.in_channels if spec is not None else 3
    total = 0

    def count(m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += out[0].numel() * (m.in_channels // m.groups) * kh * kw
        else:
            total += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total

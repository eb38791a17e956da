"""Fast paths that keep the mathematics: memory format, folded batch norm for inference, the optimizer step.

Each one is kept because `python -m benchmarks.run` measured it faster (docs/benchmarks.md), and
tests/test_fast.py checks that it computes what the plain path computes, to float32 rounding:

- channels-last memory format, on CPU and CUDA: 1.24-1.47x training steps on the 2-core CPU;
- batch norm folded into the convolution before it, for evaluation only (in training BN normalises with the
  batch's statistics, so it cannot be folded): conv-BN in the original units, stems and projections, and the
  BN after each conv inside a pre-activation branch;
- the fused SGD step on CUDA (one kernel for all parameters instead of one per tensor);
- `torch.compile` of the training forward, when asked (`run.compile`): generated kernels that fuse BN, ReLU
  and the addition; its compilation took 24-46 s on CPU, so it is off by default.
"""

from __future__ import annotations

import copy
import shutil
from typing import Any

import torch
from torch import nn

from .errors import ConfigError


def channels_last_default(device: torch.device) -> bool:
    """`run.channels_last = "auto"`: on for CPU and CUDA, where it was measured faster for every model."""
    return device.type in ("cpu", "cuda")


def make_sgd(params: Any, device: torch.device, **kwargs: Any) -> torch.optim.SGD:
    """SGD with the papers' settings; the fused single-kernel step on CUDA (the loop on CPU is <0.5% of a step)."""
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.SGD(params, **kwargs)


def compile_module(module: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """`module` compiled with torch.compile in `mode` (default, reduce-overhead, max-autotune); "off": as is.

    Random operations (dropout shortcuts) fall back to PyTorch's own generator, so a compiled step draws
    the same masks as the eager one and resumes reproduce them."""
    if mode == "off":
        return module
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ConfigError("run.compile: torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH")
    import torch._inductor.config as inductor

    inductor.fallback_random = True
    return torch.compile(module, mode=None if mode == "default" else mode)


@torch.no_grad()
def fold_bn(model: nn.Module) -> nn.Module:
    """An evaluation copy of `model` with each BN that directly follows a conv folded into that conv.

    For y = BN(W * x) with running statistics (mu, var), scale s = gamma / sqrt(var + eps):
    y = (s W) * x + (beta - s mu). The copy is in eval mode and has the original's memory format; the
    original is untouched. BNs that follow an addition or a ReLU (pre-activations, v2's final BN) stay.
    """
    folded = copy.deepcopy(model).eval()
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[first], seq._modules[second]
            if not (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                    and conv.groups == 1 and conv.padding_mode == "zeros"):
                continue
            assert bn.running_mean is not None and bn.running_var is not None
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.affine:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
            fmt = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) \
                and not conv.weight.is_contiguous() else torch.contiguous_format
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(shift)
            fused.weight.data = fused.weight.data.contiguous(memory_format=fmt)
            seq._modules[first] = fused
            seq._modules[second] = nn.Identity()
    return folded

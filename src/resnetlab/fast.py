"""Fast paths that keep the mathematics: memory format, folded batch norm for inference, the optimizer step.

Each one is kept because `python -m benchmarks.run` measured it faster (docs/benchmarks.md), and
tests/test_fast.py checks that it computes what the plain path computes, to float32 rounding:

- channels-last memory format, on CPU and CUDA: 1.24-1.47x training steps on the 2-core CPU;
- batch norm folded into the convolution before it, for evaluation only (in training BN normalises with the
  batch's statistics, so it cannot be folded): conv-BN in the original units, stems and projections, and the
  BN after each conv inside a pre-activation branch;
- the fused SGD step on CUDA (one kernel for all parameters instead of one per tensor);
- `torch.compile` of the training forward (`run.compile`): generated kernels that fuse BN, ReLU and the
  addition. Its compilation took 24-46 s on CPU, so `auto` (the default) compiles on CPU only when the run
  is long enough for the measured gain to repay it (`choose_compile`), with PyTorch's on-disk cache under the
  resnetlab cache directory so that a second run compiles from the cache; on CUDA `auto` stays eager.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
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


# The cost model of `run.compile = "auto"`, from the CPU measurements in docs/benchmarks.md ("torch.compile",
# 2026-11-22, 2 threads). Each figure is the one that argues against compiling, so auto compiles only where
# the measured gain surely repays the compilation.
COMPILE_GAIN = 1.10  # compiled over eager training step: 1.10-1.19x on resnet20/56/110 (basic blocks)
COMPILE_S = 24.5  # cold compilation, resnet20 and resnet56 (24.5 s, 24.4 s) ...
COMPILE_S_110 = 45.5  # ... and resnet110; deeper nets extrapolated linearly in depth from it
# eager training speed as forward multiply-adds per second: resnet20 647 img/s x 40.6M = 26.3G, resnet56
# 257 x 125.5M = 32.3G, resnet110 128.5 x 252.9M = 32.5G (eager ours/plain x plain img/s); the fastest,
# so the estimate of the eager run's time is the shortest
EAGER_MACS_PER_S = 32.5e9


@dataclass(frozen=True)
class CompileChoice:
    """The torch.compile mode a run uses ("off" = eager) and why, for the log."""

    mode: str
    reason: str


def choose_compile(setting: str, device: torch.device, block: str, depth: int, images: int,
                   macs_per_image: int, have_compiler: bool = True) -> CompileChoice:
    """`run.compile`: a named mode as given; "auto": compile on CPU only where it pays.

    With eager time T = images x multiply-adds / EAGER_MACS_PER_S, compiling saves T (1 - 1/COMPILE_GAIN);
    it is chosen when that exceeds the compile time (24.5 s, or 45.5 s x depth / 110 for deeper nets).
    Only basic-block nets were measured faster (the bottleneck preact_resnet164 ran at 0.90x); on CUDA auto
    is off (no measurement there yet)."""
    if setting != "auto":
        return CompileChoice(setting, f"run.compile={setting}")
    if device.type != "cpu":
        return CompileChoice("off", f"run.compile=auto: eager on {device.type} (auto compiles on CPU only)")
    if block != "basic":
        return CompileChoice("off", f"run.compile=auto: eager, compiling slowed the measured {block} net (0.90x)")
    if not have_compiler:
        return CompileChoice("off", "run.compile=auto: eager, no C++ compiler on PATH")
    eager = images * macs_per_image / EAGER_MACS_PER_S
    saved = eager * (1 - 1 / COMPILE_GAIN)
    cost = max(COMPILE_S, COMPILE_S_110 * depth / 110)
    verdict = "compiled" if saved > cost else "eager"
    return CompileChoice("default" if saved > cost else "off",
                         f"run.compile=auto: {verdict}; eager run expected {eager:.0f} s, compiling at "
                         f"{COMPILE_GAIN}x would save {saved:.0f} s against about {cost:.0f} s to compile")


def has_cxx_compiler() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def use_compile_cache(cache_root: Path) -> Path:
    """PyTorch's on-disk compile caches (FX graphs, AOT autograd) under `cache_root`/inductor, unless
    TORCHINDUCTOR_CACHE_DIR is already set: a second run of the same net loads the compiled code."""
    path = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root / "inductor")))
    import torch._functorch.config as functorch
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    if hasattr(functorch, "enable_autograd_cache"):
        functorch.enable_autograd_cache = True
    return path


def compile_module(module: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """`module` compiled with torch.compile in `mode` (default, reduce-overhead, max-autotune); "off": as is.

    Random operations (dropout shortcuts) fall back to PyTorch's own generator, so a compiled step draws
    the same masks as the eager one and resumes reproduce them."""
    if mode == "off":
        return module
    if device.type == "cpu" and not has_cxx_compiler():
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

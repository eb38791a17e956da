"""Fast paths that keep the mathematics: memory format, folded batch norm for inference, the optimizer step.

Each one is kept because `python -m benchmarks.run` measured it faster (docs/benchmarks.md), and
tests/test_fast.py checks that it computes what the plain path computes, to float32 rounding:

- channels-last memory format, on CPU and CUDA: 1.24-1.47x training steps on the 2-core CPU;
- batch norm folded into the convolution before it, for evaluation only (in training BN normalises with the
  batch's statistics, so it cannot be folded): conv-BN in the original units, stems and projections, and the
  BN after each conv inside a pre-activation branch;
- the fused SGD step on CUDA (one kernel for all parameters instead of one per tensor);
- `torch.compile` of the training forward (`run.compile`): generated kernels that fuse BN, ReLU and the
  addition. On CPU it measured 1.10-1.19x over eager on one 2-core machine and 0.92-1.01x on another, after
  25-56 s of compilation, so `auto` (the default) compiles on CPU only where the lowest measured gain is
  clear of the noise and the run is long enough to repay the compilation (`choose_compile`): today it stays
  eager and says why. A named mode compiles, with PyTorch's on-disk cache under the resnetlab cache
  directory so that a second run compiles from the cache; on CUDA `auto` stays eager.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import ConfigError


def channels_last_default(device: torch.device) -> bool:
    """`run.channels_last = "auto"`: on for CPU and CUDA, where it was measured faster for every model."""
    return device.type in ("cpu", "cuda")


def make_sgd(params: Any, device: torch.device, **kwargs: Any) -> torch.optim.SGD:
    """SGD with the papers' settings; the fused single-kernel step on CUDA (the loop on CPU is <0.5% of a step)."""
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.SGD(params, **kwargs)


# The cost model of `run.compile = "auto"`, from the CPU measurements in docs/benchmarks.md ("run.compile=auto").
# Each figure is the one that argues against compiling (the lowest gain and the longest compilation measured
# on either of this project's two CPUs), so auto compiles only where the gain surely repays the compilation.
# Compiled over eager training step, ours, batch 128 (benchmarks.run --compile: both in the same blocks):
#   Intel Xeon, 2 cores (2026-11-22): resnet20 1.19x, resnet56 1.12x, resnet110 1.10x, preact_resnet164 0.90x
#   AMD EPYC, 2 cores (2026-11-24):   resnet20 1.01x, resnet56 0.92x, resnet110 1.01x, preact_resnet164 1.00x
COMPILE_GAIN = {"basic": 0.92, "bottleneck": 0.90}
MIN_GAIN = 1.05  # a gain below this is inside the run-to-run noise of these machines: never worth a compile
COMPILE_S = 32.9  # cold compilation, resnet20 and resnet56 (Xeon 24.5 / 24.4 s, EPYC 32.9 / 29.9 s) ...
COMPILE_S_110 = 56.0  # ... and resnet110 (45.5 / 56.0 s); deeper nets extrapolated linearly in depth from it
# eager training speed as forward multiply-adds per second: resnet20 647 img/s x 40.6M = 26.3G, resnet56
# 257 x 125.5M = 32.3G, resnet110 128.5 x 252.9M = 32.5G (Xeon, eager ours); the fastest, so the estimate
# of the eager run's time is the shortest
EAGER_MACS_PER_S = 32.5e9


@dataclass(frozen=True)
class CompileChoice:
    """The torch.compile mode a run uses ("off" = eager) and why, for the log."""

    mode: str
    reason: str


def choose_compile(setting: str, device: torch.device, block: str, depth: int, images: int,
                   macs_per_image: int, have_compiler: bool = True, gain: float | None = None) -> CompileChoice:
    """`run.compile`: a named mode as given; "auto": compile on CPU only where it surely pays.

    `gain` is the compiled/eager step ratio (default: the lowest measured for the block, COMPILE_GAIN). Below
    MIN_GAIN auto stays eager whatever the length. Otherwise, with eager time T = images x multiply-adds /
    EAGER_MACS_PER_S, compiling saves T (1 - 1/gain), and is chosen when that exceeds the compile time
    (COMPILE_S, or COMPILE_S_110 x depth / 110 for deeper nets). On CUDA auto is off (not measured there)."""
    if setting != "auto":
        return CompileChoice(setting, f"run.compile={setting}")
    if device.type != "cpu":
        return CompileChoice("off", f"run.compile=auto: eager on {device.type} (auto compiles on CPU only)")
    gain = COMPILE_GAIN.get(block, 1.0) if gain is None else gain
    if gain < MIN_GAIN:
        return CompileChoice("off", f"run.compile=auto: eager; compiling {block}-block nets measured {gain:.2f}x "
                                    "at worst on this project's CPUs, no sure gain (set run.compile=default to try)")
    if not have_compiler:
        return CompileChoice("off", "run.compile=auto: eager, no C++ compiler on PATH")
    eager = images * macs_per_image / EAGER_MACS_PER_S
    saved = eager * (1 - 1 / gain)
    cost = max(COMPILE_S, COMPILE_S_110 * depth / 110)
    verdict = "compiled" if saved > cost else "eager"
    return CompileChoice("default" if saved > cost else "off",
                         f"run.compile=auto: {verdict}; eager run expected {eager:.0f} s, compiling at "
                         f"{gain:.2f}x would save {saved:.0f} s against about {cost:.0f} s to compile")


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

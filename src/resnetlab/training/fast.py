"""Fast paths that keep the mathematics, each kept because `python -m benchmarks.run` measured it faster
(docs/benchmarks.md) and checked by tests/test_fast.py to compute what the plain path computes, to float32
rounding: channels-last, the fused SGD step on CUDA, `torch.compile` of the training forward (`run.compile`)."""

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


# Why `run.compile = "auto"` is eager, per device (the measurements: docs/benchmarks.md). A measurement on the
# device at hand cannot decide it cheaply: timing a compiled step means compiling first, longer than the whole
# default job (13-20 s); and compiled steps agree with eager ones to float32 rounding only.
AUTO_EAGER = {
    "cpu": "compiled steps measured 0.90-1.19x eager on this project's two CPUs after 24-100 s of compiling, "
           "no sure gain (set run.compile=default to try)",
    "cuda": "CUDA graphs measured 3.5x eager on resnet110 (H100, bf16) after 84 s of compiling; "
            "set run.compile=reduce-overhead for long runs",
}


@dataclass(frozen=True)
class CompileChoice:
    """The torch.compile mode a run uses ("off" = eager) and why, for the log."""

    mode: str
    reason: str


def choose_compile(setting: str, device: torch.device) -> CompileChoice:
    """`run.compile`: a named mode as given; "auto" is eager, with the measurement behind that (`AUTO_EAGER`)."""
    if setting != "auto":
        return CompileChoice(setting, f"run.compile={setting}")
    return CompileChoice("off", f"run.compile=auto: eager on {device.type}; {AUTO_EAGER[device.type]}")


def has_cxx_compiler() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def compile_module(module: nn.Module, mode: str, device: torch.device, cache_root: Path) -> nn.Module:
    """`module` compiled in `mode` (default, reduce-overhead, max-autotune; "off": as is), with PyTorch's on-disk
    caches under `cache_root`/inductor (or TORCHINDUCTOR_CACHE_DIR) so that a second run loads the compiled code.
    Random operations (dropout shortcuts) use PyTorch's own generator: the same masks as eager, resumes too."""
    if mode == "off":
        return module
    if device.type == "cpu" and not has_cxx_compiler():
        raise ConfigError("run.compile: torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root / "inductor"))
    import torch._functorch.config as functorch
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    inductor.fallback_random = True
    if hasattr(functorch, "enable_autograd_cache"):
        functorch.enable_autograd_cache = True
    return torch.compile(module, mode=None if mode == "default" else mode)

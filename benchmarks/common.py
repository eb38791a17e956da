"""What the benchmarks share: the models and data they default to, timing with a device sync, a real Trainer
built without a run directory, the machine's description, and a measurement run in a fresh process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MODELS = ("resnet20", "resnet56", "resnet110", "preact_resnet164", "preact_resnet1001")
SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


class BenchError(Exception):
    """Bad benchmark input: reported in one line."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], calls: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return time.perf_counter() - start


def synthetic_batch(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    return x, y


def build_trainer(name: str, data: str, device: torch.device, amp: str, recompute: int, tmp: Path,
                  compile_mode: str = "off") -> Any:
    """A real Trainer for `name` on `data` (not started: no run directory is written)."""
    from resnetlab.runs.directory import RunDir
    from resnetlab.settings.config import build_config
    from resnetlab.training import build

    overrides = {"run.device": str(device), "run.amp": amp, "run.compile": compile_mode, "run.progress": False,
                 "run.tensorboard": False, "warmup.enabled": False, "model.recompute": recompute}
    cfg = build_config(recipe="cifar", model=name, data=data, overrides=overrides)
    return build.build_trainer(cfg, RunDir(tmp / "unused"), log=lambda *_: None)


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def child(args: list[str]) -> dict[str, Any]:
    """One measurement of `benchmarks.child` in a fresh process (its own allocator, caches and peak memory);
    its JSON row, or {"error": ...} with the last line it printed."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.child", *args], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])

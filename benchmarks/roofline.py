"""Which bound a training step sits under: its arithmetic and its memory traffic beside the machine's.

The model's training work is 6 x forward multiply-adds per image (forward 2 FLOP per MAC, backward twice the
forward); it is set beside the matrix-multiply rate measured in the same process (fp32 on CPU, bf16 on CUDA).
The step's memory traffic is counted operator by operator in one eager step of ours (each operator reading its
tensor arguments and writing its results once: the unfused traffic, caches aside) and set beside the copy
bandwidth measured in the same process; the step's FLOP per byte against the machine's (matmul rate /
bandwidth) says which bounds it.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.common import sync, synthetic_batch, timed
from resnetlab.training.trainer import eager


def matmul_rate(device: torch.device) -> dict[str, Any]:
    """The dense matrix-multiply rate measured here: fp32 on CPU, bf16 on CUDA (TFLOP/s, median of 5)."""
    n, dtype = (2048, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 3 if device.type == "cpu" else 20
    a @ b
    times = [timed(lambda: a @ b, reps, device) / reps for _ in range(5)]
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": 2 * n**3 / statistics.median(times) / 1e12}


def copy_bandwidth(device: torch.device) -> dict[str, Any]:
    """The memory bandwidth measured here: a 256 MiB tensor copied (read + write), GB/s, median of 5."""
    a = torch.empty(2**26, device=device)
    b = torch.empty_like(a).fill_(1.0)
    a.copy_(b)
    reps = 3 if device.type == "cpu" else 20
    times = [timed(lambda: a.copy_(b), reps, device) / reps for _ in range(5)]
    return {"mib": 256, "gbps": 2 * a.numel() * a.element_size() / statistics.median(times) / 1e9}


class OpTraffic(TorchDispatchMode):
    """Counts the bytes every operator reads and writes, each tensor argument and result once per operator
    (views move nothing and are skipped): the memory traffic of an unfused eager step, caches aside."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes, self.ops = 0, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.ops += 1
            for group in ((args, kwargs), out):  # reads, then writes (an in-place result counts again)
                tensors = {id(t): t for t in tree_flatten(group)[0] if isinstance(t, torch.Tensor)}
                self.bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        return out


def step_traffic(trainer: Any, batch: int) -> dict[str, int]:
    """Operator traffic of one eager training step of ours (the uncompiled model, with its memory format and
    autocast dtype: `trainer.eager`)."""
    x, y = synthetic_batch(batch, trainer.device)
    with eager(trainer), OpTraffic() as counter:
        trainer.train_step(x, y, 0)
        sync(trainer.device)
    return {"bytes": counter.bytes, "ops": counter.ops}


def roofline(macs: int, batch: int, images_per_s: float, rate: dict[str, Any], bandwidth: dict[str, Any],
             traffic: dict[str, int]) -> dict[str, Any]:
    """The step's TFLOP/s and GB/s of operator traffic as fractions of the machine's, and its bound."""
    row: dict[str, Any] = {"train_tflops": 6 * macs * images_per_s / 1e12, "matmul": rate}
    row["fraction_of_matmul_rate"] = row["train_tflops"] / rate["tflops"]
    row |= {"step_traffic": traffic, "bandwidth": bandwidth,
            "traffic_gbps": traffic["bytes"] * images_per_s / batch / 1e9}
    row["fraction_of_bandwidth"] = row["traffic_gbps"] / bandwidth["gbps"]
    intensity = 6 * macs * batch / traffic["bytes"]
    balance = rate["tflops"] * 1e12 / (bandwidth["gbps"] * 1e9)
    row["flop_per_byte"], row["machine_flop_per_byte"] = intensity, balance
    row["bound"] = "memory" if intensity < balance else "compute"
    return row

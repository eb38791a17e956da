"""The measurements of one model, each run in a fresh process by `benchmarks.child`.

- step: training images/s of one SGD step on a fixed synthetic batch. Ours is `Trainer.train_step`, the
  library's own step with its fast paths (channels-last; fused SGD on CUDA; bf16 autocast with --amp bf16;
  torch.compile with --compile MODE, compiled during the warm-up, and then our eager step is timed in the
  same blocks too, for compiled/eager from one run); the baseline is the same network written
  the plain way (benchmarks/plain.py: eager, NCHW, default settings with cuDNN autotuning off, zero_grad /
  forward / cross-entropy / backward / step).
- epoch: training images/s of `Trainer.train_step` fed by the real data path (the data source's
  `train_batches`: the decoded uint8 set held on the device, index gather, normalisation, batched
  pad-crop-flip): a whole epoch with --epoch-steps 0 (the default on CUDA), else that many steps of one.
- eval: evaluation images/s (ours: BN folded into the convs, channels-last, inference mode; baseline: eval(),
  no_grad). Synthetic batches for both.
- memory: the peak memory of one training step (CPU: growth of the peak resident set size over the size
  before the step; CUDA: `max_memory_allocated` over the memory before it).

Each timed block runs the same number of steps for every setting, chosen from a first timing so a block of
ours lasts about --block-s seconds (at least --min-steps). Medians and the min-max spread over the repeats
are reported, and every ratio is a ratio of medians from the same run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import build_trainer, sync, synthetic_batch, timed
from benchmarks.roofline import copy_bandwidth, matmul_rate, roofline, step_traffic
from resnetlab.training.trainer import eager


def plain_step_fn(name: str, batch: int, device: torch.device) -> Callable[[], None]:
    """The baseline's training step: the plain module, default settings, the usual loop."""
    from benchmarks.plain import plain_model

    model = plain_model(name).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = synthetic_batch(batch, device)

    def step() -> None:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def ours_step_fn(trainer: Any, batch: int) -> Callable[[], None]:
    x, y = synthetic_batch(batch, trainer.device)
    trainer.model.train()
    return lambda: trainer.train_step(x, y, 0)


def ours_eager_step_fn(trainer: Any, batch: int) -> Callable[[], None]:
    """Our step with the uncompiled module (same parameters, optimizer and fast paths): with --compile, the
    eager step is timed in the same blocks as the compiled one, so compiled/eager is a ratio from one run."""
    x, y = synthetic_batch(batch, trainer.device)

    def step() -> None:
        with eager(trainer):
            trainer.train_step(x, y, 0)

    return step


def epoch_fn(trainer: Any, batch: int, steps: int) -> tuple[Callable[[], None], int]:
    """`steps` steps (0: all) of an epoch through the source's real batches; returns (fn, images per call)."""
    spe = trainer.source.steps_per_epoch(batch)
    steps = spe if steps <= 0 else min(steps, spe)
    calls = [0]

    def run() -> None:
        calls[0] += 1
        batches = trainer.source.train_batches(calls[0], batch, seed=0, device=trainer.device)
        for i, (x, y) in enumerate(batches):
            if i == steps:
                break
            trainer.train_step(x, y, 0)

    return run, steps * batch


def eval_fns(trainer: Any, name: str, batch: int) -> tuple[Callable[[], None], Callable[[], None]]:
    from benchmarks.plain import plain_model
    from resnetlab.networks.folding import fold_bn

    device = trainer.device
    x, _ = synthetic_batch(batch, device)
    ours = fold_bn(trainer.model)
    xo = x.contiguous(memory_format=torch.channels_last) if trainer.channels_last else x
    plain = plain_model(name).to(device).eval()

    def run_ours() -> None:
        with torch.inference_mode(), trainer.amp:
            ours(xo)

    def run_plain() -> None:
        with torch.no_grad():
            plain(x)

    return run_ours, run_plain


def with_cudnn_benchmark(fn: Callable[[], None], flag: bool) -> Callable[[], None]:
    def call() -> None:
        torch.backends.cudnn.benchmark = flag
        fn()

    return call


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from resnetlab.networks.counting import count_macs

    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = build_trainer(name, args.data, device, args.amp, 0, Path(tmp), args.compile)
        load_s = time.perf_counter() - t0
        batch = args.batch
        macs = count_macs(trainer.model, 32)
        ours = ours_step_fn(trainer, batch)
        plain = plain_step_fn(name, batch, device)
        eval_ours, eval_plain = eval_fns(trainer, name, batch)
        # cuDNN autotuning is process-wide: ours as the trainer configured it, the baseline at PyTorch's default
        tuned = torch.backends.cudnn.benchmark
        compiled = args.compile != "off"
        eager = with_cudnn_benchmark(ours_eager_step_fn(trainer, batch), tuned) if compiled else None
        ours, eval_ours = (with_cudnn_benchmark(f, tuned) for f in (ours, eval_ours))
        plain, eval_plain = (with_cudnn_benchmark(f, False) for f in (plain, eval_plain))
        # warm-up (oneDNN primitives, cuDNN autotuning, the data set's copy to the device), then size the
        # blocks from one timed call of ours
        first_step_s = timed(ours, 1, device)  # includes the compilation with --compile
        for fn in (ours, plain, eval_ours, eval_plain, *([eager] if eager else [])):
            for _ in range(args.warmup):
                fn()
        next(iter(trainer.source.train_batches(0, batch, seed=0, device=device)))
        steps = max(args.min_steps, round(args.block_s / max(timed(ours, 1, device), 1e-6)))
        eval_calls = max(args.min_steps, round(args.block_s / max(timed(eval_ours, 1, device), 1e-6)))
        epoch, epoch_images = epoch_fn(trainer, batch, steps if args.epoch_steps < 0 else args.epoch_steps)
        epoch = with_cudnn_benchmark(epoch, tuned)
        times: dict[str, list[float]] = {k: [] for k in ("step", "step_plain", "epoch", "eval", "eval_plain",
                                                         *(["step_eager"] if eager else []))}
        for _ in range(args.repeats):
            times["step"].append(batch * steps / timed(ours, steps, device))
            times["step_plain"].append(batch * steps / timed(plain, steps, device))
            if eager:
                times["step_eager"].append(batch * steps / timed(eager, steps, device))
            times["epoch"].append(epoch_images / timed(epoch, 1, device))
            times["eval"].append(batch * eval_calls / timed(eval_ours, eval_calls, device))
            times["eval_plain"].append(batch * eval_calls / timed(eval_plain, eval_calls, device))
        rate, bandwidth = matmul_rate(device), copy_bandwidth(device)
        traffic = step_traffic(trainer, batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    row: dict[str, Any] = {
        "model": name, "batch": batch, "macs": macs, "steps_per_block": steps, "eval_calls_per_block": eval_calls,
        "epoch_images": epoch_images, "data_load_s": round(load_s, 2), "first_step_s": round(first_step_s, 2),
        "ips": {k: {"median": med[k], "min": min(v), "max": max(v), "all": v} for k, v in times.items()},
        "step_vs_plain": med["step"] / med["step_plain"], "epoch_vs_step": med["epoch"] / med["step"],
        "eval_vs_plain": med["eval"] / med["eval_plain"],
    }
    if eager:
        row |= {"compiled_vs_eager": med["step"] / med["step_eager"],
                "eager_vs_plain": med["step_eager"] / med["step_plain"]}
    row |= roofline(macs, batch, med["step"], rate, bandwidth, traffic)
    return row


def memory_probe(name: str, impl: str, batch: int, device_name: str, data: str, amp: str,
                 recompute: int, time_steps: int = 0) -> dict[str, Any]:
    """Peak memory of the first training step of one setting (run in a fresh process), then the median
    time of `time_steps` further steps."""
    device = torch.device(device_name)
    with tempfile.TemporaryDirectory() as tmp:
        if impl == "ours":
            trainer = build_trainer(name, data, device, amp, recompute, Path(tmp))
            step = ours_step_fn(trainer, batch)
        else:
            step = plain_step_fn(name, batch, device)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            _reset_peak_rss()
            before = _rss_now()
        start = time.perf_counter()
        step()
        sync(device)
        first_s = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss()
        step_times = [timed(step, 1, device) for _ in range(time_steps)]
    row = {"model": name, "impl": impl, "batch": batch, "recompute": recompute,
           "step_memory_mib": (peak - before) / 2**20, "first_step_s": first_s}
    if step_times:
        row["step_s"] = {"median": statistics.median(step_times), "min": min(step_times), "max": max(step_times)}
    return row


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> None:
    """Start the peak resident size afresh (Linux: writing 5 to clear_refs), so that a transient peak while
    the model and data were set up is not taken for the step's; where it cannot, the lifetime peak stands."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

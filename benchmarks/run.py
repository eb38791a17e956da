"""Training and evaluation speed and peak memory of resnetlab's models beside a plain eager baseline.

    python -m benchmarks.run                                   # five models, batch 128, CUDA if present
    python -m benchmarks.run --models resnet20 resnet56 --repeats 5 --out results/bench/cpu.json

Per model, in a fresh process, repeated `--repeats` times with the settings interleaved in each repeat so that
all of them see the same machine:

- step: training images/s of one SGD step on a fixed synthetic batch. Ours is `Trainer.train_step`, the
  library's own step with its fast paths (channels-last; fused SGD on CUDA; bf16 autocast with --amp bf16;
  torch.compile with --compile MODE, compiled during the warm-up);
  the baseline is the same network written the plain way (benchmarks/plain.py: eager, NCHW, default settings
  with cuDNN autotuning off, zero_grad / forward / cross-entropy / backward / step).
- epoch: training images/s of `Trainer.train_step` fed by the real data path (the data source's
  `train_batches`: the decoded uint8 set held on the device, index gather, normalisation, batched
  pad-crop-flip): a whole epoch with --epoch-steps 0 (the default on CUDA), else that many steps of one.
- eval: evaluation images/s (ours: BN folded into the convs, channels-last, inference mode; baseline: eval(),
  no_grad). Synthetic batches for both.
- memory: the peak memory of one training step, each setting in a fresh process (CPU: growth of the peak
  resident set size over the size before the step; CUDA: `max_memory_allocated` over the memory before it).

Each timed block runs the same number of steps for every setting, chosen from a first timing so a block of
ours lasts about --block-s seconds (at least --min-steps). Medians and the min-max spread over the repeats
are reported, and every ratio is a ratio of medians from the same run. The model's training work is
6 x forward multiply-adds per image (forward 2 FLOP per MAC, backward twice the forward); it is set beside
the matrix-multiply rate measured in the same process (fp32 on CPU, bf16 on CUDA). The step's memory traffic
is counted operator by operator in one eager step of ours (each operator reading its tensor arguments and
writing its results once: the unfused traffic, caches aside) and set beside the copy bandwidth measured in the
same process; the step's FLOP per byte against the machine's (matmul rate / bandwidth) says which bounds it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from resnetlab.errors import ResnetlabError
from resnetlab.rundir import write_text_atomic

MODELS = ("resnet20", "resnet56", "resnet110", "preact_resnet164", "preact_resnet1001")
SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


class BenchError(Exception):
    """Bad benchmark input: reported in one line."""


# ---- the settings being timed ---------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_trainer(name: str, data: str, device: torch.device, amp: str, recompute: int, tmp: Path,
                  compile_mode: str = "off") -> Any:
    """A real Trainer for `name` on `data` (not started: no run directory is written)."""
    from resnetlab.config import build_config
    from resnetlab.rundir import RunDir
    from resnetlab.runtime import prepare
    from resnetlab.train import Trainer

    overrides = {"run.device": str(device), "run.amp": amp, "run.compile": compile_mode, "run.progress": False,
                 "run.tensorboard": False, "warmup.enabled": False, "model.recompute": recompute}
    cfg = build_config(recipe="cifar", model=name, data=data, overrides=overrides)
    return Trainer.from_setup(prepare(cfg), RunDir(tmp / "unused"), log=lambda *_: None)


def plain_step_fn(name: str, batch: int, device: torch.device) -> Callable[[], None]:
    """The baseline's training step: the plain module, default settings, the usual loop."""
    from benchmarks.plain import plain_model

    model = plain_model(name).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = _synthetic_batch(batch, device)

    def step() -> None:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def ours_step_fn(trainer: Any, batch: int) -> Callable[[], None]:
    x, y = _synthetic_batch(batch, trainer.device)
    trainer.model.train()
    return lambda: trainer.train_step(x, y, 0)


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
    from resnetlab.fast import fold_bn

    device = trainer.device
    x, _ = _synthetic_batch(batch, device)
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


def _synthetic_batch(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    return x, y


def timed(fn: Callable[[], None], calls: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return time.perf_counter() - start


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
    autocast dtype)."""
    x, y = _synthetic_batch(batch, trainer.device)
    compiled, trainer.train_model = trainer.train_model, trainer.model
    try:
        with OpTraffic() as counter:
            trainer.train_step(x, y, 0)
            _sync(trainer.device)
    finally:
        trainer.train_model = compiled
    return {"bytes": counter.bytes, "ops": counter.ops}


# ---- one model, in its own process ---------------------------------------------------------------------
def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from resnetlab.counting import count_macs

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
        ours, eval_ours = (with_cudnn_benchmark(f, tuned) for f in (ours, eval_ours))
        plain, eval_plain = (with_cudnn_benchmark(f, False) for f in (plain, eval_plain))
        # warm-up (oneDNN primitives, cuDNN autotuning, the data set's copy to the device), then size the
        # blocks from one timed call of ours
        first_step_s = timed(ours, 1, device)  # includes the compilation with --compile
        for fn in (ours, plain, eval_ours, eval_plain):
            for _ in range(args.warmup):
                fn()
        next(iter(trainer.source.train_batches(0, batch, seed=0, device=device)))
        steps = max(args.min_steps, round(args.block_s / max(timed(ours, 1, device), 1e-6)))
        eval_calls = max(args.min_steps, round(args.block_s / max(timed(eval_ours, 1, device), 1e-6)))
        epoch, epoch_images = epoch_fn(trainer, batch, steps if args.epoch_steps < 0 else args.epoch_steps)
        epoch = with_cudnn_benchmark(epoch, tuned)
        times: dict[str, list[float]] = {k: [] for k in ("step", "step_plain", "epoch", "eval", "eval_plain")}
        for _ in range(args.repeats):
            times["step"].append(batch * steps / timed(ours, steps, device))
            times["step_plain"].append(batch * steps / timed(plain, steps, device))
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
        "train_tflops": 6 * macs * med["step"] / 1e12, "matmul": rate,
    }
    row["fraction_of_matmul_rate"] = row["train_tflops"] / rate["tflops"]
    # roofline: the step's arithmetic per byte of operator traffic against the machine's matmul rate per
    # byte of copy bandwidth says which of the two bounds the step; the fraction of that one is reported
    row |= {"step_traffic": traffic, "bandwidth": bandwidth,
            "traffic_gbps": traffic["bytes"] * med["step"] / batch / 1e9}
    row["fraction_of_bandwidth"] = row["traffic_gbps"] / bandwidth["gbps"]
    intensity = 6 * macs * batch / traffic["bytes"]
    balance = rate["tflops"] * 1e12 / (bandwidth["gbps"] * 1e9)
    row["flop_per_byte"], row["machine_flop_per_byte"] = intensity, balance
    row["bound"] = "memory" if intensity < balance else "compute"
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
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            _reset_peak_rss()
            before = _rss_now()
        start = time.perf_counter()
        step()
        _sync(device)
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


# ---- the driver ------------------------------------------------------------------------------------------
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
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def _fmt(d: dict[str, float]) -> str:
    return f"{d['median']:,.0f} ({d['min']:,.0f}-{d['max']:,.0f})"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Machine: {m.get('gpu') or m['cpu']} ({m['cores']} cores, {m['threads']} threads), torch "
             f"{m['torch']}, Python {m['python']}, {m['date']}; {result['args']['repeats']} repeats; "
             f"ours with amp {result['args']['amp']}, compile {result['args'].get('compile', 'off')}; "
             "images/s as median (min-max).", ""]
    if result["models"]:
        lines += ["| model | batch | step, ours | step, plain | ours/plain | epoch (data path) | epoch/step | "
                  "eval, ours | eval, plain | ours/plain | TFLOP/s (of matmul rate) | "
                  "GB/s of op traffic (of copy bandwidth) | bound |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | - | {r['error']} |||||||||||")
            continue
        ips = r["ips"]
        sign = "<" if r["bound"] == "memory" else ">="
        lines.append(f"| {r['model']} | {r['batch']} | {_fmt(ips['step'])} | {_fmt(ips['step_plain'])} | "
                     f"**{r['step_vs_plain']:.2f}x** | {_fmt(ips['epoch'])} | **{r['epoch_vs_step']:.0%}** | "
                     f"{_fmt(ips['eval'])} | {_fmt(ips['eval_plain'])} | {r['eval_vs_plain']:.2f}x | "
                     f"{r['train_tflops']:.2f} ({r['fraction_of_matmul_rate']:.0%} of "
                     f"{r['matmul']['tflops']:.2f} {r['matmul']['dtype']}) | "
                     f"{r['traffic_gbps']:.1f} ({r['fraction_of_bandwidth']:.0%} of {r['bandwidth']['gbps']:.1f}) | "
                     f"{r['bound']} ({r['flop_per_byte']:.0f} {sign} {r['machine_flop_per_byte']:.0f} FLOP/B) |")
    if result.get("memory"):
        lines += ["", "| model | batch | peak step memory, ours | plain | ours/plain |", "|---|---|---|---|---|"]
        for name, mem in result["memory"].items():
            o, p = mem.get("ours", {}), mem.get("plain", {})
            ratio = (f"{o['step_memory_mib'] / p['step_memory_mib']:.2f}"
                     if "step_memory_mib" in o and "step_memory_mib" in p else "-")
            lines.append(f"| {name} | {mem['batch']} | {_mib(o)} | {_mib(p)} | {ratio} |")
    return "\n".join(lines) + "\n"


def _mib(row: dict[str, Any]) -> str:
    return f"{row['step_memory_mib']:,.0f} MiB" if "step_memory_mib" in row else row.get("error", "-")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model-batch", nargs="*", default=[], metavar="MODEL=BATCH",
                        help="another batch for a model's speed runs (memory probes keep --memory-batch)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--data", default=None, help="training data for the epoch measurement "
                        "(default: folder:../shared/data/cifar10-jpeg.tar.gz when present, else synthetic:50000)")
    parser.add_argument("--amp", default="none", choices=("none", "bf16"))
    parser.add_argument("--compile", default="off", choices=("off", "default", "reduce-overhead", "max-autotune"),
                        help="torch.compile our training step (run.compile); compilation is in the warm-up")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each setting first")
    parser.add_argument("--block-s", type=float, default=None, help="seconds per timed block (CPU 6, CUDA 2)")
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--epoch-steps", type=int, default=None, help="steps of the epoch timed (0: all, -1: "
                        "as many as a step block; default: all on CUDA, -1 on CPU)")
    parser.add_argument("--speed", choices=("on", "off"), default="on", help="the speed measurements")
    parser.add_argument("--memory", choices=("on", "off"), default="on", help="the peak-memory probes")
    parser.add_argument("--memory-batch", type=int, default=None, help="batch of the memory probes")
    parser.add_argument("--out", default=None, help="write the results as JSON here and a table beside it (.md)")
    parser.add_argument("--model-child", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=4, metavar=("MODEL", "IMPL", "RECOMPUTE", "TIME_STEPS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from resnetlab.runtime import resolve_device

    try:
        device = resolve_device(args.device)
    except ResnetlabError as exc:
        raise BenchError(str(exc).replace("run.device:", "--device", 1)) from None
    args.device = str(device)
    if args.out and any(Path(args.out).with_suffix(sfx).is_dir() for sfx in (".json", ".md")):
        raise BenchError(f"--out {args.out}: a directory is in the way of the .json or .md file")
    if args.speed == args.memory == "off":
        raise BenchError("--speed off and --memory off: nothing to measure")
    for key in ("batch", "repeats", "min_steps"):
        if getattr(args, key) < 1:
            raise BenchError(f"--{key.replace('_', '-')} must be >= 1")
    batches = {}
    for item in args.model_batch:
        name, _, value = item.partition("=")
        if name not in args.models or not value.isdigit() or int(value) < 1:
            raise BenchError(f"--model-batch {item!r}: expected MODEL=BATCH for one of --models, BATCH >= 1")
        batches[name] = int(value)
    args.model_batch = batches
    from benchmarks.plain import plain_model
    from resnetlab.registry import get_spec

    for name in args.models:
        get_spec(name)  # unknown names: one line, with a suggestion
        try:
            plain_model(name)
        except ValueError as exc:
            raise BenchError(str(exc)) from None
    if args.data is None:
        args.data = f"folder:{SHARED_CIFAR}" if SHARED_CIFAR.is_file() else "synthetic:50000"
    if args.block_s is None:
        args.block_s = 6.0 if device.type == "cpu" else 2.0
    if args.epoch_steps is None:
        args.epoch_steps = 0 if device.type == "cuda" else -1
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    from resnetlab.config import build_config
    from resnetlab.data import load_data
    from resnetlab.runtime import data_options

    device = torch.device(args.device)
    cfg = build_config(recipe="cifar", data=args.data)
    load_data(cfg.data.source, data_options(cfg))  # decode once into the cache; bad data fails here, in one line
    common = ["--device", args.device, "--data", args.data, "--amp", args.amp, "--compile", args.compile,
              "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--block-s", str(args.block_s),
              "--min-steps", str(args.min_steps), "--epoch-steps", str(args.epoch_steps)]
    result: dict[str, Any] = {"command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
                              "machine": machine(device), "args": vars(args) | {"model_child": None},
                              "models": [], "memory": {}}
    for name in args.models:
        if args.speed == "on":
            row = child([*common, "--batch", str(args.model_batch.get(name, args.batch)), "--model-child", name])
            row.setdefault("model", name)
            result["models"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "ips"}), file=sys.stderr)
        if args.memory == "on":
            mbatch = args.memory_batch or args.batch
            mem = {"batch": mbatch}
            for impl in ("ours", "plain"):
                mem[impl] = child([*common, "--batch", str(mbatch), "--memory-child", name, impl, "0", "0"])
            result["memory"][name] = mem
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
        if args.model_child:
            print(json.dumps(bench_model(args.model_child, args)))
            return 0
        if args.memory_child:
            name, impl, recompute, time_steps = args.memory_child
            print(json.dumps(memory_probe(name, impl, args.batch, args.device, args.data, args.amp, int(recompute),
                                          int(time_steps))))
            return 0
        result = run(args)
    except (BenchError, ResnetlabError) as exc:
        print(f"benchmarks.run: {exc}", file=sys.stderr)
        return 2
    table = markdown(result)
    print(table)
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            for path, text in ((out.with_suffix(".json"), json.dumps(result, indent=1)),
                               (out.with_suffix(".md"), table)):
                write_text_atomic(path, text)
        except (OSError, ResnetlabError) as exc:
            print(f"benchmarks.run: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training and evaluation speed and peak memory of resnetlab's models beside a plain eager baseline.

    python -m benchmarks.run                                   # five models, batch 128, CUDA if present
    python -m benchmarks.run --models resnet20 resnet56 --repeats 5 --out results/bench/cpu.json

Per model, in a fresh process (`benchmarks.child`), repeated `--repeats` times with the settings interleaved in
each repeat so that all of them see the same machine: training step, epoch through the data path, evaluation and
peak step memory, each ours beside a plain eager baseline (`benchmarks.measure`), and the step's place under the
machine's matmul rate and copy bandwidth (`benchmarks.roofline`). This module is the command line: it checks the
arguments, starts the measurements and writes the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import MODELS, SHARED_CIFAR, BenchError, child, machine
from resnetlab.errors import ResnetlabError
from resnetlab.files.atomic import write_text_atomic


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
    compiled = [r for r in result["models"] if "compiled_vs_eager" in r]
    if compiled:
        lines += ["", "Compiled against eager, timed in the same blocks (the first step holds the compilation):",
                  "", "| model | first step | step, ours compiled | step, ours eager | step, plain | "
                  "compiled/eager | compiled/plain | eager/plain |", "|---|---|---|---|---|---|---|---|"]
        for r in compiled:
            ips = r["ips"]
            lines.append(f"| {r['model']} | {r['first_step_s']:.1f} s | {_fmt(ips['step'])} | "
                         f"{_fmt(ips['step_eager'])} | {_fmt(ips['step_plain'])} | **{r['compiled_vs_eager']:.2f}x** | "
                         f"{r['step_vs_plain']:.2f}x | {r['eager_vs_plain']:.2f}x |")
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
    args = parser.parse_args(argv)
    from resnetlab.settings.device import resolve_device

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
    from resnetlab.networks.registry import get_spec

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
    from resnetlab.data import load_data
    from resnetlab.settings.config import build_config

    device = torch.device(args.device)
    cfg = build_config(recipe="cifar", data=args.data)
    load_data(cfg.data.source, cfg.data.options())  # decode once into the cache; bad data fails here, in one line
    common = ["--device", args.device, "--data", args.data, "--amp", args.amp, "--compile", args.compile,
              "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--block-s", str(args.block_s),
              "--min-steps", str(args.min_steps), "--epoch-steps", str(args.epoch_steps)]
    result: dict[str, Any] = {"command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
                              "machine": machine(device), "args": vars(args),
                              "models": [], "memory": {}}
    for name in args.models:
        if args.speed == "on":
            row = child([*common, "--batch", str(args.model_batch.get(name, args.batch)), "speed", name])
            row.setdefault("model", name)
            result["models"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "ips"}), file=sys.stderr)
        if args.memory == "on":
            mbatch = args.memory_batch or args.batch
            mem = {"batch": mbatch}
            for impl in ("ours", "plain"):
                mem[impl] = child([*common, "--batch", str(mbatch), "memory", name, impl, "0", "0"])
            result["memory"][name] = mem
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
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

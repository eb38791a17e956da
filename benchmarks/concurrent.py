"""Total training throughput of N trainings sharing one device, against one alone.

    python -m benchmarks.concurrent --model resnet110 --procs 1 2 4 8 --seconds 10 --device cuda

The CIFAR nets are narrow: at batch 128 one training leaves much of an H100 idle between its kernel launches.
Several independent trainings (separate processes, as `scripts/gpu_plan.py train` runs them) fill those gaps.
For each N, N fresh processes each build the library's own Trainer (the run's settings: channels-last, fused
SGD, `--amp`), take `--warmup` steps, and wait; all start together, each runs `train_step` on a fixed batch for
`--seconds`, and reports its images. Total throughput is all images over the longest of the N timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError, build_trainer, machine, sync, synthetic_batch
from resnetlab.errors import ResnetlabError
from resnetlab.files.atomic import write_text_atomic


def worker(args: argparse.Namespace) -> None:
    """One process: warm up, say ready, wait for the go line, train for --seconds, print images and time."""
    import torch

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args.model, args.data, device, args.amp, 0, Path(tmp), args.compile)
        x, y = synthetic_batch(args.batch, device)
        trainer.model.train()
        for _ in range(args.warmup):
            trainer.train_step(x, y, 0)
        sync(device)
        print("ready", flush=True)
        sys.stdin.readline()
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            for _ in range(10):
                trainer.train_step(x, y, 0)
            steps += 10
            sync(device)
        seconds = time.perf_counter() - t0
    print(json.dumps({"images": steps * args.batch, "seconds": seconds}), flush=True)


def measure(args: argparse.Namespace, n: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.concurrent", "--worker", "--model", args.model, "--batch",
           str(args.batch), "--device", args.device, "--data", args.data, "--amp", args.amp, "--compile",
           args.compile, "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    try:
        for p in procs:
            line = p.stdout.readline() if p.stdout else ""
            if line.strip() != "ready":
                err = (p.stderr.read() if p.stderr else "").strip().splitlines() or ["no output"]
                raise BenchError(f"{args.model} x {n}: a worker failed before starting ({err[-1][:200]})")
        for p in procs:  # all start within a few milliseconds of each other
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        rows = []
        for p in procs:
            out, err = p.communicate(timeout=args.seconds * 10 + 120)
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if p.returncode != 0 or not lines:
                raise BenchError(f"{args.model} x {n}: a worker failed ({(err.strip().splitlines() or ['?'])[-1]})")
            rows.append(json.loads(lines[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    per = [r["images"] / r["seconds"] for r in rows]
    return {"procs": n, "total_images_per_s": sum(r["images"] for r in rows) / max(r["seconds"] for r in rows),
            "per_process_images_per_s": per}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.concurrent", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet110")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", default="synthetic:512")
    parser.add_argument("--amp", default="none", choices=("none", "bf16"))
    parser.add_argument("--compile", default="off", choices=("off", "default", "reduce-overhead", "max-autotune"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per process (0: PyTorch's default)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from resnetlab.networks.registry import get_spec
    from resnetlab.settings.device import resolve_device

    try:
        args.device = str(resolve_device(args.device))
    except ResnetlabError as exc:
        raise BenchError(str(exc).replace("run.device:", "--device", 1)) from None
    get_spec(args.model)
    if any(n < 1 for n in args.procs) or args.seconds <= 0 or args.batch < 1 or args.warmup < 0:
        raise BenchError("--procs and --batch must be >= 1, --seconds > 0, --warmup >= 0")
    if args.out and Path(args.out).is_dir():
        raise BenchError(f"--out {args.out}: is a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
        if args.worker:
            worker(args)
            return 0
        import torch

        rows = []
        for n in args.procs:
            row = measure(args, n)
            rows.append(row)
            print(f"{args.model} x {n}: {row['total_images_per_s']:,.0f} images/s in all", flush=True)
        base = rows[0]["total_images_per_s"]
        for row in rows:
            row["vs_first"] = row["total_images_per_s"] / base
        result = {"command": "python -m benchmarks.concurrent " + " ".join(sys.argv[1:]),
                  "machine": machine(torch.device(args.device)), "args": vars(args), "rows": rows}
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(args.out), json.dumps(result, indent=1))
    except (BenchError, ResnetlabError) as exc:
        print(f"benchmarks.concurrent: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

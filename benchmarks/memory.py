"""Peak memory and step time of training with and without activation recomputation.

    python -m benchmarks.memory --model preact_resnet1001 --batch 128 --recompute 0 1 4 --time-steps 3

Each setting runs in a fresh process (`benchmarks.child memory`: the probe of `benchmarks.measure` on
resnetlab's own training step): the step's memory is the peak during the first step over the memory before
it (CPU: resident set size; CUDA: `max_memory_allocated`), and the step time is the median of `--time-steps`
further steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import SHARED_CIFAR, child
from resnetlab.errors import ResnetlabError
from resnetlab.files.atomic import write_text_atomic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preact_resnet1001")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--recompute", type=int, nargs="+", default=[0, 1, 4],
                        help="units per recomputed segment (0: plain backward)")
    parser.add_argument("--time-steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    data = args.data or (f"folder:{SHARED_CIFAR}" if SHARED_CIFAR.is_file() else "synthetic:512")
    if args.out and Path(args.out).is_dir():
        print(f"benchmarks.memory: --out {args.out}: is a directory", file=sys.stderr)
        return 2
    rows = []
    for r in args.recompute:
        row = child(["--device", args.device, "--data", data, "--batch", str(args.batch), "memory",
                     args.model, "ours", str(r), str(args.time_steps)])
        if "error" in row:
            print(f"benchmarks.memory: recompute={r}: {row['error']}", file=sys.stderr)
            return 2
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    base = rows[0]
    for row in rows:
        cost = ""
        if "step_s" in row and "step_s" in base:
            cost = f", step {row['step_s']['median']:.1f} s ({row['step_s']['median'] / base['step_s']['median']:.2f}x)"
        print(f"recompute={row['recompute']}: {row['step_memory_mib']:,.0f} MiB "
              f"({row['step_memory_mib'] / base['step_memory_mib']:.2f}x of recompute={base['recompute']}){cost}")
    if args.out:
        command = "python -m benchmarks.memory " + " ".join(sys.argv[1:] if argv is None else argv)
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(args.out), json.dumps({"command": command, "rows": rows}, indent=1))
        except (OSError, ResnetlabError) as exc:
            print(f"benchmarks.memory: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One measurement in a fresh process, as `benchmarks.run` and `benchmarks.memory` start it; prints a JSON row.

    python -m benchmarks.child [--device D --data S --amp A --compile C --batch B ...] speed MODEL
    python -m benchmarks.child [...] memory MODEL IMPL RECOMPUTE TIME_STEPS

A process of its own gives each model and each memory setting its own allocator, kernel caches and peak
memory. The options are those of `benchmarks.run`, already checked there.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.common import BenchError
from resnetlab.errors import ResnetlabError


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default="synthetic:512")
    parser.add_argument("--amp", default="none", choices=("none", "bf16"))
    parser.add_argument("--compile", default="off")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--block-s", type=float, default=6.0)
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--epoch-steps", type=int, default=-1)
    kind = parser.add_subparsers(dest="kind", required=True)
    kind.add_parser("speed").add_argument("model")
    memory = kind.add_parser("memory")
    memory.add_argument("model")
    memory.add_argument("impl", choices=("ours", "plain"))
    memory.add_argument("recompute", type=int)
    memory.add_argument("time_steps", type=int)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.measure import bench_model, memory_probe

    args = parse(argv)
    try:
        if args.kind == "speed":
            row = bench_model(args.model, args)
        else:
            row = memory_probe(args.model, args.impl, args.batch, args.device, args.data, args.amp, args.recompute,
                               args.time_steps)
    except (BenchError, ResnetlabError) as exc:
        print(f"benchmarks.child: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

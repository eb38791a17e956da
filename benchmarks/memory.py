"""Peak memory of one training step with and without activation recomputation (CPU: peak RSS; CUDA: allocator).

    python -m benchmarks.memory --model preact_resnet1001 --batch 32 --recompute 0 1 4

Each setting runs in a fresh process: on CPU the step's memory is the peak resident set size minus the
resident size after the model, optimizer and batch exist; on CUDA it is `max_memory_allocated` minus the
memory allocated before the step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(model: str, batch: int, recompute: int, device: str) -> dict[str, float]:
    import torch

    from resnetlab import create_model

    torch.manual_seed(0)
    net = create_model(model, recompute=recompute).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_now()
    start = time.perf_counter()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": model, "batch": batch, "recompute": recompute, "device": device,
            "step_memory_mib": (peak - before) / 2**20, "step_s": time.perf_counter() - start}


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preact_resnet1001")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--recompute", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.batch, args.recompute[0], args.device)))
        return
    rows = []
    for r in args.recompute:
        cmd = [sys.executable, "-m", "benchmarks.memory", "--one", "--model", args.model, "--batch",
               str(args.batch), "--recompute", str(r), "--device", args.device]
        rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
        print(json.dumps(rows[-1]))
    base = rows[0]["step_memory_mib"]
    for row in rows:
        print(f"recompute={row['recompute']}: {row['step_memory_mib']:.0f} MiB "
              f"({row['step_memory_mib'] / base:.2f}x of recompute={rows[0]['recompute']}), {row['step_s']:.1f} s")


if __name__ == "__main__":
    main()

"""A suite's throughput with `--jobs` against one training at a time, on this machine (issue 24).

    python -m benchmarks.suite_jobs --data folder:../shared/data/cifar10-jpeg.tar.gz \\
        --out results/bench/suite-jobs-cpu.json

Two measurements, each of which writes its rows into the JSON (and a markdown table beside it, .md):

1. The step, per model (`benchmarks.concurrent`: the library's trainer on a fixed synthetic batch, processes
   started together): images/s of one training on 2 threads, of one on 1 thread, and of two 1-thread
   trainings at once, in all. Whether two small trainings side by side beat one using both cores.
2. The suite: wall time of `resnetlab experiment SUITE --scale cpu` with `--jobs 1` (one training at a time,
   PyTorch's default threads) and with `--jobs N`, each in a fresh directory with its own index of trainings
   (nothing is reused between them), after the data set has been decoded into the cache once. The suite's
   throughput is the images its members trained over the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError, machine
from resnetlab.errors import ResnetlabError
from resnetlab.files.atomic import write_text_atomic


def _env() -> dict[str, str]:
    """This environment without thread settings: each command chooses its own threads."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def step_rows(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows = []
    for model in args.models:
        row: dict[str, Any] = {"model": model, "batch": args.batch}
        for name, procs, threads in (("one_2_threads", 1, 2), ("one_1_thread", 1, 1), ("two_1_thread", 2, 1)):
            out = work / f"step-{model}-{name}.json"
            cmd = [sys.executable, "-m", "benchmarks.concurrent", "--model", model, "--procs", str(procs),
                   "--threads", str(threads), "--device", "cpu", "--batch", str(args.batch), "--seconds",
                   str(args.seconds), "--warmup", str(args.warmup), "--out", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
            if proc.returncode != 0:
                raise BenchError(f"{' '.join(cmd[2:])}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            row[name] = json.loads(out.read_text())["rows"][0]["total_images_per_s"]
            print(f"{model} {name}: {row[name]:,.1f} images/s", flush=True)
        row["two_vs_one_2_threads"] = row["two_1_thread"] / row["one_2_threads"]
        row["threads_2_vs_1"] = row["one_2_threads"] / row["one_1_thread"]
        rows.append(row)
    return rows


def decode_once(data: str) -> float:
    """Decode the data set into the cache (what the first training would otherwise do); its seconds."""
    code = ("from resnetlab.settings.config import build_config; from resnetlab.data import load_data; "
            f"load_data({data!r}, build_config(data={data!r}).data.options())")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())
    return time.perf_counter() - t


def suite_row(args: argparse.Namespace, work: Path, jobs: int) -> dict[str, Any]:
    """One timed suite call with `jobs` jobs, in a directory of its own."""
    out = work / f"jobs{jobs}" / "out"
    cmd = [sys.executable, "-m", "resnetlab", "experiment", args.suite, "--scale", args.scale, "--data", args.data,
           "--seeds", str(args.seeds), "--out", str(out), "--set", "run.progress=false"]
    cmd += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    cmd += ["--iters", str(args.iters)] if args.iters is not None else []
    cmd += ["--jobs", str(jobs)] if jobs > 1 else []
    with open(work / f"jobs{jobs}.log", "w") as log:
        t = time.perf_counter()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env()).returncode
        wall = time.perf_counter() - t
    if code != 0:
        raise BenchError(f"{' '.join(cmd[2:])}: exit {code} (see {work / f'jobs{jobs}.log'})")
    members, images = {}, 0
    for run in sorted(out.glob("*/seed*")):
        summary = json.loads((run / "summary.json").read_text())
        batch = json.loads((run / "config.json").read_text())["optim"]["batch_size"]
        images += summary["steps"] * batch
        members[f"{run.parent.name}/{run.name}"] = {
            "wall_s": summary["wall_time_s"], "images_per_s": summary["images_per_s"],
            "threads": summary.get("threads"), "test_error": summary["final"].get("test_error")}
    print(f"{args.suite} --jobs {jobs}: {wall:,.1f} s, {images / wall:,.1f} images/s", flush=True)
    return {"jobs": jobs, "command": " ".join(["resnetlab", *cmd[3:]]), "wall_s": wall, "trained_images": images,
            "images_per_s": images / wall, "members": members}


def markdown(result: dict[str, Any]) -> str:
    lines = []
    if result["suite"]:
        base = result["suite"][0]
        lines += [f"| `{result['args']['suite']}` at {result['args']['scale']} scale | wall time | images/s "
                  f"(suite) | vs --jobs {base['jobs']} |", "|---|---|---|---|"]
        lines += [f"| --jobs {r['jobs']} | {r['wall_s']:,.0f} s | {r['images_per_s']:,.1f} | "
                  f"{base['wall_s'] / r['wall_s']:.2f}x |" for r in result["suite"]]
        lines.append("")
    if result["step"]:
        lines += ["| model (batch) | 1 training, 2 threads | 1 training, 1 thread | 2 trainings x 1 thread, in all "
                  "| 2x1 / 1x2 | 2 threads / 1 |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} ({r['batch']}) | {r['one_2_threads']:,.1f} | {r['one_1_thread']:,.1f} | "
                  f"{r['two_1_thread']:,.1f} | {r['two_vs_one_2_threads']:.2f}x | {r['threads_2_vs_1']:.2f}x |"
                  for r in result["step"]]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite_jobs", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the suite's data, e.g. folder:../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--suite", default="degradation", help="a suite name or .toml file")
    p.add_argument("--scale", default="cpu", choices=["paper", "cpu", "small"])
    p.add_argument("--epochs", type=float, default=None, help="budget per run (default: the scale's)")
    p.add_argument("--iters", type=int, default=None, help="budget per run in iterations")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="the suite calls, first is the baseline")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], help="models of the step measurement")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=60.0, help="timed seconds per step measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each step measurement")
    p.add_argument("--skip", choices=["step", "suite"], action="append", default=[], help="leave a part out")
    p.add_argument("--work", default=None, help="keep the suites' directories and logs here (default: a temp dir)")
    p.add_argument("--out", required=True, help="the JSON to write (and the markdown table beside it, .md)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.work or tmp)
            work.mkdir(parents=True, exist_ok=True)
            result: dict[str, Any] = {"command": "python -m benchmarks.suite_jobs " + " ".join(sys.argv[1:]),
                                      "machine": machine(torch.device("cpu")), "args": vars(args),
                                      "step": [], "suite": []}
            if "step" not in args.skip:
                result["step"] = step_rows(args, work)
            if "suite" not in args.skip:
                result["decode_s"] = decode_once(args.data)
                result["suite"] = [suite_row(args, work, jobs) for jobs in args.jobs]
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out, json.dumps(result, indent=1))
            write_text_atomic(out.with_suffix(".md"), markdown(result))
            print(markdown(result))
    except (BenchError, ResnetlabError, subprocess.CalledProcessError) as exc:
        print(f"benchmarks.suite_jobs: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

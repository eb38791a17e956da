"""Inference speed of the exported paths beside our eager evaluation and the plain net (issue 15).

    python -m benchmarks.inference --models resnet20 resnet56 --batch 128 --repeats 5 --out results/bench/infer.json

Per model, on the CPU, each setting is timed on the same synthetic batch, the settings interleaved in each
repeat so that all see the same machine; medians (and min-max) of images/s, ratios of medians from this run:

- plain: the same network written the usual way (benchmarks/plain.py), eval(), no_grad, NCHW;
- ours: `resnetlab`'s evaluation path (BN folded into the convs, channels-last, inference_mode);
- onnxruntime: the file `resnetlab export --format onnx` writes (normalisation inside, BN folded), run by
  onnxruntime's CPU provider (`--ort-threads`, default: the machine's cores);
- compiled: our evaluation path through torch.compile with inductor's freezing (weights folded as constants);
  its compilation is timed separately.
The exported graph takes pixels in [0, 1] and normalises inside; the others take normalised inputs. The
normalisation is one subtract and divide per pixel, inside the timing of onnxruntime only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BenchError, machine
from resnetlab.errors import ResnetlabError
from resnetlab.files.atomic import write_text_atomic


def settings(name: str, batch: int, ort_threads: int, tmp: Path) -> tuple[dict[str, Callable[[], Any]], float]:
    """The four evaluation settings of `name`, and the compile time of the frozen one (seconds)."""
    import onnxruntime
    import torch._inductor.config as inductor

    from benchmarks.plain import plain_model
    from resnetlab import create_model
    from resnetlab.networks.folding import fold_bn
    from resnetlab.weights.export import export
    from resnetlab.weights.pretrained import Trained

    torch.manual_seed(0)
    net = create_model(name).eval()
    pre = Trained(net, torch.zeros(3, 1, 1), torch.ones(3, 1, 1), [str(i) for i in range(10)], 32, "random")
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = plain_model(name).eval()
    ours = fold_bn(net).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    onnx_path = tmp / f"{name}.onnx"
    export(pre, "onnx", onnx_path)
    opts = onnxruntime.SessionOptions()
    if ort_threads:
        opts.intra_op_num_threads = ort_threads
    session = onnxruntime.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    inductor.freezing = True
    compiled = torch.compile(fold_bn(net).to(memory_format=torch.channels_last))
    t0 = time.perf_counter()
    with torch.inference_mode():
        compiled(xc)
    compile_s = time.perf_counter() - t0

    def run_plain() -> None:
        with torch.no_grad():
            plain(x)

    def run_ours() -> None:
        with torch.inference_mode():
            ours(xc)

    def run_compiled() -> None:
        with torch.inference_mode():
            compiled(xc)

    def run_ort() -> None:
        session.run(None, {"pixels": xn})

    return {"plain": run_plain, "ours": run_ours, "onnxruntime": run_ort, "compiled": run_compiled}, compile_s


def bench(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        fns, compile_s = settings(name, args.batch, args.ort_threads, Path(tmp))
        for fn in fns.values():  # warm-up
            for _ in range(2):
                fn()
        t0 = time.perf_counter()
        fns["plain"]()
        calls = max(1, round(args.block_s / max(time.perf_counter() - t0, 1e-6)))
        ips: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeats):
            for key, fn in fns.items():
                t = time.perf_counter()
                for _ in range(calls):
                    fn()
                ips[key].append(args.batch * calls / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in ips.items()}
    return {"model": name, "batch": args.batch, "calls_per_block": calls, "compile_s": round(compile_s, 1),
            "images_per_s": {k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in ips.items()},
            "vs_plain": {k: med[k] / med["plain"] for k in med}}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']} ({m['cores']} cores, {m['threads']} threads), torch {m['torch']}, "
             f"{m['date']}; {result['args']['repeats']} repeats; eval images/s, median (min-max); ratio to plain.",
             "", "| model | batch | plain | ours (eager) | onnxruntime | compiled, frozen (compile s) |",
             "|---|---|---|---|---|---|"]
    def cell(r: dict[str, Any], k: str) -> str:
        d = r["images_per_s"][k]
        return f"{d['median']:,.0f} ({d['min']:,.0f}-{d['max']:,.0f}) **{r['vs_plain'][k]:.2f}x**"

    for r in result["models"]:
        cells = " | ".join(cell(r, k) for k in ("plain", "ours", "onnxruntime", "compiled"))
        lines.append(f"| {r['model']} | {r['batch']} | {cells} ({r['compile_s']}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block-s", type=float, default=3.0, help="seconds per timed block (of the plain net)")
    parser.add_argument("--ort-threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--out", default=None, help="write JSON here and a table beside it (.md)")
    args = parser.parse_args(argv)
    try:
        from benchmarks.plain import plain_model
        from resnetlab.networks.registry import get_spec

        if args.batch < 1 or args.repeats < 1 or args.block_s <= 0:
            raise BenchError("--batch and --repeats must be >= 1, --block-s > 0")
        for name in args.models:
            get_spec(name)
            try:
                plain_model(name)
            except ValueError as exc:
                raise BenchError(str(exc)) from None
        result = {"command": "python -m benchmarks.inference " + " ".join(sys.argv[1:] if argv is None else argv),
                  "machine": machine(torch.device("cpu")), "args": vars(args),
                  "models": [bench(name, args) for name in args.models]}
    except (BenchError, ResnetlabError) as exc:
        print(f"benchmarks.inference: {exc}", file=sys.stderr)
        return 2
    table = markdown(result)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1))
        write_text_atomic(out.with_suffix(".md"), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

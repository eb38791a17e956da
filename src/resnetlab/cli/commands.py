"""The commands' bodies: each takes the parsed arguments, calls the library (the public API, `resnetlab.api`,
where it has the command's work) and prints what the user sees."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
from typing import Any

from resnetlab.api import Run, evaluate, experiment, fetch, list_suites, load, train
from resnetlab.api.runs import train_overrides
from resnetlab.api.studies import suite_call
from resnetlab.data.fetch import archive_hashes
from resnetlab.data.images import image_files
from resnetlab.errors import EXIT_DIVERGED, EXIT_STOPPED, ConfigError, ResnetlabError, printable
from resnetlab.experiments.report import build_report
from resnetlab.experiments.results import kendall_tau
from resnetlab.experiments.slurm import launch
from resnetlab.experiments.suite import load_suite
from resnetlab.networks.counting import count_macs, count_params
from resnetlab.networks.describe import format_table, unit_rows, zoo_rows
from resnetlab.networks.registry import create_model
from resnetlab.runs.records import WorkerResult
from resnetlab.settings.overrides import parse_assignments
from resnetlab.weights.resolve import note_skipped


def print_json(value: Any) -> None:
    """`value` as strict JSON on stdout: NaN and Inf as null (RFC 8259 has neither), paths as strings."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, list | tuple) else v

    print(json.dumps(clean(value), indent=1, allow_nan=False, default=str))


def json_mode(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """With --json, what the work prints (log lines, progress) goes to stderr: stdout holds the JSON only."""
    return contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()


def _check_input_size(size: int | None) -> None:
    if size is not None and not 8 <= size <= 4096:
        raise ResnetlabError(f"--input-size: {size} is not a side in 8..4096 pixels")


def cmd_models(args: argparse.Namespace) -> int:
    _check_input_size(args.input_size)
    rows = zoo_rows(args.filter, args.input_size)
    if not rows:
        raise ResnetlabError(f"no model name contains {args.filter!r}")
    if args.json:
        print_json([dataclasses.asdict(r) for r in rows])
        return 0
    table = [
        [r.name, r.depth, r.block, r.unit, f"{r.params / 1e6:.2f}M", f"{r.macs / 1e9:.3f}G", r.input_size, r.source]
        for r in rows
    ]
    print(format_table(table, ["name", "depth", "block", "unit", "params", "mult-adds", "input", "paper"]))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    _check_input_size(args.input_size)
    model = create_model(args.name, **parse_assignments(args.override, "--override"))
    spec = model.spec
    size = args.input_size or spec.input_size
    fields = {k: v for k, v in spec.to_dict().items() if k != "name"}
    rows = unit_rows(model, size)
    totals = {"units": len(rows), "params": count_params(model),
              "weight_params": count_params(model, weights_only=True), "macs": count_macs(model, size),
              "input_size": size}
    if args.json:
        print_json({"name": args.name, "spec": fields, "units": rows, "total": totals})
        return 0
    print(f"{args.name}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    print(format_table(rows, list(rows[0].keys())))
    print(
        f"total: {len(rows)} units, {totals['params']:,} parameters "
        f"({totals['weight_params']:,} in conv/FC weights), "
        f"{totals['macs'] / 1e6:,.1f}M multiply-adds at {size}x{size}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    overrides = parse_assignments(args.overrides, "--set")
    if args.resume:
        named = train_overrides(args.epochs, args.iters, args.seed, None, None, args.val_split, overrides)
        given = [flag for flag, v in (("--data", args.data), ("--recipe", args.recipe), ("--out", args.out),
                                      ("--init", args.init), ("--set/--epochs/--iters/--seed/--val-split",
                                                              named.keys() - {"run.device"}))
                 if v]
        if given:
            raise ResnetlabError(f"--resume takes its config from the run directory; drop {', '.join(given)}")
        with json_mode(args):
            run = Run(args.resume).resume(device=args.device, progress=True, model=args.model)
    else:
        with json_mode(args):
            run = train(args.model, args.data, args.recipe, args.out, epochs=args.epochs, iters=args.iters,
                        seed=args.seed, device=args.device, init=args.init, val_split=args.val_split,
                        set=overrides, progress="auto")
    summary = run.result
    if summary.status == "stopped":
        return EXIT_STOPPED
    if isinstance(summary, WorkerResult):  # a worker process of a multi-process run: rank 0 reports
        return 0
    figure = run.path / "curves.png"
    if args.json:
        print_json({"run": str(run.path), "figure": str(figure) if figure.exists() else None,
                    "summary": summary.to_dict()})
    else:
        final = summary.final.get("test_error")
        verdict = "diverged (fail)" if summary.diverged else (
            f"test error {final:.2%}" + (" (fail: above 20%)" if summary.fail else "") if final is not None
            else "no test error in metrics.jsonl")
        print(f"done: {summary.model} on {summary.data}, {verdict}, {summary.wall_time_s:.1f} s")
        print(f"run directory: {run.path}")
        if figure.exists():
            print(f"figure: {figure}")
    return EXIT_DIVERGED if summary.diverged else 0  # recorded, but not a success


def cmd_eval(args: argparse.Namespace) -> int:
    source = _source(args)
    if args.best and args.weights is not None:
        raise ResnetlabError("--best picks a run directory's best.pt; it does not apply to --weights")
    with json_mode(args):
        result = evaluate(source, split=args.split, data=args.data, batch_size=args.batch_size,
                          device=args.device, best=args.best, model=args.model)
    path, claimed = result["path"], result["claimed_error"]
    if args.json:
        print_json({k: v for k, v in result.items() if k != "skipped"} | {"split": args.split})
    else:
        print(f"{path}: {result['model']} on {result['data']} ({args.split}, {result['images']} images): top-1 "
              f"error {result['error']:.2%}, top-5 error {result['top5_error']:.2%}, loss {result['loss']:.4f}")
        if claimed is not None:
            print(f"{path}: the file's own record (best_prec1, on the original CIFAR-10 test set): "
                  f"top-1 error {claimed:.2%}")
    note_skipped(tuple(result["skipped"]), path)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    if args.suite == "list":
        suites = [(name, load_suite(name)) for name in list_suites()]
        if args.json:
            print_json([{"name": name, "members": len(s.members), "title": s.title, "source": s.source}
                        for name, s in suites])
            return 0
        for name, suite in suites:
            print(f"{name:12s} {len(suite.members):2d} members  {suite.title} ({suite.source})")
        return 0
    suite = load_suite(args.suite)
    settings = parse_assignments(args.overrides, "--set")
    if args.json and args.launcher != "here":
        raise ConfigError("--json reports the rows of a suite run here; with --launcher, run the same call "
                          "with --collect --json once the tasks have ended")
    call = dict(out=args.out, epochs=args.epochs, iters=args.iters, device=args.device, set=settings, only=args.only,
                jobs=args.jobs, devices=args.devices, trainings=args.trainings, collect=args.collect,
                add_seeds=args.add_seeds, results=not args.no_results)
    if args.launcher != "here":  # Slurm (or submitit's local executor): workers in submitted tasks
        return launch(*suite_call(args.suite, args.scale, args.data, args.seeds, **call), args)
    with json_mode(args):
        rows = experiment(args.suite, args.scale, args.data, args.seeds, **call, progress=True)
    tau, n = kendall_tau(rows)  # the run said where the results are, or that the last worker writes them
    if args.json:
        print_json({"suite": suite.name, "rows": [r.to_dict() for r in rows], "kendall_tau": tau, "tau_over": n})
        return 0
    done = sum(1 for r in rows if r.runs or r.diverged)
    print(f"{suite.name}: {done}/{len(rows)} members with results; "
          f"ranking vs paper (Kendall tau): {'-' if tau is None else f'{tau:+.2f}'} over {n}")
    return 0


def _source(args: argparse.Namespace) -> str:
    """The RUN_OR_WEIGHTS positional or --weights: one of the two."""
    if (args.source is None) == (args.weights is None):
        raise ResnetlabError("give a run directory or checkpoint, or --weights FILE (one of the two)")
    return args.weights if args.weights is not None else args.source  # never empty: see _path


def cmd_export(args: argparse.Namespace) -> int:
    trained = load(_source(args), best=args.best, model=args.model, device=args.device)
    with json_mode(args):
        result = trained.export(args.format, args.out)  # written from a CPU float32 copy whatever --device says
    check = (f"; outputs within {result['max_abs_diff']:.2g} of PyTorch's (bound {result['tolerance']})"
             if "max_abs_diff" in result else "")
    if "device_max_abs_diff" in result:
        check += f"; PyTorch's on {result['device']} within {result['device_max_abs_diff']:.2g} of its CPU's"
    if args.json:
        print_json(result)
    else:
        print(f"exported {args.format}: {printable(result['path'])} ({result['bytes']:,} bytes){check}")
    note_skipped(trained.skipped, trained.source)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ResnetlabError(f"--top-k must be >= 1, got {args.top_k}")
    images = list(args.images)
    if args.weights is None and len(images) < 2:  # the first positional argument is the run or checkpoint
        raise ResnetlabError("give a run directory or checkpoint and at least one image (or --weights FILE)")
    source = args.weights if args.weights is not None else images.pop(0)
    trained = load(source, best=args.best, model=args.model, device=args.device)
    files = image_files(images)
    answers = trained.predict(files, args.top_k)  # every image read before anything is printed
    rows = [{"image": str(f), "top": [{"class": c, "probability": round(p, 6)} for c, p in top]}
            for f, top in zip(files, answers, strict=True)]
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(f"{printable(row['image'])}: " + ", ".join(f"{printable(t['class'])} {t['probability']:.1%}"
                                                              for t in row["top"]))
    note_skipped(trained.skipped, trained.source)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    out = build_report(args.dirs, args.out or "report.html")
    print(f"report: {out}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    path = fetch(args.name, args.out, mirror=args.mirror, progress="auto")  # its lines and bar go to stderr
    md5, sha, recorded = archive_hashes(path)
    if args.json:
        print_json({"name": args.name, "path": str(path), "md5": md5, "sha256": sha, "recorded": recorded})
        return 0
    print(f"{args.name}: {path} (MD5 {md5}, SHA-256 {sha}{'' if recorded else '; its record could not be written'})")
    return 0

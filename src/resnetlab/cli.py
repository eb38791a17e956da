"""The `resnetlab` command: a thin layer that parses arguments and calls the library.

Every error a user can cause is a `ResnetlabError`: printed as one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .errors import ResnetlabError
from .suite_jobs import add_arguments as add_suite_arguments

PROG = "resnetlab"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, as every other bad input
        sys.stderr.write(f"{self.prog}: error: {_printable(message)} (see --help)\n")
        raise SystemExit(2)


def _nonempty(what: str) -> Callable[[str], str]:
    """An argparse type for a path or name argument: an empty one is an error ("an empty path"), not the
    current directory or a default."""
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"an empty {what}")
        return os.path.expanduser(text) if what == "path" else text  # `--out ~/run` is a run in the home

    return parse


_path, _name = _nonempty("path"), _nonempty("name")


def _check_input_size(size: int | None) -> None:
    if size is not None and not 8 <= size <= 4096:
        raise ResnetlabError(f"--input-size: {size} is not a side in 8..4096 pixels")


def _cmd_models(args: argparse.Namespace) -> int:
    from .describe import format_table, zoo_rows

    _check_input_size(args.input_size)

    rows = zoo_rows(args.filter, args.input_size)
    if not rows:
        raise ResnetlabError(f"no model name contains {args.filter!r}")
    table = [
        [r.name, r.depth, r.block, r.unit, f"{r.params / 1e6:.2f}M", f"{r.macs / 1e9:.3f}G", r.input_size, r.source]
        for r in rows
    ]
    print(format_table(table, ["name", "depth", "block", "unit", "params", "mult-adds", "input", "paper"]))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .counting import count_macs, count_params
    from .describe import format_table, unit_rows
    from .overrides import parse_assignments
    from .registry import create_model

    _check_input_size(args.input_size)
    model = create_model(args.name, **parse_assignments(args.override, "--override"))
    spec = model.spec
    size = args.input_size or spec.input_size
    fields = {k: v for k, v in spec.to_dict().items() if k != "name"}
    print(f"{args.name}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    rows = unit_rows(model, size)
    print(format_table(rows, list(rows[0].keys())))
    print(
        f"total: {len(rows)} units, {count_params(model):,} parameters "
        f"({count_params(model, weights_only=True):,} in conv/FC weights), "
        f"{count_macs(model, size) / 1e6:,.1f}M multiply-adds at {size}x{size}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config
    from .overrides import parse_assignments
    from .records import WorkerResult
    from .train import EXIT_STOPPED, resume, train

    overrides = parse_assignments(args.overrides, "--set")
    for key, value in (("schedule.epochs", args.epochs), ("schedule.iters", args.iters),
                       ("run.device", args.device), ("run.seed", args.seed), ("data.val_split", args.val_split)):
        if value is not None:
            overrides[key] = value
    if args.resume:
        given = [flag for flag, v in (("--data", args.data), ("--recipe", args.recipe), ("--out", args.out),
                                      ("--init", args.init),
                                      ("--set/--epochs/--iters/--seed/--val-split", overrides.keys() - {"run.device"}))
                 if v]
        if given:
            raise ResnetlabError(f"--resume takes its config from the run directory; drop {', '.join(given)}")
        run, summary = resume(args.resume, model=args.model, device=args.device)
    else:
        if args.init is not None:  # absolute, so that a resume from elsewhere finds the same file
            overrides["run.init"] = os.path.abspath(os.path.expanduser(args.init))
        cfg = build_config(recipe=args.recipe, model=args.model, data=args.data, overrides=overrides)
        run, summary = train(cfg, args.out)
    if summary.status == "stopped":
        return EXIT_STOPPED
    if isinstance(summary, WorkerResult):  # a worker process of a multi-process run: rank 0 reports
        return 0
    final = summary.final.get("test_error")
    verdict = "diverged (fail)" if summary.diverged else (
        f"test error {final:.2%}" + (" (fail: above 20%)" if summary.fail else "") if final is not None else "")
    print(f"done: {summary.model} on {summary.data}, {verdict}, {summary.wall_time_s:.1f} s")
    print(f"run directory: {run.path}")
    if run.figure.exists():
        print(f"figure: {run.figure}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .evaluation import evaluate
    from .fast import channels_last_default
    from .runtime import evaluation_source, resolve_device
    from .weights import model_for, note_skipped, resolve

    if (args.checkpoint is None) == (args.weights is None):
        raise ResnetlabError("give a run directory or checkpoint, or --weights FILE (one of the two)")
    if args.best and args.weights is not None:
        raise ResnetlabError("--best picks a run directory's best.pt; it does not apply to --weights")
    weights = resolve(args.checkpoint or args.weights, best=args.best)  # the same net export and predict see
    model = model_for(weights, args.model)
    path, claimed = weights.path, weights.claimed_error
    source = evaluation_source(model.spec, weights.config, weights.norm, args.data, path,
                               (weights.data or {}).get("classes"))
    device = resolve_device(args.device)
    cl = channels_last_default(device)
    model = model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    result = evaluate(model, source, args.split, args.batch_size, device, channels_last=cl)
    print(f"{path}: {model.spec.name} on {source.name} ({args.split}, {source.eval_size(args.split)} images): "
          f"top-1 error {result['error']:.2%}, top-5 error {result['top5_error']:.2%}, loss {result['loss']:.4f}")
    if claimed is not None:
        print(f"{path}: the file's own record (best_prec1, on the original CIFAR-10 test set): "
              f"top-1 error {claimed:.2%}")
    note_skipped(weights.skipped, weights.path)
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .experiments import kendall_tau, load_suite, run_suite, suite_names
    from .overrides import parse_assignments

    if args.suite == "list":
        for name in suite_names():
            suite = load_suite(name)
            print(f"{name:12s} {len(suite.members):2d} members  {suite.title} ({suite.source})")
        return 0
    suite = load_suite(args.suite)
    out = Path(args.out or f"experiments/{suite.name}-{args.scale}")
    kwargs = dict(data=args.data, seeds=args.seeds, epochs=args.epochs, iters=args.iters, scale=args.scale,
                  device=args.device, settings=parse_assignments(args.overrides, "--set"), only=args.only,
                  results=not args.no_results, jobs=args.jobs, devices=args.devices, trainings=args.trainings,
                  train=not args.collect)
    if args.launcher != "here":  # Slurm (or submitit's local executor): workers in submitted tasks
        from .slurm import launch

        return launch(suite, out, kwargs, args)
    rows = run_suite(suite, out, **kwargs)  # says where the results are, or that the last worker writes them
    tau, n = kendall_tau(rows)
    done = sum(1 for r in rows if r["runs"] or r["diverged"])
    print(f"{suite.name}: {done}/{len(rows)} members with results; ranking vs paper (Kendall tau): "
          f"{'-' if tau is None else f'{tau:+.2f}'} over {n}")
    return 0


def _printable(text: str) -> str:
    """`text` with control characters, lone surrogates and bidi overrides escaped (\\n, \\x1b, \\u202e), so a
    file or class name cannot forge or hide a line of output (`data.base.printable`)."""
    from .data.base import printable

    return printable(text)


def _pretrained(args: argparse.Namespace) -> Any:
    from .export import load_pretrained

    if (args.source is None) == (args.weights is None):
        raise ResnetlabError("give a run directory or checkpoint, or --weights FILE (one of the two)")
    path = args.weights if args.weights is not None else args.source  # never empty: see _path
    return load_pretrained(path, model=args.model, best=args.best)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export
    from .weights import note_skipped

    pre = _pretrained(args)
    result = export(pre, args.format, args.output)
    check = (f"; outputs within {result['max_abs_diff']:.2g} of PyTorch's (bound {result['tolerance']})"
             if "max_abs_diff" in result else "")
    print(f"exported {args.format}: {_printable(result['path'])} ({result['bytes']:,} bytes){check}")
    note_skipped(pre.skipped, pre.source)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    import torch

    from .export import image_files, load_image
    from .weights import note_skipped

    if args.top_k < 1:
        raise ResnetlabError(f"--top-k must be >= 1, got {args.top_k}")
    images = list(args.images)
    if args.weights is None:  # the first positional argument is the run directory or checkpoint
        if len(images) < 2:
            raise ResnetlabError("give a run directory or checkpoint and at least one image (or --weights FILE)")
        args.source = images.pop(0)
    else:
        args.source = None
    pre = _pretrained(args)
    files = image_files(images)
    rows = []  # everything is read before anything is printed: a bad file leaves no partial output
    for start in range(0, len(files), 256):
        chunk = files[start:start + 256]
        x = torch.stack([load_image(f, pre) for f in chunk])
        for f, top in zip(chunk, pre.predict(x, args.top_k), strict=True):
            rows.append({"image": str(f), "top": [{"class": c, "probability": round(p, 6)} for c, p in top]})
    if args.json:
        print(json.dumps(rows, indent=1, allow_nan=False))
    else:
        for row in rows:
            print(f"{_printable(row['image'])}: " + ", ".join(f"{_printable(t['class'])} {t['probability']:.1%}"
                                                              for t in row["top"]))
    note_skipped(pre.skipped, pre.source)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    out = build_report(args.dirs, args.output)
    print(f"report: {out}")
    return 0


def _cmd_analyze_propagation(args: argparse.Namespace) -> int:
    from .analysis import run_propagation_cli

    return run_propagation_cli(args.model or [], args.override or [], args.checkpoint, args.data,
                               args.batch_size, args.seed, args.out, args.eval_mode)


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from .data.fetch import archive_hashes, fetch

    path = fetch(args.name, args.dir)
    md5, sha, recorded = archive_hashes(path)
    print(f"{args.name}: {path} (MD5 {md5}, SHA-256 {sha}{'' if recorded else '; its record could not be written'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Deep residual networks of He et al. (2016): build, train, study.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("models", help="list the registry: depth, parameters, multiply-adds, paper table")
    p.add_argument("--filter", default="", help="only names containing this text")
    p.add_argument("--input-size", type=int, default=None, help="input side for multiply-adds (default: 32/224)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("info", help="one model unit by unit")
    p.add_argument("name", help="registry name, e.g. resnet110")
    p.add_argument("--override", "-o", action="append", metavar="K=V", help="spec field, e.g. shortcut=dropout")
    p.add_argument("--input-size", type=int, default=None)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="train a model with a recipe; writes a run directory")
    p.add_argument("--model", default=None, help="registry name (default: preact_resnet20)")
    p.add_argument("--data", default=None, help="digits (default), synthetic[:N], cifar10[:PATH], cifar100[:PATH] "
                   "(no PATH: downloaded once into the data cache), folder:PATH, imagenet:PATH")
    p.add_argument("--recipe", type=_name, default=None,
                   help="cifar, imagenet, digits, or a .toml file (default: by data)")
    p.add_argument("--epochs", type=float, default=None, help="budget in epochs (milestones keep their fractions)")
    p.add_argument("--iters", type=int, default=None, help="budget in iterations")
    p.add_argument("--out", type=_path, default=None, help="run directory (default: runs/MODEL-DATA-TIME)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--val-split", type=int, default=None, metavar="N",
                   help="hold out N training images for validation; the best epoch is chosen on them (paper: 5000)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override any config field, e.g. optim.lr=0.05 or model.shortcut=dropout")
    p.add_argument("--resume", metavar="RUN_DIR", type=_path, default=None,
                   help="continue a run from its newest checkpoint")
    p.add_argument("--init", metavar="FILE", type=_path, default=None,
                   help="start from the weights (and input normalisation) of a resnetlab checkpoint, a "
                        "pytorch_resnet_cifar10 .th file or a torchvision-style state_dict")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 test error of a run directory, checkpoint or weights file")
    p.add_argument("checkpoint", nargs="?", type=_path, default=None, help="run directory or checkpoint file")
    p.add_argument("--weights", metavar="FILE", type=_path, default=None,
                   help="instead: a resnetlab checkpoint, pytorch_resnet_cifar10 .th or torchvision-style file")
    p.add_argument("--data", default=None, help="data to evaluate on (default: the run's)")
    p.add_argument("--model", default=None, help="fail unless the checkpoint is this registry model; the model "
                   "to load a foreign --weights file into (default: the depth a pytorch_resnet_cifar10 file holds)")
    p.add_argument("--best", action="store_true", help="use best.pt of a run directory, not the newest")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("experiment", help="run a paper experiment suite (or 'list' them)")
    p.add_argument("suite", help="degradation, depth, shortcuts, activations, preact, options, a .toml, or list")
    p.add_argument("--data", default=None, help="data source (required at paper and cpu scale; small: digits)")
    p.add_argument("--seeds", type=int, default=1, help="runs per member (seeds 0..K-1)")
    p.add_argument("--epochs", type=float, default=None, help="budget per run in epochs")
    p.add_argument("--iters", type=int, default=None, help="budget per run in iterations")
    p.add_argument("--scale", choices=["paper", "cpu", "small"], default="paper",
                   help="cpu: CIFAR-10 with shallower nets and 2 epochs (one 2-core CPU); small: shallower nets "
                        "and a short budget on digits (checks the mechanism)")
    p.add_argument("--out", type=_path, default=None, help="suite directory (default: experiments/SUITE-SCALE)")
    p.add_argument("--device", default=None)
    p.add_argument("--only", nargs="+", metavar="MEMBER", default=None,
                   help="train only these members (label or slug); the results table lists all")
    p.add_argument("--no-results", action="store_true",
                   help="train only; leave results.md/csv and the figures to a later run (parallel members)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="config override for every member")
    add_suite_arguments(p)  # --jobs, --devices, --collect, --trainings, --launcher and Slurm's options
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("export", help="a trained net as safetensors, ONNX or a torch.export program (.pt2)")
    p.add_argument("source", nargs="?", type=_path, default=None, help="run directory or checkpoint file")
    p.add_argument("--weights", metavar="FILE", type=_path, default=None,
                   help="a weights file instead (any format eval reads)")
    p.add_argument("--model", default=None, help="registry model the weights are for (foreign files)")
    p.add_argument("--best", action="store_true", help="a run directory's best.pt, not its newest checkpoint")
    p.add_argument("--format", required=True, choices=["safetensors", "onnx", "pt2"])
    p.add_argument("-o", "--output", type=_path, required=True, help="file to write")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="top-k classes of image files with a trained net")
    p.add_argument("images", nargs="+", metavar="[RUN_DIR] IMAGE_OR_FOLDER",
                   help="a run directory or checkpoint (unless --weights), then images or folders of images")
    p.add_argument("--weights", metavar="FILE", type=_path, default=None,
                   help="a weights file (.safetensors, .pt, ...)")
    p.add_argument("--model", default=None, help="registry model the weights are for (foreign files)")
    p.add_argument("--best", action="store_true", help="a run directory's best.pt, not its newest checkpoint")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="JSON: one object per image")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("report", help="one self-contained HTML page from run and suite directories")
    p.add_argument("dirs", nargs="+", type=_path, metavar="RUN_OR_SUITE_DIR")
    p.add_argument("-o", "--output", type=_path, default="report.html")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("analyze", help="analyses of a network (v2 sec. 3)")
    asub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", parser_class=_Parser, required=True)
    q = asub.add_parser("propagation", help="forward signal and gradient norm per residual unit (v2 eq. 4-7)")
    q.add_argument("--model", action="append", metavar="NAME", help="registry model at init (repeatable)")
    q.add_argument("--override", "-o", action="append", metavar="K=V", help="spec field for every --model")
    q.add_argument("--checkpoint", metavar="RUN_DIR", type=_path, default=None,
                   help="add a trained model (uses its data)")
    q.add_argument("--data", default=None, help="default: synthetic, or the checkpoint's data")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", type=_path, default=None, help="figure path (.png/.pdf/.svg; default ./propagation.png)")
    q.add_argument("--eval-mode", action="store_true", help="BN running statistics instead of batch statistics")
    q.set_defaults(func=_cmd_analyze_propagation)

    p = sub.add_parser("data", help="data sets: fetch CIFAR-10/100 (what --data cifar10 with no path uses)")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    q = dsub.add_parser("fetch", help="download and verify the python-version archive (kept cached)")
    q.add_argument("name", choices=["cifar10", "cifar100"])
    q.add_argument("--dir", type=_path, default=None, help="download into this folder (default: the data cache, "
                   "$RESNETLAB_CACHE/downloads or ~/.cache/resnetlab/downloads)")
    q.set_defaults(func=_cmd_data_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "predict" and not any(a.startswith("-") for a in extra):
        args.images += extra  # `predict RUN --best IMG`: images after an option are still images
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ResnetlabError as exc:
        sys.stderr.write(f"{PROG}: error: {_printable(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    except OSError as exc:  # a path the OS refuses where no reader words it (name too long, a loop...)
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"{PROG}: error: {_printable(str(where)[:300])}{exc.strerror or exc}\n")
        return 2

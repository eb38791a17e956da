"""The command line's grammar: one function per command adds its arguments; the parser's errors are one line.

One meaning per flag across commands (tests/test_cli_grammar.py walks the parser and checks it): `-o/--out`
is what a command writes (a file or a folder), `--override KEY=VALUE` a spec field, `--set SECTION.KEY=VALUE`
a config field, `RUN_OR_WEIGHTS` a run directory, checkpoint or weights file, `--json` a report as JSON on
stdout, `--device` where a net runs. The exit codes are `errors.EXIT_CODES`, shown in `--help`."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable
from typing import Any, NoReturn

from resnetlab.cli import analyze, commands
from resnetlab.errors import EXIT_CODES, printable
from resnetlab.version import __version__

PROG = "resnetlab"
RUN_OR_WEIGHTS = "RUN_OR_WEIGHTS"  # the one name of "a run directory, checkpoint or weights file"
_SOURCE_HELP = ("a run directory (its newest checkpoint that verifies), a checkpoint or a weights file "
                "(.safetensors, a pytorch_resnet_cifar10 .th, a torchvision-style state_dict)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, as every other bad input
        sys.stderr.write(f"{self.prog}: error: {printable(message)} (see --help)\n")
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


def build_parser() -> argparse.ArgumentParser:
    codes = ["exit codes:"]  # `errors.EXIT_CODES`, as the epilog of `resnetlab --help`
    for code, meaning in EXIT_CODES:
        codes += textwrap.wrap(meaning, 100, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
    parser = _Parser(prog=PROG, description="Deep residual networks of He et al. (2016): build, train, study.",
                     epilog="\n".join(codes), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                help="what to do (resnetlab COMMAND --help for its options)")
    for add in (_add_models, _add_info, _add_train, _add_eval, _add_experiment, _add_export, _add_predict,
                _add_report, _add_analyze, _add_data):
        add(sub)
    return parser


# ---- the arguments several commands share, spelled once ----------------------------------------------------
def _add_out(p: Any, what: str, *, old: tuple[str, ...] = (), required: bool = False) -> None:
    """`-o/--out`: what the command writes (`old`: the spelling it had before, still accepted)."""
    p.add_argument("-o", "--out", *old, dest="out", type=_path, default=None, required=required, help=what)


def _add_json(p: Any, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout, and nothing else there")


def _add_device(p: Any, default: str | None, what: str) -> None:
    p.add_argument("--device", default=default, help=f"where {what}: auto, cpu, cuda, cuda:N (default: "
                   f"{default or 'auto'}{', the same numbers on every machine' if default == 'cpu' else ''})")


def _add_override(p: Any, what: str) -> None:
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help=f"a spec field of {what}, e.g. shortcut=dropout; repeatable")


def _add_set(p: Any, what: str) -> None:
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", dest="overrides",
                   help=f"{what}, e.g. optim.lr=0.05 or model.shortcut=dropout; repeatable")


def _add_source(p: Any) -> None:
    """The net a command uses: RUN_OR_WEIGHTS (positional) or --weights, --model and --best."""
    p.add_argument("source", nargs="?", type=_path, default=None, metavar=RUN_OR_WEIGHTS, help=_SOURCE_HELP)
    _add_weights_options(p)


def _add_weights_options(p: Any) -> None:
    p.add_argument("--weights", metavar="FILE", type=_path, default=None,
                   help="a weights file instead of the positional (any format eval reads)")
    p.add_argument("--model", default=None, help="the registry model a foreign weights file is loaded into "
                   "(default: what the file says; fails unless a run's checkpoint is this model)")
    p.add_argument("--best", action="store_true", help="a run directory's best.pt, not its newest checkpoint")


def _input_size(p: Any) -> None:
    p.add_argument("--input-size", type=int, default=None, metavar="PIXELS",
                   help="input side for multiply-adds and output sizes (default: the net's, 32 or 224)")


# ---- the commands -------------------------------------------------------------------------------------------
def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list the registry: depth, parameters, multiply-adds, paper table")
    p.add_argument("--filter", default="", help="only names containing this text")
    _input_size(p)
    _add_json(p, "the table's rows")
    p.set_defaults(func=commands.cmd_models)


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="one model unit by unit")
    p.add_argument("name", help="registry name, e.g. resnet110")
    _add_override(p, "the net")
    _input_size(p)
    _add_json(p, "the spec's fields, the units' rows and the totals")
    p.set_defaults(func=commands.cmd_info)


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model with a recipe; writes a run directory")
    p.add_argument("--model", default=None, help="registry name (default: preact_resnet20)")
    p.add_argument("--data", default=None, help="digits (default), synthetic[:N], cifar10[:PATH], cifar100[:PATH] "
                   "(no PATH: downloaded once into the data cache), folder:PATH, imagenet:PATH")
    p.add_argument("--recipe", type=_name, default=None,
                   help="cifar, imagenet, digits, or a .toml file (default: by data)")
    p.add_argument("--epochs", type=float, default=None, help="budget in epochs (milestones keep their fractions)")
    p.add_argument("--iters", type=int, default=None, help="budget in iterations")
    _add_out(p, "run directory (default: runs/MODEL-DATA-TIME)")
    _add_device(p, None, "it trains")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (default: the recipe's, 0)")
    p.add_argument("--val-split", type=int, default=None, metavar="N",
                   help="hold out N training images for validation; the best epoch is chosen on them (paper: 5000)")
    _add_set(p, "override any config field")
    _add_json(p, "the run directory, its figure and its summary (what summary.json holds) at the end")
    p.add_argument("--resume", metavar="RUN_DIR", type=_path, default=None,
                   help="continue a run directory from its newest checkpoint")
    p.add_argument("--init", metavar=RUN_OR_WEIGHTS, type=_path, default=None,
                   help="start from the weights (and input normalisation) of " + _SOURCE_HELP)
    p.set_defaults(func=commands.cmd_train)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 test error of a run directory, checkpoint or weights file")
    _add_source(p)
    p.add_argument("--data", default=None, help="data to evaluate on (default: the run's)")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="test (default) or val (the run's --val-split images)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    _add_device(p, "auto", "the net runs")
    _add_json(p, "the result (error, top5_error, loss, images, data, path, model, claimed_error)")
    p.set_defaults(func=commands.cmd_eval)


def _add_experiment(sub: Any) -> None:
    p = sub.add_parser("experiment", help="run a paper experiment suite (or 'list' them)")
    p.add_argument("suite", help="degradation, depth, shortcuts, activations, preact, options, a .toml, or list")
    p.add_argument("--data", default=None, help="data source (required at paper and cpu scale; small: digits)")
    p.add_argument("--seeds", type=int, default=1, help="runs per member (seeds 0..K-1)")
    p.add_argument("--add-seeds", action="store_true",
                   help="an --out made with fewer --seeds: train the added seeds into it (the rest of the call "
                        "must be the one that made it); without this, another call on an --out is refused")
    p.add_argument("--epochs", type=float, default=None, help="budget per run in epochs")
    p.add_argument("--iters", type=int, default=None, help="budget per run in iterations")
    p.add_argument("--scale", choices=["paper", "cpu", "small"], default="paper",
                   help="cpu: CIFAR-10 with shallower nets and 2 epochs (one 2-core CPU); small: shallower nets "
                        "and a short budget on digits (checks the mechanism)")
    _add_out(p, "suite directory (default: experiments/SUITE-SCALE)")
    _add_device(p, None, "the members train")
    p.add_argument("--only", nargs="+", metavar="MEMBER", default=None,
                   help="train only these members (label or slug); the results table lists all")
    p.add_argument("--no-results", action="store_true",
                   help="train only; leave results.md/csv and the figures to a later run (parallel members)")
    _add_set(p, "config override for every member")
    _add_json(p, "the results rows and the ranking's Kendall tau (the suites, with list)")
    _add_suite_jobs(p)
    p.set_defaults(func=commands.cmd_experiment)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="a trained net as safetensors, ONNX or a torch.export program (.pt2)")
    _add_source(p)
    p.add_argument("--format", required=True, choices=["safetensors", "onnx", "pt2"],
                   help="safetensors (weights, spec, classes, normalisation), onnx or pt2 (the eval graph)")
    _add_out(p, "file to write", old=("--output",), required=True)
    _add_device(p, "cpu", "the graph check runs the net (the file is written from a CPU float32 copy)")
    _add_json(p, "what was written (format, path, bytes, the check's largest difference)")
    p.set_defaults(func=commands.cmd_export)


def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="top-k classes of image files with a trained net")
    p.add_argument("images", nargs="+", metavar=f"[{RUN_OR_WEIGHTS}] IMAGE_OR_FOLDER",
                   help=f"{_SOURCE_HELP} (unless --weights), then images or folders of images")
    _add_weights_options(p)
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image (default 5)")
    _add_device(p, "cpu", "the net runs")
    _add_json(p, "one object per image")
    p.set_defaults(func=commands.cmd_predict)


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page from run and suite directories")
    p.add_argument("dirs", nargs="+", type=_path, metavar="RUN_OR_SUITE_DIR", help="run and suite directories")
    _add_out(p, "the HTML file to write (default: report.html)", old=("--output",))
    p.set_defaults(func=commands.cmd_report)


def _add_analyze(sub: Any) -> None:
    p = sub.add_parser("analyze", help="analyses of a network (v2 sec. 3)")
    asub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", parser_class=_Parser, required=True,
                            help="which analysis")
    q = asub.add_parser("propagation", help="forward signal and gradient norm per residual unit (v2 eq. 4-7)")
    q.add_argument("--model", action="append", metavar="NAME", help="registry model at init (repeatable)")
    _add_override(q, "every --model")
    q.add_argument("--checkpoint", metavar=RUN_OR_WEIGHTS, type=_path, default=None,
                   help="add a trained model (uses its data): " + _SOURCE_HELP)
    q.add_argument("--data", default=None, help="default: synthetic, or the checkpoint's data")
    q.add_argument("--batch-size", type=int, default=64, help="images in the one test batch (default 64)")
    q.add_argument("--seed", type=int, default=0, help="seed of the nets' init and of dropout (default 0)")
    _add_out(q, "figure path (.png/.pdf/.svg; default ./propagation.png)")
    q.add_argument("--eval-mode", action="store_true", help="BN running statistics instead of batch statistics")
    _add_json(q, "each net's rows per unit and its summary ratios, and the figure's path")
    q.set_defaults(func=analyze.cmd_propagation)


def _add_data(sub: Any) -> None:
    p = sub.add_parser("data", help="data sets: fetch CIFAR-10/100 (what --data cifar10 with no path uses)")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True,
                            help="what to do with the data sets")
    q = dsub.add_parser("fetch", help="download and verify the python-version archive (kept cached)")
    q.add_argument("name", choices=["cifar10", "cifar100"], help="the data set: cifar10 or cifar100")
    _add_out(q, "download into this folder (default: the data cache, $RESNETLAB_CACHE/downloads or "
             "~/.cache/resnetlab/downloads)", old=("--dir",))
    q.add_argument("--mirror", default=None, metavar="URL", help="fetch URL/ARCHIVE-NAME instead of the CIFAR page "
                   "(default: $RESNETLAB_DATA_MIRROR); still checked against the published MD5")
    _add_json(q, "the archive's path, MD5 and SHA-256")
    q.set_defaults(func=commands.cmd_data_fetch)


def _add_suite_jobs(p: Any) -> None:
    """The `experiment` command's options for many processes (`experiments/jobs.py`) and machines (Slurm through
    submitit, `experiments/slurm.py`)."""
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train up to N members (or seeds) at once, each in its own process (CPU: the cores "
                        "split between them; GPUs: one device each, in turn, of --devices)")
    p.add_argument("--devices", nargs="+", default=None, metavar="DEV",
                   help="devices of the jobs: cuda:0 cuda:1 ..., all (every GPU), or cpu (default: --device, "
                        "else every GPU, else the CPU)")
    p.add_argument("--collect", action="store_true",
                   help="train nothing: write the results of whatever has finished (others may be training)")
    p.add_argument("--trainings", default=None, metavar="DIR",
                   help="index of trainings shared by suites, so an identical member is trained once "
                        "(default: .trainings beside --out)")
    g = p.add_argument_group("many machines (Slurm, through submitit)")
    g.add_argument("--launcher", choices=["here", "slurm", "submitit-local"], default="here",
                   help="here (default): this process is a worker; slurm: submit --workers tasks, each a "
                        "worker; submitit-local: the same tasks on this machine (submitit's local executor)")
    g.add_argument("--workers", type=int, default=1, metavar="K", help="Slurm tasks (a job array), each a worker")
    g.add_argument("--partition", default=None, help="the Slurm partition (default: the cluster's)")
    g.add_argument("--time", default="240", help="each task's time limit: MINUTES or H:MM:SS (default 240); "
                   "a task that reaches it checkpoints and is requeued")
    g.add_argument("--gpus-per-worker", type=int, default=None, metavar="G",
                   help="GPUs of each task (give --jobs G to train one member on each)")
    g.add_argument("--cpus-per-worker", type=int, default=None, metavar="C", help="CPU cores of each task")
    g.add_argument("--mem-gb", type=int, default=None, metavar="GB", help="memory of each task in GiB")
    g.add_argument("--account", default=None, help="the Slurm account to charge")
    g.add_argument("--qos", default=None, help="the Slurm quality of service")
    g.add_argument("--constraint", default=None, help="the Slurm node features required")
    g.add_argument("--setup", action="append", default=None, metavar="CMD",
                   help="a shell line run before each task (e.g. 'module load cuda'); repeatable")
    g.add_argument("--sbatch", action="append", default=None, metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --sbatch mail-type=END; repeatable")
    g.add_argument("--requeues", type=int, default=10, metavar="R",
                   help="how many times a task may be requeued after its time limit (default 10)")
    g.add_argument("--local-signal-delay", type=int, default=None, help=argparse.SUPPRESS)  # seconds
    g.add_argument("--dry-run", action="store_true",
                   help="print what would be submitted (#SBATCH options, set-up lines, task command); submit nothing")
    g.add_argument("--wait", action="store_true", help="wait for the tasks to end, then report")

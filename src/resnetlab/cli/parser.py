"""The command line's grammar: one function per command adds its arguments; the parser's errors are one line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from resnetlab.cli import analyze, commands
from resnetlab.cli.commands import printable

PROG = "resnetlab"


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
    parser = _Parser(prog=PROG, description="Deep residual networks of He et al. (2016): build, train, study.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_models(sub)
    _add_info(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_experiment(sub)
    _add_export(sub)
    _add_predict(sub)
    _add_report(sub)
    _add_analyze(sub)
    _add_data(sub)
    return parser


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list the registry: depth, parameters, multiply-adds, paper table")
    p.add_argument("--filter", default="", help="only names containing this text")
    p.add_argument("--input-size", type=int, default=None, help="input side for multiply-adds (default: 32/224)")
    p.set_defaults(func=commands.cmd_models)


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="one model unit by unit")
    p.add_argument("name", help="registry name, e.g. resnet110")
    p.add_argument("--override", "-o", action="append", metavar="K=V", help="spec field, e.g. shortcut=dropout")
    p.add_argument("--input-size", type=int, default=None)
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
    p.set_defaults(func=commands.cmd_train)


def _add_eval(sub: Any) -> None:
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
    p.add_argument("--out", type=_path, default=None, help="suite directory (default: experiments/SUITE-SCALE)")
    p.add_argument("--device", default=None)
    p.add_argument("--only", nargs="+", metavar="MEMBER", default=None,
                   help="train only these members (label or slug); the results table lists all")
    p.add_argument("--no-results", action="store_true",
                   help="train only; leave results.md/csv and the figures to a later run (parallel members)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="config override for every member")
    _add_suite_jobs(p)  # --jobs, --devices, --collect, --trainings, --launcher and Slurm's options
    p.set_defaults(func=commands.cmd_experiment)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="a trained net as safetensors, ONNX or a torch.export program (.pt2)")
    p.add_argument("source", nargs="?", type=_path, default=None, help="run directory or checkpoint file")
    p.add_argument("--weights", metavar="FILE", type=_path, default=None,
                   help="a weights file instead (any format eval reads)")
    p.add_argument("--model", default=None, help="registry model the weights are for (foreign files)")
    p.add_argument("--best", action="store_true", help="a run directory's best.pt, not its newest checkpoint")
    p.add_argument("--format", required=True, choices=["safetensors", "onnx", "pt2"])
    p.add_argument("-o", "--output", type=_path, required=True, help="file to write")
    p.set_defaults(func=commands.cmd_export)


def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="top-k classes of image files with a trained net")
    p.add_argument("images", nargs="+", metavar="[RUN_DIR] IMAGE_OR_FOLDER",
                   help="a run directory or checkpoint (unless --weights), then images or folders of images")
    p.add_argument("--weights", metavar="FILE", type=_path, default=None,
                   help="a weights file (.safetensors, .pt, ...)")
    p.add_argument("--model", default=None, help="registry model the weights are for (foreign files)")
    p.add_argument("--best", action="store_true", help="a run directory's best.pt, not its newest checkpoint")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="JSON: one object per image")
    p.set_defaults(func=commands.cmd_predict)


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page from run and suite directories")
    p.add_argument("dirs", nargs="+", type=_path, metavar="RUN_OR_SUITE_DIR")
    p.add_argument("-o", "--output", type=_path, default="report.html")
    p.set_defaults(func=commands.cmd_report)


def _add_analyze(sub: Any) -> None:
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
    q.set_defaults(func=analyze.cmd_propagation)


def _add_data(sub: Any) -> None:
    p = sub.add_parser("data", help="data sets: fetch CIFAR-10/100 (what --data cifar10 with no path uses)")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    q = dsub.add_parser("fetch", help="download and verify the python-version archive (kept cached)")
    q.add_argument("name", choices=["cifar10", "cifar100"])
    q.add_argument("--dir", type=_path, default=None, help="download into this folder (default: the data cache, "
                   "$RESNETLAB_CACHE/downloads or ~/.cache/resnetlab/downloads)")
    q.add_argument("--mirror", default=None, metavar="URL", help="fetch URL/ARCHIVE-NAME instead of the CIFAR page "
                   "(default: $RESNETLAB_DATA_MIRROR); still checked against the published MD5")
    q.set_defaults(func=commands.cmd_data_fetch)


def _add_suite_jobs(p: Any) -> None:
    """The `experiment` command's options for many processes (`experiments/jobs.py`) and machines (`slurm.py`)."""
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
    _add_launcher(p)




def _add_launcher(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("many machines (Slurm, through submitit)")
    g.add_argument("--launcher", choices=["here", "slurm", "submitit-local"], default="here",
                   help="here (default): this process is a worker; slurm: submit --workers tasks, each a "
                        "worker; submitit-local: the same tasks on this machine (submitit's local executor)")
    g.add_argument("--workers", type=int, default=1, metavar="K", help="Slurm tasks (a job array), each a worker")
    g.add_argument("--partition", default=None)
    g.add_argument("--time", default="240", help="each task's time limit: MINUTES or H:MM:SS (default 240); "
                   "a task that reaches it checkpoints and is requeued")
    g.add_argument("--gpus-per-worker", type=int, default=None, metavar="G",
                   help="GPUs of each task (give --jobs G to train one member on each)")
    g.add_argument("--cpus-per-worker", type=int, default=None, metavar="C")
    g.add_argument("--mem-gb", type=int, default=None, metavar="GB")
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--setup", action="append", default=None, metavar="CMD",
                   help="a shell line run before each task (e.g. 'module load cuda'); repeatable")
    g.add_argument("--sbatch", action="append", default=None, metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --sbatch mail-type=END; repeatable")
    g.add_argument("--requeues", type=int, default=10, metavar="R",
                   help="how many times a task may be requeued after its time limit (default 10)")
    g.add_argument("--local-signal-delay", type=int, default=None, help=argparse.SUPPRESS)  # seconds
    g.add_argument("--dry-run", action="store_true", help="print the sbatch script and submit nothing")
    g.add_argument("--wait", action="store_true", help="wait for the tasks to end, then report")

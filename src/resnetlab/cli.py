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

PROG = "resnetlab"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, as every other bad input
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _cmd_models(args: argparse.Namespace) -> int:
    from .describe import format_table, zoo_rows

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

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Commands defined in their own modules add themselves here (train, eval, ...).
_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ResnetlabError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0

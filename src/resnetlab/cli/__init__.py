"""The `resnetlab` command: a thin layer that parses arguments and calls the library.

Every error a user can cause is a `ResnetlabError`: printed as one line on stderr, exit code 2; the exit codes
are the table `errors.EXIT_CODES` (shown by `resnetlab --help`). `parser.py` is the grammar, `commands.py` and
`analyze.py` the commands' bodies.

May import: errors, version, files, networks, data, runs, settings, weights, training, experiments, api.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from resnetlab.cli.parser import PROG, build_parser
from resnetlab.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ResnetlabError, printable


def main(argv: Sequence[str] | None = None) -> int:
    """Run `resnetlab ARGV`; the exit code (`errors.EXIT_CODES`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "predict" and not any(a.startswith("-") for a in extra):
        args.images += extra  # `predict RUN --best IMG`: images after an option are still images
    elif extra:
        hint = ("; -o/--out is what a command writes, and this one writes nothing (a spec field is --override "
                "KEY=VALUE)" if "-o" in extra else "")
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except ResnetlabError as exc:
        sys.stderr.write(f"{PROG}: error: {printable(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    except OSError as exc:  # a path the OS refuses where no reader words it (name too long, a loop...)
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"{PROG}: error: {printable(str(where)[:300])}{exc.strerror or exc}\n")
        return EXIT_BAD_INPUT

"""Errors a user can cause and fix (the CLI prints them as one line and exits with code 2), the command's exit
codes (`EXIT_CODES`, the one table `resnetlab --help`, the README and the tests read), and the two helpers that
make any text fit for a message: `one_line` and `printable`."""

from __future__ import annotations

import unicodedata

EXIT_OK = 0
EXIT_SUITE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3
EXIT_DIVERGED = 4
EXIT_INTERRUPTED = 130

# every exit code of `resnetlab`, with what it means (plain text: shown as is by --help and in README's table)
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success; an experiment whose members diverged included (a divergence is one of its results)"),
    (EXIT_SUITE_FAILED, "an experiment with failed members: the others ran and were reported, the same command "
                        "retries the failed ones"),
    (EXIT_BAD_INPUT, "bad input: one line on stderr says what and where"),
    (EXIT_STOPPED, "stopped by SIGTERM or SIGINT: a checkpoint was written; train --resume RUN (an experiment: the "
                   "same command) resumes"),
    (EXIT_DIVERGED, "train: the training diverged (a NaN or Inf loss); summary.json records it"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C) outside a training"),
)


# characters that forge, hide or reorder a line of output when a name holding them is printed: controls (\n,
# \r, ESC ...), lone surrogates (undecodable file-name bytes), line and paragraph separators, and the bidi
# overrides and isolates. Joiners and marks that scripts need (ZWJ, ZWNJ, LRM) are not among them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe_char(ch: str) -> bool:
    """Whether `ch` could forge or hide output when printed (see `_BIDI_CONTROLS`)."""
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI_CONTROLS


def printable(text: str) -> str:
    """`text` with every unsafe character escaped (`\\n`, `\\x1b`, `\\u202e`, `\\udcff`)."""
    return "".join(repr(ch)[1:-1] if unsafe_char(ch) else ch for ch in text)


def one_line(exc: BaseException | str, limit: int = 200) -> str:
    """An exception (or text) as one line for a message: its first line that is not blank, spaces collapsed,
    cut to `limit` characters; the exception's type where it says nothing (`MemoryError()`). Never raises."""
    try:
        text = exc if isinstance(exc, str) else str(exc)
    except Exception:  # noqa: BLE001 - a __str__ that raises still gets its type named
        text = ""
    first = next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")
    if not first:
        first = type(exc).__name__ if not isinstance(exc, str) else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


class ResnetlabError(Exception):
    """Base class for every error caused by bad input (names, configs, paths, files)."""

    exit_code = EXIT_BAD_INPUT


class SpecError(ResnetlabError, ValueError):
    """An invalid network specification; the message names the bad field."""


class ConfigError(ResnetlabError, ValueError):
    """An invalid recipe, config file or command-line override."""


class DataError(ResnetlabError):
    """A missing, unreadable or malformed data set; the message names the file."""


class CheckpointError(ResnetlabError):
    """A missing, corrupt, untrusted or mismatched checkpoint."""


class RunDirError(ResnetlabError):
    """A run directory that cannot be used (exists, locked, not a run)."""

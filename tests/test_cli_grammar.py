"""One grammar for the command line (issue 31, part 3): the parser is walked, every command and subcommand,
and each rule is checked on each, so a new command cannot break one. A fake parser that breaks each rule
shows the checks can fail."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.cli.parser import RUN_OR_WEIGHTS, build_parser
from resnetlab.errors import EXIT_CODES, EXIT_DIVERGED, EXIT_STOPPED, EXIT_SUITE_FAILED, ResnetlabError
from resnetlab.version import __version__

README = Path(__file__).resolve().parents[1] / "README.md"

# every command, with what it does: "reports" (prints a result: --json), "runs" (runs a net: --device). A new
# command must be added here, which asks the question; analyze propagation runs its nets on the CPU only (the
# API's propagation() takes no device), report writes an HTML page (its report is that file).
COMMANDS: dict[str, set[str]] = {
    "models": {"reports"}, "info": {"reports"}, "train": {"reports", "runs"}, "eval": {"reports", "runs"},
    "experiment": {"reports", "runs"}, "export": {"reports", "runs"}, "predict": {"reports", "runs"},
    "report": set(), "analyze propagation": {"reports"}, "data fetch": {"reports"},
}
HIDDEN = {"--local-signal-delay"}  # internal (tests of the submitit executor), deliberately out of --help
OUT_ALIASES = {"--output", "--dir"}  # the spellings export/report (--output) and data fetch (--dir) had
# the metavars that name a run, checkpoint or weights file: one for each meaning
SOURCE_NAMES = {RUN_OR_WEIGHTS, f"[{RUN_OR_WEIGHTS}] IMAGE_OR_FOLDER", "RUN_DIR", "RUN_OR_SUITE_DIR"}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (command, parser) under `parser`, recursively ('' is the top)."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def leaves(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The commands that do something (no subcommands of their own)."""
    return {name: p for name, p in walk(parser) if name and not any(
        isinstance(a, argparse._SubParsersAction) for a in p._actions)}


def problems(name: str, parser: argparse.ArgumentParser, kinds: set[str]) -> list[str]:
    """Every rule `parser` (the command `name`, doing `kinds`) breaks."""
    found: list[str] = []
    flags = {s for a in parser._actions for s in a.option_strings}
    for a in parser._actions:
        shown = "/".join(a.option_strings) or a.dest
        if not a.help or (a.help == argparse.SUPPRESS and not HIDDEN & set(a.option_strings)):
            found.append(f"{name}: {shown} has no help")
        spellings = set(a.option_strings)
        is_out = bool(spellings & {"-o", "--out", *OUT_ALIASES}) or a.dest == "out"
        odd = spellings - {"-o", "--out"} - OUT_ALIASES
        if is_out and (not {"-o", "--out"} <= spellings or a.dest != "out" or odd):
            found.append(f"{name}: {shown} (dest {a.dest}): -o/--out is the output and only that")
        if "--override" in spellings and (a.option_strings != ["--override"] or a.metavar != "KEY=VALUE"):
            found.append(f"{name}: {shown}: a spec field is --override KEY=VALUE, spelled so alone")
        if "--set" in spellings and (a.option_strings != ["--set"] or a.metavar != "SECTION.KEY=VALUE"):
            found.append(f"{name}: {shown}: a config field is --set SECTION.KEY=VALUE, spelled so alone")
        names_a_net = a.dest in ("source", "checkpoint", "run", "run_dir", "init") or \
            re.search(r"RUN|CHECKPOINT|CKPT", str(a.metavar or ""))
        if names_a_net and a.metavar not in SOURCE_NAMES:
            found.append(f"{name}: {shown}: named {a.metavar!r}, not one of {sorted(SOURCE_NAMES)}")
    if "--weights" in flags and not any(RUN_OR_WEIGHTS in str(a.metavar) for a in parser._actions
                                        if not a.option_strings):
        found.append(f"{name}: takes --weights but no {RUN_OR_WEIGHTS} positional")
    if "reports" in kinds and "--json" not in flags:
        found.append(f"{name}: reports something but has no --json")
    if "runs" in kinds and "--device" not in flags:
        found.append(f"{name}: runs a net but has no --device")
    return found


def test_every_command_follows_the_grammar() -> None:
    parser = build_parser()
    commands = leaves(parser)
    assert len(commands) >= 10 and {"data fetch", "analyze propagation"} <= set(commands)
    assert set(commands) == set(COMMANDS), "a command was added or removed: classify it in COMMANDS"
    options = sum(len(p._actions) for _, p in walk(parser))
    assert options >= 100  # the walk saw the options, not only the commands
    found = [f for name, p in walk(parser) for f in problems(name or "resnetlab", p, COMMANDS.get(name, set()))]
    assert not found, "\n".join(found)
    for name, p in walk(parser):  # every --help renders (a stray % in a help text would raise here)
        assert p.format_help().startswith(f"usage: resnetlab {name}".rstrip()), name


def test_the_checks_catch_a_parser_that_breaks_each_rule() -> None:
    bad = argparse.ArgumentParser(prog="fake")
    bad.add_argument("checkpoint", metavar="CKPT")  # no help, another name for RUN_OR_WEIGHTS
    bad.add_argument("--weights")
    bad.add_argument("-o", "--override", action="append", help="a spec field")  # -o that is not the output
    bad.add_argument("--out", help="the output, without -o")
    bad.add_argument("--set", "-s", help="a config field, spelled twice")
    found = problems("fake", bad, {"reports", "runs"})
    for needle in ("checkpoint has no help", "named 'CKPT'", "no RUN_OR_WEIGHTS positional",
                   "-o/--override (dest override): -o/--out is the output", "--out (dest out)",
                   "--set/-s: a config field", "has no --json", "has no --device"):
        assert any(needle in f for f in found), (needle, found)
    assert problems("fine", argparse.ArgumentParser(prog="fine", add_help=False), set()) == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"resnetlab {__version__}"


def _help_codes(text: str) -> list[tuple[int, str]]:
    """The exit-code table of `resnetlab --help`'s epilog, each meaning's wrapped lines joined."""
    rows: list[tuple[int, str]] = []
    for line in text.partition("exit codes:\n")[2].splitlines():
        head = re.match(r"  (\d+)\s+(.*)", line)
        if head:
            rows.append((int(head[1]), head[2].strip()))
        elif line.strip() and rows:
            rows[-1] = (rows[-1][0], f"{rows[-1][1]} {line.strip()}")
    return rows


def _readme_codes() -> list[tuple[int, str]]:
    text = README.read_text().partition("## Exit codes")[2]
    return [(int(m[1]), m[2].strip()) for m in re.finditer(r"^\| (\d+) \| (.*) \|$", text, re.M)]


def test_exit_codes_are_one_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    table = [(code, " ".join(meaning.split())) for code, meaning in EXIT_CODES]
    assert _help_codes(capsys.readouterr().out) == table
    assert _readme_codes() == table
    assert [c for c, _ in table] == sorted({c for c, _ in table}) and len(table) >= 6
    from resnetlab.experiments.suite import SuiteFailed, SuiteStopped

    assert (ResnetlabError.exit_code, SuiteFailed.exit_code, SuiteStopped.exit_code) == \
        (2, EXIT_SUITE_FAILED, EXIT_STOPPED)


def test_old_spellings_still_run_and_o_is_never_an_override(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["export", "r", "--format", "onnx", "--output", "x.onnx"])
    assert (args.source, args.out) == ("r", "x.onnx")
    assert build_parser().parse_args(["data", "fetch", "cifar10", "--dir", "d"]).out == "d"
    assert build_parser().parse_args(["report", "r", "-o", "a.html"]).out == "a.html"
    with pytest.raises(SystemExit) as done:
        main(["info", "resnet20", "-o", "units=5"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "--override KEY=VALUE" in err and len(err.strip().splitlines()) == 1
    assert main(["info", "resnet20", "--override", "depth=14", "--override", "units=[2,2,2]"]) == 0
    assert "total: 6 units" in capsys.readouterr().out


def _json(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 0) -> object:
    assert main(argv) == code
    return json.loads(capsys.readouterr().out)  # stdout is the JSON and nothing else (strict: no NaN)


def test_json_reports(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(["models", "--filter", "resnet20", "--json"], capsys)
    assert {r["name"] for r in rows} >= {"resnet20", "preact_resnet20"}
    assert next(r for r in rows if r["name"] == "resnet20")["params"] == 269722
    info = _json(["info", "resnet20", "--override", "shortcut=conv1x1", "--json"], capsys)
    assert info["spec"]["shortcut"] == "conv1x1" and len(info["units"]) == 9 and info["total"]["units"] == 9
    suites = _json(["experiment", "list", "--json"], capsys)
    assert "degradation" in {s["name"] for s in suites}


def test_a_diverged_training_has_its_own_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    done = _json(["train", "--iters", "20", "-o", str(out), "--set", "optim.lr=1e30", "--json"], capsys,
                 code=EXIT_DIVERGED)
    assert done["summary"]["diverged"] and done["run"] == str(out)
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_eval_json_and_predict_on_a_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--iters", "2", "-o", str(out), "--set", "optim.batch_size=32"]) == 0
    capsys.readouterr()
    result = _json(["eval", str(out), "--json"], capsys)
    assert set(result) >= {"error", "top5_error", "loss", "images", "data", "path", "model", "claimed_error",
                           "split"} and result["images"] == 360 and 0 <= result["error"] <= 1
    assert "skipped" not in result  # a note on stderr, as without --json
    st = tmp_path / "w.safetensors"
    written = _json(["export", str(out), "--format", "safetensors", "--out", str(st), "--device", "cpu", "--json"],
                    capsys)
    assert written["path"] == str(st) and written["bytes"] == st.stat().st_size
    assert main(["predict", str(out), str(tmp_path), "--device", "tpu:0"]) == 2  # refused in one line
    assert "tpu:0" in capsys.readouterr().err


def test_experiment_json_is_the_rows_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text('title = "tiny"\nmembers = [\n  { label = "a", model = "resnet20", small = { depth = 8 } },\n'
                     '  { label = "b", model = "plain20", small = { depth = 8 } },\n]\n')
    done = _json(["experiment", str(suite), "--scale", "small", "--iters", "2", "-o", str(tmp_path / "out"),
                  "--set", "run.threads=1", "--json"], capsys)  # the members' log lines went to stderr
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert done["rows"] == saved and [r["member"] for r in done["rows"]] == ["a", "b"] and "kendall_tau" in done

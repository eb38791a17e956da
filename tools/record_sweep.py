"""Every field of every record a run and a suite write, set to each of a few shapes or taken out, under each
command that reads it back; each case judged as the fuzzer judges (docs/reliability.md, "Records read back").

    python tools/record_sweep.py --out results/fuzz/record-sweep.json      # every record, fields to depth 3
    python tools/record_sweep.py --records suite/suite.json --depth 1       # one record's top-level fields
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's top level holds the tests.fuzz package
    sys.path.insert(0, str(ROOT))

from tests.fuzz.args import DELETE, RUN_COMMANDS, read_record  # noqa: E402
from tests.fuzz.common import SUITE_ARGS, template_run, template_suite  # noqa: E402
from tests.fuzz.core import Case  # noqa: E402
from tests.fuzz.running import run_case  # noqa: E402

SHAPES = (None, 5, "x", [1], {}, True, -1, 1e308, {"k": [None]}, DELETE)
_AGAIN = ["experiment", "{root}/s.toml", *SUITE_ARGS, "--out", "{root}/suite"]
SUITE_COMMANDS = [_AGAIN, [*_AGAIN, "--collect"], ["report", "{root}/suite", "-o", "{root}/r.html"]]
# (the case's family, whose set-up step patches the record; the commands that read it back)
RECORDS: dict[str, tuple[str, list[list[str]]]] = {
    **{name: ("config", RUN_COMMANDS) for name in ("config.json", "summary.json", "metrics.jsonl")},
    **{name: ("suite", SUITE_COMMANDS) for name in (
        "suite/suite.json", "suite/results.json", "suite/a/seed0/config.json", "suite/a/seed0/summary.json",
        "suite/a/seed0/metrics.jsonl", ".trainings/KEY.json")},  # KEY.json: the suite's training in the index
}


def fields(doc: Any, depth: int, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """The place of every field of `doc` to `depth` levels, as the child indices `_patch` walks."""
    if len(prefix) == depth or not isinstance(doc, dict | list):
        return []
    children = list(doc.values()) if isinstance(doc, dict) else doc
    return [p for i, child in enumerate(children) for p in [(*prefix, i), *fields(child, depth, (*prefix, i))]]


def cases(records: list[str], depth: int) -> list[Case]:
    """One case per record, field, shape and command."""
    out = []
    for name in records:
        family, commands = RECORDS[name]
        folder, step = (template_run(), "patch") if family == "config" else (template_suite(), "suite")
        path = folder / name if name != ".trainings/KEY.json" else next((folder / ".trainings").glob("*.json"))
        doc = read_record(path)
        writable = ("suite", ".trainings", "r.html") if family == "suite" else None
        out += [Case(family, cmd, writable=writable, steps=((step, str(path.relative_to(folder)), walk, shape),))
                for walk in fields(doc, depth) for shape in SHAPES for cmd in commands]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", nargs="+", choices=sorted(RECORDS), default=list(RECORDS))
    parser.add_argument("--depth", type=int, default=3, help="how deep into each record (1: its top-level fields)")
    parser.add_argument("--out", default=None, help="write the counts and findings here (JSON)")
    args = parser.parse_args(argv)
    start, counts, findings = time.monotonic(), {}, []
    for case in cases(args.records, args.depth):
        with tempfile.TemporaryDirectory(prefix="resnetlab-sweep-") as tmp:
            outcome = run_case(case, Path(tmp))
        step = case.steps[0]
        tally = counts.setdefault(step[1], {"cases": 0, "exit 0": 0, "one-line error": 0, "findings": 0})
        tally["cases"] += 1
        if outcome.problem is None:
            tally["exit 0" if outcome.rc == 0 else "one-line error"] += 1
        else:
            tally["findings"] += 1
            findings.append({"record": step[1], "field": list(step[2]), "value": repr(step[3])[:60],
                             "argv": case.argv, "problem": outcome.problem})
            print(f"finding: {findings[-1]}", file=sys.stderr, flush=True)
    result = {"counts": counts, "findings": findings, "seconds": round(time.monotonic() - start)}
    print(f"{sum(c['cases'] for c in counts.values())} cases, {len(findings)} findings, {result['seconds']} s",
          file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

"""The fuzz campaign: every case of every chosen family, each distinct finding kept (docs/reliability.md).

    python tools/fuzz_campaign.py --cases 5000 --out results/fuzz/campaign.json   # every family
    python tools/fuzz_campaign.py --families killtrack --cases 50                  # one
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's top level holds the tests.fuzz package
    sys.path.insert(0, str(ROOT))

from tests.fuzz.core import Case, Outcome  # noqa: E402
from tests.fuzz.families import FAMILIES, ORDER  # noqa: E402
from tests.fuzz.running import run_case  # noqa: E402


def signature(outcome: Outcome) -> str:
    """What makes two findings the same: the message with numbers and paths blurred."""
    return re.sub(r"\d+", "N", re.sub(r"/\S+", "PATH", outcome.problem or ""))[:160]


def campaign(families: list[str], cases: int, seed: int) -> dict[str, Any]:
    """Run `cases` cases per family; every finding kept, not only the first."""
    findings: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    for family in families:
        tally = counts.setdefault(family, {"cases": 0, "exit 0": 0, "one-line error": 0, "findings": 0})
        _family_test(family, cases, seed, tally, findings)()
        print(f"{family}: {tally}", file=sys.stderr, flush=True)
    return {"counts": counts, "findings": sorted(findings.values(), key=lambda f: -f["count"])}


def _family_test(family: str, cases: int, seed: int, tally: dict[str, int],
                 findings: dict[str, dict[str, Any]]) -> Callable[[], None]:
    """A hypothesis test over one family that records each finding instead of stopping at the first."""

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(FAMILIES[family].strategy())
    def one(case: Case) -> None:
        with tempfile.TemporaryDirectory(prefix="resnetlab-fuzz-") as tmp:
            outcome = run_case(case, Path(tmp))
        tally["cases"] += 1
        if outcome.problem is None:
            tally["exit 0" if outcome.rc == 0 else "one-line error"] += 1
            return
        tally["findings"] += 1
        found = findings.setdefault(f"{family}: {signature(outcome)}", {
            "family": family, "problem": outcome.problem, "count": 0, "argv": outcome.argv,
            "files": {k: repr(v)[:300] for k, v in case.files.items()}, "steps": [repr(s)[:300] for s in case.steps]})
        found["count"] += 1

    return one


def main(argv: list[str] | None = None) -> int:
    """The command line: families, cases per family, seed, where the JSON goes; exit 1 if anything was found."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--cases", type=int, default=100, help="cases per family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the counts and findings here (JSON)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases: at least 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    result = campaign(args.families, args.cases, args.seed)
    result |= {"command": "python tools/fuzz_campaign.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "seconds": round(time.time() - started, 1), "cases_per_family": args.cases}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    total = sum(c["cases"] for c in result["counts"].values())
    print(f"{total} cases, {len(result['findings'])} distinct findings", file=sys.stderr)
    for f in result["findings"]:
        print(f"  [{f['count']}x] {f['family']}: {f['problem']}  argv={f['argv']}", file=sys.stderr)
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Running one case: its files and set-up written, the command run in-process within a time bound, and the
judge (`tests.fuzz.judge`, then the family's own `after`) asked how it ended."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from resnetlab.errors import one_line
from tests.fuzz import judge
from tests.fuzz.common import environ, template_run, working_directory
from tests.fuzz.core import FAMILIES, Case, Ended, Family, Outcome, end_case

# the categories Python's default warning filters hide from a user (outside __main__): not findings
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
TIME_BOUND_S = 120.0  # a case that takes longer is a finding (a hang or an unbounded allocation)


def write_case(root: Path, case: Case, family: Family) -> None:
    """The case's files: a copy of the template run where it names `{root}/run...` or a file in `run/`, its
    files (bytes; TOML text; anything else as JSON), then its family's set-up steps."""
    if any(a.startswith("{root}/run") for a in case.argv) or any(rel.startswith("run/") for rel in case.files):
        shutil.copytree(template_run(), root / "run", ignore=shutil.ignore_patterns(".lock"))
    for rel, value in case.files.items():
        path = root / rel
        if isinstance(value, bytes):
            path.write_bytes(value)
        elif isinstance(value, str) and rel.endswith(".toml"):
            path.write_text(value)
        else:
            path.write_text(json.dumps(value))
    for step in case.steps:
        assert family.setup is not None, f"family {case.family} has set-up steps and no setup hook"
        family.setup(root, step)


class _Timeout(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise _Timeout


def _cli_main(argv: list[str]) -> int:
    from resnetlab.cli import main  # looked up per case: the judge's tests replace it

    return main(argv)


def _execute(ended: Ended, family: Family) -> str | None:
    """Run the case's command in its directory within the time bound, its exit code and output kept in `ended`;
    the problem, where it did not end as a command should."""
    case, root, problem = ended.case, ended.root, None
    out, err = io.StringIO(), io.StringIO()
    env = {k: None if v is None else v.replace("{root}", str(root)) for k, v in case.env.items()}
    around = family.around(case, root) if family.around else contextlib.nullcontext()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_BOUND_S)
    try:
        # in the case's directory: a relative default output (runs/, ./propagation.png) lands there
        with working_directory(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                environ(env), around, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every warning the user would see, even under pytest's recorder
            try:
                ended.rc = (family.main or _cli_main)(ended.argv)
            except SystemExit as exc:  # argparse's one-line usage error
                ended.rc = exc.code if isinstance(exc.code, int) else 2
            for w in caught:  # as Python shows them: deprecation, import and resource warnings are hidden
                if not issubclass(w.category, HIDDEN_WARNINGS):
                    print(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}", file=err)
    except _Timeout:
        problem = f"timeout: still running after {TIME_BOUND_S:.0f} s"
    except BaseException as exc:  # noqa: BLE001 - anything escaping main is the finding
        problem = f"exception: {type(exc).__name__}: {one_line(exc, 160)}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        end_case()
        ended.stdout, ended.stderr = out.getvalue(), err.getvalue()
    return problem


def run_case(case: Case, root: Path) -> Outcome:
    """Run `case` in the empty directory `root` and judge how it ended."""
    family = FAMILIES.get(case.family) or Family(case.family, st.nothing)  # a hand-made case: no hooks
    if family.run is not None:
        return family.run(case, root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        write_case(root, case, family)
        argv = case.render(root)
        ended = judge.before(case, argv, root)  # the inputs' hashes, the answer where it is known
    except BaseException:
        end_case()
        raise
    problem = _execute(ended, family) or judge.exit_problem(ended) or judge.leftover_problem(ended)
    if problem is None:
        try:
            problem = judge.after(ended) or (family.after(ended) if family.after else None)
        except Exception as exc:  # noqa: BLE001 - the judge's own failure, named so it is not taken for the product's
            problem = f"judge failed: {type(exc).__name__}: {one_line(exc, 120)}"
    text = ended.stderr.strip()
    return Outcome(argv, ended.rc, text.splitlines()[-1][:200] if text else "", problem)

"""One worker process of a suite: `python -m resnetlab.experiments.worker SPEC`, started by `--jobs` (`jobs.py`)
and by each Slurm task (`slurm.py`); SPEC is JSON: the suite, its --out and run_suite's arguments."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from resnetlab.errors import ResnetlabError
from resnetlab.experiments.runner import run_suite
from resnetlab.experiments.suite import suite_from_dict


def main(argv: list[str] | None = None) -> int:
    preempt = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    if os.environ.get("SUBMITIT_EXECUTOR") and hasattr(signal, f"SIG{preempt}"):
        signal.signal(getattr(signal, f"SIG{preempt}"), signal.SIG_IGN)  # Slurm's warning is for the task
    spec = json.loads((argv or sys.argv[1:])[0])  # threads: OMP_NUM_THREADS, read by torch as it loads
    try:
        run_suite(suite_from_dict(spec["suite"]), Path(spec["out"]), **spec["kwargs"])
    except ResnetlabError as exc:
        print(f"resnetlab: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

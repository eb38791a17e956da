"""`resnetlab experiment SUITE`: one call's work on a suite, from its arguments to the results: the call
checked into a `SuiteRun`, the suite's --out claimed (`suite_dir.py`), the trainings no other worker is making
trained here (`work.py`) or in --jobs processes (`jobs.py`), and the results written by the last worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from resnetlab.data import parse_data_spec
from resnetlab.errors import ConfigError
from resnetlab.experiments.jobs import plan_slots, run_jobs
from resnetlab.experiments.results import CPU_NOTE, SMALL_NOTE, MemberResult, collect, write_results
from resnetlab.experiments.suite import CPU_EPOCHS, SCALES, Suite, SuiteFailed, SuiteRun, at_scale, select_members
from resnetlab.experiments.suite_dir import SuiteDir
from resnetlab.experiments.work import SuiteWork
from resnetlab.settings.config import default_recipe

DATA_EXAMPLES = {"paper": "e.g. cifar10:PATH", "cpu": "e.g. cifar10:PATH or folder:PATH/cifar10-jpeg.tar.gz"}


def plan(suite: Suite, out: Path, data: str | None = None, seeds: int = 1, epochs: float | None = None,
         iters: int | None = None, scale: str = "paper", device: str | None = None,
         settings: dict[str, Any] | None = None, only: list[str] | None = None,
         trainings: str | None = None) -> SuiteRun:
    """The arguments of a call checked, and the scale's defaults filled in (data, budget, recipe). The data's
    path and `run.init` are made absolute, as `train` keeps them, so every worker and a later resume, wherever
    it runs from, reads the same files."""
    if scale not in SCALES:
        raise ConfigError(f"--scale: {scale!r} is not one of {', '.join(SCALES)}")
    if not 1 <= seeds <= 1000:
        raise ConfigError(f"--seeds: {seeds} is not in 1..1000")
    if data is None and scale in DATA_EXAMPLES:
        raise ConfigError(f"suite {suite.name}: --data is required at {scale} scale ({DATA_EXAMPLES[scale]})")
    data = "digits" if data is None else data
    if epochs is None and iters is None:
        epochs = {"small": 6, "cpu": CPU_EPOCHS}.get(scale)
    suite = at_scale(suite, scale)
    recipe = suite.recipe if scale == "paper" else default_recipe(data)
    parsed = parse_data_spec(data)
    if parsed.arg is not None and parsed.scheme not in ("digits", "synthetic"):
        data = f"{parsed.scheme}:{os.path.abspath(os.path.expanduser(parsed.arg))}"
    settings = dict(settings or {})
    if isinstance(settings.get("run.init"), str) and settings["run.init"].strip():
        settings["run.init"] = os.path.abspath(os.path.expanduser(settings["run.init"]))
    return SuiteRun(suite, Path(out), scale, data, recipe, seeds, epochs, iters, device, settings,
                    only, trainings)


def run_suite(suite: Suite, out: Path, data: str | None = None, seeds: int = 1, epochs: float | None = None,
              iters: int | None = None, scale: str = "paper", device: str | None = None,
              settings: dict[str, Any] | None = None, only: list[str] | None = None, results: bool = True,
              log: Any = print, jobs: int = 1, devices: list[str] | None = None, trainings: str | None = None,
              train: bool = True, add_seeds: bool = False) -> list[MemberResult]:
    """Train every member x seed (skipping finished runs, resuming interrupted ones) as one of any number of
    workers on `out`; the last to finish writes the results (unless `results=False`). `jobs`: that many worker
    processes on `devices`; `train=False`: only the results of what has finished; `only`: the members (label or
    slug) to train, the table still lists all; `trainings`: the index shared with other suites (default: beside
    `out`). A member stopped by SIGTERM/SIGINT stops the suite: SuiteStopped."""
    run = plan(suite, out, data, seeds, epochs, iters, scale, device, settings, only, trainings)
    chosen = select_members(run.suite, only)
    if jobs != 1 or devices:
        plan_slots(jobs, devices, device)  # --jobs and --devices checked before any work
    work = SuiteWork(run, log)
    call = work.call(chosen)  # every member's config built and keyed: a bad --set stops the call here
    if run.scale in ("small", "cpu"):
        log(SMALL_NOTE if run.scale == "small" else CPU_NOTE)
    suite_dir = SuiteDir(run.out)
    suite_dir.claim(call, shared=True, holds=work.holds, add_seeds=add_seeds)
    failed: list[str] = []
    try:
        if not train:
            work.link_trained(chosen)
        elif jobs > 1 or devices:
            failed = run_jobs(work, chosen, jobs, devices)
        else:
            failed = work.train(chosen)
        rows = collect(run.suite, run.out, run.scale, run.seeds, call["trainings"])
        if results:
            suite_dir.write_when_last(lambda: write_results(run, rows), log, now=not train)
    finally:
        suite_dir.release()
    if failed:
        names = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise SuiteFailed(f"suite {run.suite.name}: {len(failed)} member run(s) failed: {names}. Fix the input "
                          "and run the same command again: finished members are kept, failed ones retried")
    return rows

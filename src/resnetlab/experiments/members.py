"""The trainings one worker process does itself: each member and seed it claims, trained or resumed in turn."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from resnetlab.errors import ResnetlabError, RunDirError
from resnetlab.experiments.results import read_summary
from resnetlab.experiments.suite import Member, SuiteRun, SuiteStopped
from resnetlab.experiments.work import SuiteWork
from resnetlab.files.atomic import write_text_atomic
from resnetlab.runs.directory import RunDir
from resnetlab.runs.records import Summary, WorkerResult
from resnetlab.training.entry import resume, train
from resnetlab.training.trackers import with_suite_tags


def train_members(run: SuiteRun, chosen: tuple[Member, ...], work: SuiteWork, log: Any) -> list[str]:
    """Train or resume each chosen member and seed this worker claims (`work`, longest first; a training
    another suite made is linked, not repeated); the failed ones as "label seed N (reason)"."""
    failed: list[str] = []
    for member, claimed in work.members(chosen, run.seeds):
        for seed, run_dir in claimed:
            tag = f"[{run.suite.name}] {member.label} seed {seed}"
            done = read_summary(run_dir)
            if done is not None and done.status in ("finished", "diverged"):
                log(f"{tag}: already done, skipped")
                continue
            _clear_failure(run_dir, tag, log)
            try:
                summary = _train_one(run, member, seed, run_dir, tag, log)
            except ResnetlabError as exc:  # the suite carries on; the member is reported as failed
                log(f"{tag}: failed: {exc}")
                failed.append(f"{member.label} seed {seed} ({exc})")
                if not isinstance(exc, RunDirError):  # e.g. in use by another process: not the member's fault
                    run_dir.mkdir(parents=True, exist_ok=True)
                    write_text_atomic(run_dir / "error.txt", str(exc) + "\n")
                continue
            if summary.status == "stopped":  # a signal: the checkpoint is written, stop the suite here
                raise SuiteStopped(f"{tag}: stopped by a signal; rerun the same command to resume")
    return failed


def _clear_failure(run_dir: Path, tag: str, log: Any) -> None:
    """A member that failed on an earlier call is retried: from its checkpoint, or else from the start."""
    if not (run_dir / "error.txt").exists():
        return
    if RunDir(run_dir).has_checkpoint():
        (run_dir / "error.txt").unlink()
    else:  # nothing trained worth keeping: start it again, from this call's input
        log(f"{tag}: failed before, retrying from the start")
        shutil.rmtree(run_dir)


def _train_one(run: SuiteRun, member: Member, seed: int, run_dir: Path, tag: str,
               log: Any) -> Summary | WorkerResult:
    if (run_dir / "config.json").exists():
        log(f"{tag}: resuming")
        return resume(run_dir, device=run.device, log=log)[1]
    overrides = run.overrides(member, seed)
    overrides["run.tracker_tags"] = with_suite_tags(overrides.get("run.tracker_tags"), run.suite.name,
                                                    member.label, seed, run.scale)
    if run.device is not None:
        overrides["run.device"] = run.device
    model, override = member.at(run.scale)
    log(f"{tag}: training {model} {override or ''}")
    return train(run.config(member, seed, overrides), run_dir, log=log)[1]

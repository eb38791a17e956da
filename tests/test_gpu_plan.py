"""The GPU plan rehearsed on CPU (issue 16): the same script, stages and packing, with a tiny budget, so the first
GPU minute is not spent on a typo."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_plan  # noqa: E402

TINY = ["--device", "cpu", "--data", "synthetic:128", "--set", "optim.batch_size=16", "--set", "model.depth=8",
        "--set", "run.threads=1", "--parallel", "2"]


def _plan(tmp_path: Path, tag: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    out = tmp_path / tag
    return subprocess.run([sys.executable, "scripts/gpu_plan.py", *args, "--out", str(out / "out"), "--work",
                           str(out / "work"), "--results", str(tmp_path / "results"), *TINY],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _members(out: Path) -> dict[str, tarfile.TarInfo]:
    members = {}
    for part in sorted(out.glob("results-*.tar.gz")):
        with tarfile.open(part) as tar:
            members |= {m.name: m for m in tar.getmembers()}
    return members


def test_jobs_train_each_distinct_run_once() -> None:
    """The same training in two suites (ResNet-110 original units) is one job and one copy."""
    jobs, aliases = gpu_plan.plan_jobs([1, 2, 3])
    tags = [j.tag for j in jobs]
    assert tags[0] == "degradation/resnet110" and "activations/110-a-original" not in tags
    assert aliases == {"activations/110-a-original": "degradation/resnet110",
                       "shortcuts/identity": "degradation/resnet110"}
    assert "activations/110-e-full-pre-act" in tags and "shortcuts/dropout-shortcut-0-5" in tags
    assert len(tags) == len(set(tags)) == 5 + 4 + 5
    with pytest.raises(SystemExit, match="group 9"):
        gpu_plan.plan_jobs([9])


def test_rehearsal_trains_copies_writes_results_and_packs(tmp_path: Path) -> None:
    proc = _plan(tmp_path, "a", "setup", "train", "pack", "--groups", "1", "2", "--only", "degradation/resnet110",
                 "degradation/plain20", "activations/110-a-original", "--iters", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = tmp_path / "a" / "out"
    assert sorted(p.name for p in out.iterdir()) == ["plan.log", "plan.tar.gz", "results-0.tar.gz"]
    record = json.loads((tmp_path / "a" / "work" / "plan.json").read_text())
    assert set(record["stages"]) == {"setup", "train", "pack"}
    assert all("error" not in stage for stage in record["stages"].values())
    train = record["stages"]["train"]
    assert train["degradation/resnet110"]["exit"] == 0 and train["degradation/plain20"]["exit"] == 0
    assert train["activations/110-a-original"]["copied_from"] == "degradation/resnet110"
    results = tmp_path / "results"
    for run in ("degradation/resnet110/seed0", "degradation/plain20/seed0", "activations/110-a-original/seed0"):
        summary = json.loads((results / run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 3
    assert (results / "activations/110-a-original/seed0/copied_from.txt").exists()
    assert "| resnet110 |" in (results / "degradation/results.md").read_text()
    names = _members(out)
    run = str(results).lstrip("/")
    for f in ("config.json", "metrics.jsonl", "summary.json", "curves.png", "log.txt"):
        assert f"{run}/degradation/resnet110/seed0/{f}" in names, f
    assert f"{run}/degradation/results.md" in names
    assert not [n for n in names if "checkpoints" in n]  # finished runs leave their checkpoints behind
    # a second call finds everything done and trains nothing
    again = _plan(tmp_path, "b", "train", "--groups", "1", "--only", "degradation/resnet110", "--iters", "3")
    assert again.returncode == 0, again.stderr[-2000:]
    record = json.loads((tmp_path / "b" / "work" / "plan.json").read_text())
    assert record["stages"]["train"]["degradation/resnet110"] == {"exit": 0, "skipped": "already done"}


@pytest.mark.slow
def test_rehearsal_deadline_stops_runs_and_the_next_call_resumes_them(tmp_path: Path) -> None:
    """At the deadline the runs get SIGTERM and checkpoint; the pack carries that checkpoint; the next call
    resumes from it (the budget is too long to finish: both calls end at their deadline)."""
    budget = ["--groups", "1", "--only", "degradation/resnet20", "--iters", "100000", "--deadline", "25",
              "--min-start", "0", "--grace", "60", "--set", "run.checkpoint_every=0"]
    first = _plan(tmp_path, "a", "train", "pack", *budget)
    assert first.returncode == 0, first.stdout[-3000:]
    run = tmp_path / "results" / "degradation" / "resnet20" / "seed0"
    assert gpu_plan.run_dir_state(run) == "partial"
    ckpts = sorted((run / "checkpoints").glob("step-*.pt"))
    assert len(ckpts) == 1
    step = int(ckpts[0].stem.split("-")[1])
    assert step > 0
    assert any(n.endswith(f"checkpoints/{ckpts[0].name}") for n in _members(tmp_path / "a" / "out"))
    record = json.loads((tmp_path / "a" / "work" / "plan.json").read_text())
    assert record["stages"]["train"]["degradation/resnet20"]["exit"] == 3  # stopped by the signal, checkpointed
    second = _plan(tmp_path, "b", "train", *budget)
    assert second.returncode == 0
    log = (tmp_path / "b" / "work" / "train-logs" / "degradation--resnet20.log").read_text()
    assert f"from step-{step}.pt" in log or f"(step {step})" in log
    later = int(sorted((run / "checkpoints").glob("step-*.pt"))[-1].stem.split("-")[1])
    assert later > step

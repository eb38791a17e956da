"""The GPU plan rehearsed on CPU (issue 16): the same script, stages and packing, with a tiny budget, so the first
GPU minute is not spent on a typo."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tools import gpu_plan

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--device", "cpu", "--data", "synthetic:128", "--set", "optim.batch_size=16", "--set", "model.depth=8",
        "--set", "run.threads=1", "--parallel", "2"]


def _plan(tmp_path: Path, tag: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    out = tmp_path / tag
    return subprocess.run([sys.executable, "tools/gpu_plan.py", *args, "--out", str(out / "out"), "--work",
                           str(out / "work"), "--results", str(tmp_path / "results"), *TINY],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _members(out: Path) -> dict[str, tarfile.TarInfo]:
    members = {}
    for part in sorted(out.glob("results-*.tar.gz")):
        with tarfile.open(part) as tar:
            members |= {m.name: m for m in tar.getmembers()}
    return members


def test_the_plan_trains_each_distinct_run_once(tmp_path: Path) -> None:
    """The same training in three suites (ResNet-110 original units) has one key in the product's index of
    trainings, so it is trained once and linked from the other two (the plan no longer de-duplicates)."""
    from resnetlab.experiments.suite import SuiteRun, load_suite
    from resnetlab.experiments.work import SuiteWork

    suites = gpu_plan.plan_suites([1, 2, 3])
    assert [name for name, _ in suites] == ["degradation", "activations", "shortcuts"]
    keys: dict[str, str] = {}
    for name, slugs in suites:
        run = SuiteRun(load_suite(name), tmp_path / name, "paper", "synthetic:128", "cifar", epochs=40.0,
                       settings=gpu_plan.RUN_SETTINGS)
        work = SuiteWork(run, print)
        keys |= {f"{name}/{m.slug}": work.key(m, 0) for m in load_suite(name).members if m.slug in slugs}
    same = {tag for tag, key in keys.items() if key == keys["degradation/resnet110"]}
    assert same == {"degradation/resnet110", "activations/110-a-original", "shortcuts/identity"}
    assert len(set(keys.values())) == 5 + 4 + 5
    assert gpu_plan.plan_suites([1, 2], ["activations/110-a-original"]) == [("activations", ["110-a-original"])]
    with pytest.raises(SystemExit, match="group 9"):
        gpu_plan.plan_suites([9])


def test_rehearsal_trains_links_writes_results_and_packs(tmp_path: Path) -> None:
    proc = _plan(tmp_path, "a", "setup", "train", "pack", "--groups", "1", "2", "--only", "degradation/resnet110",
                 "degradation/plain20", "activations/110-a-original", "--iters", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = tmp_path / "a" / "out"
    assert sorted(p.name for p in out.iterdir()) == ["plan.log", "plan.tar.gz", "results-0.tar.gz"]
    record = json.loads((tmp_path / "a" / "work" / "plan.json").read_text())
    assert set(record["stages"]) == {"setup", "train", "pack"}
    assert all("error" not in stage for stage in record["stages"].values())
    train = record["stages"]["train"]
    assert train["degradation"]["exit"] == 0 and train["activations"]["exit"] == 0
    assert train["degradation/resnet110"] == train["degradation/plain20"] == "done"
    assert train["activations/110-a-original"] == "done (linked to ../../degradation/resnet110/seed0)"
    results = tmp_path / "results"
    for run in ("degradation/resnet110/seed0", "degradation/plain20/seed0", "activations/110-a-original/seed0"):
        summary = json.loads((results / run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 3
    assert (results / "activations/110-a-original/seed0").is_symlink()  # trained once, not copied
    assert "| resnet110 |" in (results / "degradation/results.md").read_text()
    assert "| 110 (a) original | resnet110 | 0.075M | 1 |" in (results / "activations/results.md").read_text()
    names = _members(out)
    run = str(results).lstrip("/")
    for f in ("config.json", "metrics.jsonl", "summary.json", "curves.png", "log.txt"):
        assert f"{run}/degradation/resnet110/seed0/{f}" in names, f
    assert f"{run}/degradation/results.md" in names
    assert names[f"{run}/activations/110-a-original/seed0"].issym()  # packed as the link it is
    assert not [n for n in names if "checkpoints" in n]  # finished runs leave their checkpoints behind
    # a second call finds everything done and trains nothing
    again = _plan(tmp_path, "b", "train", "--groups", "1", "--only", "degradation/resnet110", "--iters", "3")
    assert again.returncode == 0, again.stderr[-2000:]
    record = json.loads((tmp_path / "b" / "work" / "plan.json").read_text())
    assert record["stages"]["train"]["degradation"]["exit"] == 0
    assert "[degradation] all 1 runs are done" in (tmp_path / "b" / "work" / "train-degradation.log").read_text()


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
    assert record["stages"]["train"]["degradation"]["exit"] == 3  # stopped by the signal, checkpointed
    second = _plan(tmp_path, "b", "train", *budget)
    assert second.returncode == 0
    log = (tmp_path / "b" / "work" / "train-degradation.log").read_text()
    assert "[degradation] resnet20 seed 0: resuming on job 1" in log
    assert f"(step {step})" in (run / "log.txt").read_text()
    later = int(sorted((run / "checkpoints").glob("step-*.pt"))[-1].stem.split("-")[1])
    assert later > step

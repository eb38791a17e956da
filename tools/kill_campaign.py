"""SIGKILL campaign: kill deterministic training runs at random moments, resume, compare with a reference.

    python tools/kill_campaign.py --kills 50 --seed 0 --out results/kill-campaign.json

A reference run of the deterministic recipe, then runs SIGKILLed at moments drawn over its wall time and resumed
until they finish; every checkpoint must verify after each kill, and each run end bit-identical to the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from resnetlab.errors import CheckpointError
from resnetlab.files.atomic import write_text_atomic
from resnetlab.runs.directory import RunDir
from resnetlab.weights.checkpoint import load_checkpoint, trained_state

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def recipe(iters: int) -> list[str]:
    return ["train", "--model", "preact_resnet20", "--data", "digits", "--iters", str(iters),
            "--set", "run.deterministic=true", "--set", "run.threads=1", "--set", "run.checkpoint_every=3",
            "--set", "optim.batch_size=32"]


def corrupt_checkpoints(run: Path) -> list[str]:
    """The step checkpoints and best.pt that do not verify (a write's temporary, which a kill mid-write leaves, is
    no checkpoint: the resumed run removes it, the run's `leftover_temp_files` checks that)."""
    bad = []
    rundir = RunDir(run)
    for path in [*rundir.step_checkpoints(), *([rundir.best] if rundir.best.is_file() else [])]:
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            bad.append(str(exc))
    return bad


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--kills-per-run", type=int, default=5)
    ap.add_argument("--out", default="results/kill-campaign.json")
    ap.add_argument("--workdir", default=None, help="where runs are written (default: a temporary directory)")
    return ap


def _one_run(run: Path, args: argparse.Namespace, rng: random.Random, ref_wall: float, ref: dict,
             tally: dict) -> dict:
    """One run, killed at random moments (at most --kills-per-run) and resumed until it ends; its record.
    `tally` holds the campaign's kills so far, the log of every kill and the corrupt checkpoints found."""
    this_run = {"run": run.name, "kills": 0, "restarts_before_config": 0, "resumes": 0, "kill_times_s": []}
    while True:
        fresh = not (run / "config.json").exists()
        cmd = [sys.executable, "-m", "resnetlab", *(recipe(args.iters) + ["--out", str(run)] if fresh
                                                     else ["train", "--resume", str(run)])]
        if fresh and this_run["kills"]:
            this_run["restarts_before_config"] += 1
        elif not fresh:
            this_run["resumes"] += 1
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
        if this_run["kills"] < args.kills_per_run and tally["kills"] < args.kills:
            at = rng.uniform(0.0, ref_wall)
            try:
                p.wait(timeout=at)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                tally["kills"] += 1
                this_run["kills"] += 1
                this_run["kill_times_s"].append(round(at, 3))
                bad = corrupt_checkpoints(run)
                tally["log"].append({"run": run.name, "at_s": round(at, 3), "config_existed": not fresh,
                                     "checkpoints": sorted(q.name for q in (run / "checkpoints").glob("*.pt")),
                                     "corrupt": bad})
                tally["problems"].extend(bad)
                continue
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            this_run["error"] = err.strip().splitlines()[-1:] or [f"exit {p.returncode}"]
        break
    this_run["exit_code"] = p.returncode
    if p.returncode == 0:
        got = trained_state(run / "checkpoints" / f"step-{args.iters:08d}.pt")
        this_run["identical"] = got.keys() == ref.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        this_run["metrics_steps"] = steps
        this_run["metrics_ok"] = steps == sorted(set(steps))
    else:
        this_run["identical"] = False
    # temporary files or folders a killed process left (the resumed run should have removed them)
    this_run["leftover_temp_files"] = sorted(str(p.relative_to(run)) for p in run.rglob("*") if ".tmp" in p.name)
    return this_run


def _result(argv: list[str] | None, args: argparse.Namespace, ref_wall: float, runs: list[dict], tally: dict,
            work: Path, started: float) -> dict:
    """The campaign's record (results/kill-campaign.json)."""
    kill_log, problems = tally["log"], tally["problems"]
    return {
        "command": " ".join(["python", "tools/kill_campaign.py", *(argv if argv is not None else sys.argv[1:])]),
        "recipe": "python -m resnetlab " + " ".join(recipe(args.iters)),
        "seed": args.seed, "iters": args.iters, "kills_per_run": args.kills_per_run,
        "reference_wall_s": round(ref_wall, 3),
        "kills": tally["kills"], "runs": len(runs),
        "runs_identical": sum(1 for r in runs if r["identical"]),
        "runs_not_identical": [r["run"] for r in runs if not r["identical"]],
        "corrupt_checkpoints_found": problems,
        "kills_before_config_json": sum(1 for k in kill_log if not k["config_existed"]),
        "leftover_temp_files_in_runs": sum(len(r["leftover_temp_files"]) for r in runs),
        "leftover_temp_dirs_beside_runs": [p.name for p in work.iterdir() if ".tmp" in p.name],
        "kill_times_s": [k["at_s"] for k in kill_log],
        "per_run": runs, "per_kill": kill_log,
        "total_time_s": round(time.time() - started, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpus": os.cpu_count(), "processor": platform.processor()},
        "workdir": str(work),
    }


def main(argv: list[str] | None = None) -> int:
    """The campaign: a reference run, then runs killed and resumed until --kills kills were made."""
    args = _parser().parse_args(argv)
    rng = random.Random(args.seed)
    started = time.time()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-campaign-"))
    work.mkdir(parents=True, exist_ok=True)

    reference = work / "reference"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "resnetlab", *recipe(args.iters), "--out", str(reference)],
                          capture_output=True, text=True, env=ENV)
    ref_wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return 1
    ref = trained_state(reference / "checkpoints" / f"step-{args.iters:08d}.pt")

    runs: list[dict] = []
    tally: dict = {"kills": 0, "log": [], "problems": []}
    while tally["kills"] < args.kills:
        this_run = _one_run(work / f"run-{len(runs):03d}", args, rng, ref_wall, ref, tally)
        runs.append(this_run)
        print(f"{this_run['run']}: {this_run['kills']} kills, identical={this_run['identical']}", flush=True)

    result = _result(argv, args, ref_wall, runs, tally, work, started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"{tally['kills']} kills over {len(runs)} runs: {result['runs_identical']} identical, "
          f"{len(tally['problems'])} corrupt checkpoints, {result['total_time_s']} s -> {out}")
    ok = result["runs_identical"] == len(runs) and not tally["problems"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

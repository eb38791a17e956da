"""Two gloo processes under torchrun against one process with the same global batch.

Tolerance: DDP averages the two ranks' gradients, and each rank's BN normalises its own half of the batch.
One process with `optim.accumulate=2` computes the same mathematics (two half-batch forward passes, BN
statistics per half, gradients averaged), so the two loss trajectories agree to float32 summation order:
relative 1e-6. Against a single process without accumulation they would differ by BN's batch statistics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from resnetlab.weights.checkpoint import load_checkpoint

ARGS = ["train", "--iters", "44", "--set", "run.deterministic=true", "--set", "run.threads=1",
        "--set", "run.checkpoint_every=11", "--set", "run.keep_checkpoints=4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "resnetlab", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def single(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resnetlab", *args], capture_output=True, text=True,
                          timeout=300, env=ENV)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    two, one = tmp_path / "two", tmp_path / "one"
    proc = torchrun(*ARGS, "--out", str(two))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert single(*ARGS, "--out", str(one), "--set", "optim.accumulate=2").returncode == 0
    a, b = metrics(two), metrics(one)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [22, 44]
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) <= 1e-6 * rb["train_loss"]
        assert ra["train_error"] == rb["train_error"]
    wa = load_checkpoint(two / "checkpoints" / "step-00000044.pt")["model"]
    wb = load_checkpoint(one / "checkpoints" / "step-00000044.pt")["model"]
    for key in wa:
        if "running" not in key and "num_batches" not in key:  # BN buffers: rank 0's half vs both halves
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)
    cfg = json.loads((two / "config.json").read_text())
    assert cfg["resolved"]["world_size"] == 2 and cfg["resolved"]["global_batch"] == 64
    assert (two / "log.txt").read_text().count("epoch 2/2") == 1  # only rank 0 writes


def test_resume_on_a_different_number_of_processes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert torchrun(*ARGS, "--out", str(run)).returncode == 0
    for late in ("step-00000044.pt", "step-00000033.pt"):  # as if the 2-process run died after step 22
        (run / "checkpoints" / late).unlink()
    proc = single("train", "--resume", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "from step-00000022.pt" in proc.stdout
    rows = metrics(run)
    assert [r["step"] for r in rows] == [22, 44]
    assert json.loads((run / "summary.json").read_text())["steps"] == 44

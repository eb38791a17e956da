"""Training end to end: the CLI on real data, run directories, schedules, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnetlab.cli import main
from resnetlab.errors import EXIT_DIVERGED
from resnetlab.settings.config import build_config
from resnetlab.training.progress import build_schedule
from resnetlab.weights.checkpoint import load_checkpoint, trained_state

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resnetlab", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- the schedule -------------------------------------------------------------------------------------
def test_cifar_recipe_learning_rate_at_chosen_iterations() -> None:
    cfg = build_config(recipe="cifar", model="resnet110", data="synthetic")
    s = build_schedule(cfg, steps_per_epoch=390, depth=110)
    assert (s.total, s.milestones) == (64000, (32000, 48000))
    assert s.warmup  # on by default at depth >= 110
    assert [s.lr(i) for i in (0, 399, 400, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert s.lr(10, warmup_end=7) == pytest.approx(0.1)  # warm-up ended early: training error below 80%
    assert s.lr(5, warmup_end=7) == pytest.approx(0.01)
    assert not build_schedule(cfg, 390, depth=56).warmup  # auto: off below 110 layers
    forced = build_config(recipe="cifar", overrides={"warmup.enabled": False})
    assert build_schedule(forced, 390, depth=110).lr(0) == pytest.approx(0.1)


def test_shorter_budgets_keep_the_schedule_shape() -> None:
    cfg = build_config(recipe="cifar", overrides={"schedule.iters": 6400})
    s = build_schedule(cfg, 390, depth=20)
    assert (s.total, s.milestones) == (6400, (3200, 4800))
    cfg = build_config(recipe="imagenet", overrides={"schedule.epochs": 9})
    s = build_schedule(cfg, steps_per_epoch=100, depth=50)
    assert (s.total, s.milestones) == (900, (300, 600))
    assert [s.lr(i) for i in (299, 300, 600)] == pytest.approx([0.1, 0.01, 0.001])
    cfg = build_config(recipe="digits", overrides={"schedule.epochs": 10})
    s = build_schedule(cfg, steps_per_epoch=22, depth=20)
    assert s.total == 220 and s.milestones == (110, 169)  # 15/30 and 23/30 of the budget


def test_warmup_ends_when_training_error_drops(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", "preact_resnet20", "--data", "synthetic:256", "--iters", "12", "--out",
                 str(out), "--set", "warmup.enabled=true", "--set", "warmup.iters=10", "--set",
                 "warmup.until_error=0.95", "--set", "optim.batch_size=32", "--set", "data.pad=0"]) == 0
    ckpt = load_checkpoint(out / "checkpoints" / "step-00000012.pt")
    end = ckpt["progress"]["warmup_end"]
    assert end is not None and end <= 10  # ended by the error criterion, before the 10-iteration cap


# ---- the main job and the run directory -----------------------------------------------------------------
def test_train_on_digits_writes_a_complete_run_directory(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--epochs", "3", "--out", str(out), "--val-split", "200"]) == 0
    printed = capsys.readouterr().out
    assert f"run directory: {out}" in printed and "curves.png" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["name"] == "preact_resnet20" and cfg["recipe"] == "digits"
    assert cfg["resolved"]["total_iters"] == 3 * cfg["resolved"]["steps_per_epoch"]
    metrics = rows(out)
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    for key in ("train_loss", "train_error", "test_loss", "test_error", "test_top5_error", "val_error", "lr",
                "images_per_s", "wall_time_s"):
        assert key in metrics[-1]
    assert metrics[-1]["train_error"] < metrics[0]["train_error"]  # it learns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best"]["selected_on"] == "val"
    assert summary["final"]["test_error"] == metrics[-1]["test_error"]
    assert summary["fail"] == (metrics[-1]["test_error"] > 0.2)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "best.pt").exists()
    assert main(["eval", str(out)]) == 0
    assert f"top-1 error {metrics[-1]['test_error']:.2%}" in capsys.readouterr().out


def test_cifar_archive_end_to_end(make_cifar, tmp_path: Path, capsys) -> None:
    archive, _ = make_cifar("cifar10", tar=True, per_batch=8)
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--data", f"cifar10:{archive}", "--iters", "4", "--out", str(out),
                 "--set", "optim.batch_size=16", "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "cifar" and summary["steps"] == 4 and summary["params"] == 269722
    assert main(["eval", str(out), "--best"]) == 0
    assert "resnet20 on cifar10" in capsys.readouterr().out


def test_image_folder_tarball_end_to_end(make_folder, tmp_path: Path) -> None:
    data = make_folder(classes=("a", "b", "c"), counts=(6, 2), size=(12, 12), tar=True)
    out = tmp_path / "run"
    assert main(["train", "--model", "plain20", "--data", f"folder:{data}", "--iters", "3", "--out", str(out),
                 "--set", "optim.batch_size=6", "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    assert rows(out)[-1]["step"] == 3
    spec = load_checkpoint(out / "checkpoints" / "step-00000003.pt")["spec"]
    assert spec["num_classes"] == 3 and spec["residual"] is False


def test_divergence_is_recorded_not_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--iters", "20", "--out", str(out), "--set", "optim.lr=1e30"]) == EXIT_DIVERGED
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged"] and summary["fail"]
    assert summary["steps"] < 20  # stopped early
    assert rows(out)[-1]["diverged"] is True


# ---- resume -------------------------------------------------------------------------------------------
RESUME_ARGS = ["train", "--model", "preact_resnet20", "--data", "digits", "--iters", "60",
               "--set", "run.deterministic=true", "--set", "run.threads=1", "--set", "run.checkpoint_every=3",
               "--set", "optim.batch_size=32"]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return trained_state(run / "checkpoints" / "step-00000060.pt")


def kill_and_resume(run: Path, kills: int, seed: int) -> int:
    """Start the run, SIGKILL it at random moments, resume until it finishes; returns the kills made."""
    rng, made = random.Random(seed), 0
    while True:
        args = ["--resume", str(run)] if (run / "config.json").exists() else ["--out", str(run)]
        cmd = [sys.executable, "-m", "resnetlab", *(RESUME_ARGS if args[0] == "--out" else ["train"]), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
        if made < kills:
            try:
                proc.wait(timeout=rng.uniform(1.5, 4.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                made += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return made


def test_sigkill_at_random_moments_resumes_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert cli(*RESUME_ARGS, "--out", str(reference)).returncode == 0
    killed = tmp_path / "killed"
    made = kill_and_resume(killed, kills=3, seed=1)
    assert made >= 1
    ref, got = final_state(reference), final_state(killed)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    steps = [r["step"] for r in rows(killed)]
    assert steps == sorted(set(steps))  # no duplicated or missing metrics rows after resumes
    assert json.loads((killed / "summary.json").read_text())["steps"] == 60


def test_sigterm_checkpoints_and_exits_with_distinct_code(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "resnetlab", *RESUME_ARGS[:6], "600", *RESUME_ARGS[7:],
                             "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 60
    while not any((run / "checkpoints").glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "--resume" in out
    ckpt = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    step = load_checkpoint(ckpt)["progress"]["step"]
    assert 0 < step < 600


def test_second_writer_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "resnetlab", *RESUME_ARGS[:6], "600", *RESUME_ARGS[7:],
                             "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.time() + 60
        while not (run / "config.json").exists() and time.time() < deadline:
            time.sleep(0.1)
        second = cli("train", "--resume", str(run))
        assert second.returncode == 2 and "in use by process" in second.stderr
    finally:
        proc.kill()
        proc.wait()


# ---- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data", "cifar10:/no/such/path"], "/no/such/path"),
        (["--data", "folder:{tmp}/file.txt"], "file.txt"),
        (["--model", "resnet21"], "unknown model 'resnet21'"),
        (["--recipe", "cifra"], "did you mean 'cifar'"),
        (["--set", "optim.lr=fast"], "optim.lr"),
        (["--set", "optim.lrr=0.1"], "did you mean optim.lr"),
        (["--set", "model.shortcut=gated"], "shortcut"),
        (["--set", "nonsense"], "KEY=VALUE"),
        (["--device", "tpu"], "run.device"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "file.txt").write_text("not data")
    out = tmp_path / "run"
    proc = cli("train", "--iters", "2", "--out", str(out), *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("resnetlab: error:"), proc.stderr
    assert needle in proc.stderr
    assert not out.exists()
    assert not any(p.name.startswith(".run") for p in tmp_path.iterdir())


def test_checkpoint_from_another_model_or_data_is_refused(tmp_path: Path, make_cifar) -> None:
    out = tmp_path / "run"
    assert cli("train", "--iters", "2", "--out", str(out)).returncode == 0
    for args, needle in ((["--model", "resnet56"], "not the registry's resnet56"),
                         (["--data", "synthetic"], "channel(s)")):
        proc = cli("eval", str(out), *args)
        assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1
    proc = cli("train", "--resume", str(out), "--model", "resnet56")
    assert proc.returncode == 2 and "trains preact_resnet20, not resnet56" in proc.stderr
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    proc = cli("eval", str(garbage))
    assert proc.returncode == 2 and "a file of unknown format, not a weights file" in proc.stderr


def test_imagenet_layout_end_to_end(imagenet_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--data", f"imagenet:{imagenet_root}", "--iters", "2",
                 "--out", str(out), "--set", "optim.batch_size=4", "--set", "data.crop_size=32",
                 "--set", "data.scale=36,48", "--set", "data.test_resize=36", "--set", "data.workers=0",
                 "--set", "data.ten_crop=true"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "imagenet" and summary["steps"] == 2
    spec = load_checkpoint(out / "checkpoints" / "step-00000002.pt")["spec"]
    assert spec["stem"] == "imagenet" and spec["num_classes"] == len(list((imagenet_root / "train").iterdir()))

"""The benchmark command: its baseline is the same network, and it measures and writes what it claims."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.common import build_trainer
from benchmarks.plain import PlainCifarResNet, plain_model
from benchmarks.roofline import OpTraffic, step_traffic
from benchmarks.run import main
from resnetlab import create_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ours, plain", [
    (("resnet20", {}), "resnet20"),
    (("resnet20", {"depth": 32}), "resnet32"),
    (("preact_resnet164", {"depth": 20}), None),  # pre-activation bottleneck, 9n+2 with n=2
])
def test_plain_baseline_is_the_same_network(ours: tuple[str, dict], plain: str | None) -> None:
    """Ours' weights loaded into the baseline give the same outputs, in training and in evaluation mode."""
    torch.manual_seed(0)
    model = create_model(ours[0], **ours[1])
    base = plain_model(plain) if plain else PlainCifarResNet(ours[1]["depth"], preact_bottleneck=True)
    mine, theirs = model.state_dict(), base.state_dict()
    assert [v.shape for v in mine.values()] == [v.shape for v in theirs.values()]
    base.load_state_dict(dict(zip(theirs, mine.values(), strict=True)))
    x = torch.randn(6, 3, 32, 32)
    for training in (True, False):
        model.train(training)
        base.train(training)
        torch.testing.assert_close(base(x), model(x), rtol=0, atol=1e-6)


def test_benchmark_command_measures_and_writes(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "cpu.json"
    args = ["--models", "resnet20", "--device", "cpu", "--batch", "8", "--repeats", "2", "--warmup", "1",
            "--block-s", "0.01", "--min-steps", "1", "--epoch-steps", "2", "--data", "synthetic:64",
            "--memory-batch", "8", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    row = result["models"][0]
    assert row["model"] == "resnet20" and row["batch"] == 8 and row["epoch_images"] == 16
    for key in ("step", "step_plain", "epoch", "eval", "eval_plain"):
        ips = row["ips"][key]
        assert len(ips["all"]) == 2 and 0 < ips["min"] <= ips["median"] <= ips["max"]
    assert row["step_vs_plain"] == pytest.approx(row["ips"]["step"]["median"] / row["ips"]["step_plain"]["median"])
    assert row["first_step_s"] > 0
    assert row["macs"] == 40_551_040  # ResNet-20's forward multiply-adds (PERF.md: 40.6M)
    assert row["matmul"]["tflops"] > 0 and row["fraction_of_matmul_rate"] > 0
    assert row["bandwidth"]["gbps"] > 0 and row["step_traffic"]["bytes"] > 0 and row["bound"] in ("memory", "compute")
    assert row["flop_per_byte"] == pytest.approx(6 * row["macs"] * 8 / row["step_traffic"]["bytes"])
    for impl in ("ours", "plain"):
        assert result["memory"]["resnet20"][impl]["step_memory_mib"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| resnet20 |" in table and "ours/plain" in table


@pytest.mark.slow
def test_compiled_benchmark_times_the_eager_step_in_the_same_run(tmp_path: Path) -> None:
    """With --compile, our eager step is timed in the same blocks as the compiled one (run.compile=auto's
    gain comes from this ratio); compiling takes 25-60 s here, hence slow."""
    out = tmp_path / "c.json"
    args = ["--models", "resnet20", "--device", "cpu", "--batch", "8", "--repeats", "2", "--warmup", "1",
            "--block-s", "0.01", "--min-steps", "1", "--epoch-steps", "2", "--data", "synthetic:64",
            "--memory", "off", "--compile", "default", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())["models"][0]
    assert len(row["ips"]["step_eager"]["all"]) == 2
    assert row["compiled_vs_eager"] == pytest.approx(row["ips"]["step"]["median"] / row["ips"]["step_eager"]["median"])
    ips = row["ips"]
    assert row["eager_vs_plain"] == pytest.approx(ips["step_eager"]["median"] / ips["step_plain"]["median"])
    assert "compiled/eager" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--models", "resnet21"], "unknown model 'resnet21'"),
    (["--models", "resnet164"], "no plain baseline"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--data", "folder:/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--batch", "0"], "--batch must be >= 1"),
])
def test_benchmark_bad_input_is_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main([*args, "--memory", "off"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_op_traffic_counts_what_each_operator_reads_and_writes() -> None:
    a, b = torch.ones(1000), torch.ones(1000)
    with OpTraffic() as counter:
        c = a + b  # reads 2 x 4000 bytes, writes 4000
        c.view(10, 100)  # a view moves nothing
        c.add_(a)  # reads c and a, writes c
        c.sum()  # reads 4000, writes 4
    assert counter.ops == 3 and counter.bytes == 12_000 + 12_000 + 4_004


def test_step_traffic_is_linear_in_the_batch(tmp_path: Path) -> None:
    """Every tensor of a step either scales with the batch (activations) or does not (weights, gradients,
    momentum, BN statistics), so the traffic of batches 8, 16, 24 is an exact arithmetic progression; the
    constant part is at least SGD's read of weights, gradients and momentum and write of two of them."""
    trainer = build_trainer("resnet20", "synthetic:64", torch.device("cpu"), "none", 0, tmp_path)
    trainer.model.train()
    step_traffic(trainer, 8)  # the first step also creates the momentum buffers and the device-side sums
    t8, t16, t24 = (step_traffic(trainer, b)["bytes"] for b in (8, 16, 24))
    assert t16 - t8 == t24 - t16 > 0
    weights = sum(p.numel() * 4 for p in trainer.model.parameters())
    assert t8 - (t16 - t8) >= 5 * weights


def test_memory_command_shows_recomputation_saving_memory(tmp_path: Path) -> None:
    """The recompute sweep on a real step of preact_resnet1001: segments of 4 units keep far less for backward
    than the plain pass. At batch 128 it measures 0.20 (docs/benchmarks.md); at batch 4, as here, about 0.28,
    as the weights' gradients and momentum weigh more beside a small batch's activations."""
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--model", "preact_resnet1001", "--batch", "4",
                           "--recompute", "0", "4", "--time-steps", "1", "--data", "synthetic:64", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["recompute"] for r in rows] == [0, 4]
    plain, segments = (r["step_memory_mib"] for r in rows)
    assert 0 < segments < 0.4 * plain
    assert all(r["step_s"]["median"] > 0 for r in rows)
    assert "recompute=4" in proc.stdout


@pytest.mark.slow
def test_inference_benchmark_times_the_exported_paths(tmp_path: Path) -> None:
    """The four eval settings run and are written (the frozen compile takes 15-30 s on this CPU: slow)."""
    pytest.importorskip("onnxruntime")
    from benchmarks.inference import main as inference_main

    out = tmp_path / "infer.json"
    assert inference_main(["--models", "resnet20", "--batch", "4", "--repeats", "1", "--block-s", "0.05",
                           "--out", str(out)]) == 0
    row = json.loads(out.read_text())["models"][0]
    assert set(row["images_per_s"]) == {"plain", "ours", "onnxruntime", "compiled"}
    assert all(v["median"] > 0 for v in row["images_per_s"].values()) and row["compile_s"] > 0
    assert row["vs_plain"]["plain"] == 1.0
    assert "| resnet20 | 4 |" in out.with_suffix(".md").read_text()


def test_inference_benchmark_bad_input_is_one_line(capsys: pytest.CaptureFixture) -> None:
    from benchmarks.inference import main as inference_main

    assert inference_main(["--models", "resnet20", "--batch", "0"]) == 2
    assert inference_main(["--models", "nosuchnet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("benchmarks.inference:") for line in err)

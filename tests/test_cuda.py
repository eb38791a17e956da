"""The CUDA paths compute what the plain path computes (issue 16). Skipped where there is no GPU.

Run them with `pytest -m cuda` (scripts/gpu_plan.py's `check` stage does). Every comparison is made where the
mathematics is exact enough to show a bug rather than rounding: float64 for memory formats and BN folding
(cuDNN runs float64 convolutions), TF32 off for float32 comparisons, and for bf16 autocast a bound on the loss
that bf16 rounding stays inside and a wrong kernel does not.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab import create_model
from resnetlab.networks.folding import fold_bn
from resnetlab.runs.directory import RunDir
from resnetlab.settings.config import build_config
from resnetlab.training.build import build_trainer
from resnetlab.training.distributed import World
from resnetlab.training.evaluation import evaluate
from resnetlab.training.fast import make_sgd
from resnetlab.training.trainer import Trainer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    """float32 comparisons in true float32 (TF32 convolutions round inputs to 10 mantissa bits)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])


def _random_bn_stats(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)


def _trainer(tmp_path: Path, tag: str, model: str = "resnet20", device: torch.device = CUDA,
             **overrides: object) -> Trainer:
    cfg = build_config(model=model, data="synthetic:256", recipe="cifar",
                       overrides={"run.progress": False, "run.tensorboard": False, "warmup.enabled": False,
                                  "run.device": str(device), **overrides})
    return build_trainer(cfg, RunDir(tmp_path / tag), log=lambda *_: None)


@pytest.mark.parametrize("name, overrides", [("resnet20", {}), ("preact_resnet164", {"depth": 11}),
                                             ("resnet20", {"shortcut": "conv1x1"})])
def test_channels_last_and_folded_bn_on_cuda_are_the_same_mathematics(name: str, overrides: dict) -> None:
    """float64 on the GPU: channels-last forward and gradients, and BN folded into convs for eval, to 1e-10."""
    torch.manual_seed(0)
    plain = create_model(name, **overrides).double().to(CUDA)
    _random_bn_stats(plain)
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64, device=CUDA)
    y = torch.randint(0, 10, (8,), device=CUDA)
    out_plain, out_fast = plain(x), fast(x.contiguous(memory_format=torch.channels_last))
    F.cross_entropy(out_plain, y).backward()
    F.cross_entropy(out_fast, y).backward()
    assert _rel(out_fast, out_plain) < 1e-10
    for (pname, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        if p.grad.abs().max() > 1e-12:
            assert _rel(q.grad, p.grad) < 1e-10, pname
    plain.eval()
    folded = fold_bn(fast)
    with torch.no_grad():
        assert _rel(folded(x.contiguous(memory_format=torch.channels_last)), plain(x)) < 1e-10
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) < sum(
        isinstance(m, nn.BatchNorm2d) for m in plain.modules())


def test_fused_sgd_step_equals_the_loop_step() -> None:
    """The single-kernel SGD of CUDA runs against PyTorch's per-tensor loop: momentum, weight decay, three steps."""
    torch.manual_seed(0)
    model = create_model("resnet20").to(CUDA)
    twin = copy.deepcopy(model)
    fused = make_sgd(model.parameters(), CUDA, lr=0.1, momentum=0.9, weight_decay=1e-4)
    loop = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False)
    assert fused.defaults["fused"] is True
    for step in range(3):
        x = torch.randn(16, 3, 32, 32, device=CUDA, generator=torch.Generator(CUDA).manual_seed(step))
        y = torch.arange(16, device=CUDA) % 10
        for m, opt in ((model, fused), (twin, loop)):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            b.grad.copy_(a.grad)  # the same gradients: the optimizers alone are compared
        fused.step()
        loop.step()
        assert _rel(_flat(model), _flat(twin)) < 1e-6


def test_trainer_step_on_cuda_follows_the_cpu_step(tmp_path: Path) -> None:
    """The library's whole step (GPU data path, channels-last, fused SGD, cuDNN autotuning) against the CPU's.

    One step, in float64 weights. The step's loss is taken in float32 (for bf16 autocast), so the two devices'
    loss gradients differ at float32 rounding, and a few steps from a random start amplify that: on an H100 three
    steps parted by 1.2e-4 (float64 weights) and 7.2e-4 (float32), while each stage on its own agreed to 1e-8
    (test_cpu_and_gpu_agree_stage_by_stage_in_float64). One step stays near the float32 rounding: 1e-6."""
    gpu = _trainer(tmp_path, "gpu")
    cpu = _trainer(tmp_path, "cpu", device=torch.device("cpu"))
    cpu.model.load_state_dict(gpu.model.state_dict())
    assert torch.backends.cudnn.benchmark  # configure_runtime turned autotuning on for CUDA
    for trainer, dev in ((gpu, CUDA), (cpu, torch.device("cpu"))):
        trainer.model.double().train()
        x, y = next(iter(trainer.source.train_batches(0, 32, seed=0, device=dev)))
        assert x.device.type == dev.type
        trainer.train_step(x.double(), y, seed=0)
        trainer.sums.flush(trainer.progress, trainer.world)
    assert ((_flat(gpu.model) - _flat(cpu.model)).norm() / _flat(cpu.model).norm()).item() < 1e-6
    assert gpu.progress.loss_sum == pytest.approx(cpu.progress.loss_sum, rel=1e-6)
    gpu.model.float(), cpu.model.float()
    a = evaluate(gpu.model, gpu.source, "test", 64, CUDA, channels_last=True)
    b = evaluate(cpu.model, cpu.source, "test", 64, torch.device("cpu"), fold=False)
    assert abs(a["error"] - b["error"]) <= 2 / gpu.source.eval_size("test")  # a near-tie may flip
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


def test_bf16_autocast_step_stays_near_float32(tmp_path: Path) -> None:
    """bf16 autocast (8 mantissa bits): the loss of the same weights within 2% of float32, and ten steps lower it."""
    f32 = _trainer(tmp_path, "f32")
    bf16 = _trainer(tmp_path, "bf16", **{"run.amp": "bf16"})
    bf16.model.load_state_dict(f32.model.state_dict())
    x, y = next(iter(f32.source.train_batches(0, 64, seed=0, device=CUDA)))
    x = x.contiguous(memory_format=torch.channels_last)
    f32.model.eval(), bf16.model.eval()
    with torch.no_grad():
        ref = F.cross_entropy(f32.model(x), y)
        with bf16.amp:
            logits = bf16.model(x)
        assert logits.dtype == torch.bfloat16
        assert F.cross_entropy(logits.float(), y).item() == pytest.approx(ref.item(), rel=2e-2)
    bf16.model.train()
    losses = []
    for step in range(10):
        before = bf16.sums.loss()
        assert bool(bf16.train_step(x, y, seed=step))
        losses.append(bf16.sums.loss() - before)
    assert losses[-1] < 0.8 * losses[0]  # one batch, ten steps: it learns


@pytest.mark.parametrize("overrides", [{}, {"model.shortcut": "dropout", "model.dropout": 0.5}],
                         ids=["identity", "dropout"])
def test_reduce_overhead_compiled_steps_equal_eager_steps(tmp_path: Path, overrides: dict) -> None:
    """CUDA graphs (`run.compile=reduce-overhead`): four float64 steps from the same weights give the eager
    losses and weights (1e-6; in float32 fused sums move a few pre-activations across zero and the runs drift
    apart by 3e-4 in four steps, as on CPU), dropout shortcuts drawing the same masks; the BN running
    statistics, mutated in place inside the graph, follow too."""
    kw = {"model.depth": 8, **overrides}
    eager = _trainer(tmp_path, "eager", **kw)  # run.compile=auto: eager on CUDA too
    assert eager.compile.mode == "off" and eager.compile.reason.startswith("run.compile=auto: eager on cuda;")
    graphs = _trainer(tmp_path, "graphs", **kw, **{"run.compile": "reduce-overhead"})
    graphs.model.load_state_dict(eager.model.state_dict())
    losses: dict[str, list[float]] = {"eager": [], "graphs": []}
    for tag, trainer in (("eager", eager), ("graphs", graphs)):
        trainer.model.double().train()
        for step, (x, y) in zip(range(4), trainer.source.train_batches(0, 32, seed=0, device=CUDA), strict=False):
            before = trainer.sums.loss()
            trainer.train_step(x.double(), y, seed=step)
            losses[tag].append(trainer.sums.loss() - before)
    assert losses["graphs"] == pytest.approx(losses["eager"], rel=1e-6)
    assert len(set(losses["eager"])) == 4
    assert ((_flat(graphs.model) - _flat(eager.model)).norm() / _flat(eager.model).norm()).item() < 1e-6
    stats = lambda m: torch.cat([b.double().flatten().cpu() for n, b in m.named_buffers() if "running" in n])  # noqa: E731
    assert _rel(stats(graphs.model), stats(eager.model)) < 1e-6


def test_cuda_memory_probe_shows_recomputation_saving_memory(tmp_path: Path) -> None:
    """`benchmarks.memory` on CUDA (max_memory_allocated): recomputed segments keep less for backward."""
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--model", "preact_resnet164", "--batch", "32",
                           "--recompute", "0", "4", "--time-steps", "1", "--device", "cuda",
                           "--data", "synthetic:64", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    plain, segments = (r["step_memory_mib"] for r in rows)
    assert 0 < segments < 0.5 * plain


class _OneRankGroup(World):
    """A process group of one rank that the trainer treats as distributed (DDP, SyncBN, NCCL collectives)."""

    @property
    def active(self) -> bool:
        return True


def test_nccl_ddp_sync_bn_steps_equal_single_process_steps(tmp_path: Path) -> None:
    """The NCCL path of the trainer: DDP over an NCCL group, SyncBatchNorm and the loop's all-reduces (flags,
    epoch sums, warm-up error). One GPU can hold one NCCL rank, so the group has one rank, which must compute
    what the single-process step computes."""
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    try:
        single = _trainer(tmp_path, "single", **{"warmup.enabled": True})
        cfg = build_config(model="resnet20", data="synthetic:256", recipe="cifar",
                           overrides={"run.progress": False, "run.tensorboard": False, "warmup.enabled": True,
                                      "run.device": "cuda", "run.sync_bn": True})
        ddp = build_trainer(cfg, RunDir(tmp_path / "ddp"), world=_OneRankGroup(0, 1, 0), log=lambda *_: None)
        assert isinstance(ddp.train_model, nn.parallel.DistributedDataParallel)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in ddp.model.modules())
        ddp.model.load_state_dict(single.model.state_dict())
        for trainer in (single, ddp):
            trainer.model.train()
            for step, (x, y) in zip(range(3), trainer.source.train_batches(0, 32, seed=0, device=CUDA),
                                    strict=False):
                assert bool(trainer.train_step(x, y, seed=step))
            trainer.sums.flush(trainer.progress, trainer.world)
        assert ((_flat(ddp.model) - _flat(single.model)).norm() / _flat(single.model).norm()).item() < 1e-4
        assert ddp.progress.loss_sum == pytest.approx(single.progress.loss_sum, rel=1e-4)
    finally:
        dist.destroy_process_group()


def test_cpu_and_gpu_agree_stage_by_stage_in_float64(tmp_path: Path) -> None:
    """Where the CPU and GPU steps part (float64, so rounding cannot): the batch, the training-mode forward, the
    gradients of a float64 loss, and one SGD step from the same gradients, each checked on its own."""
    gpu = _trainer(tmp_path, "gpu")
    cpu = _trainer(tmp_path, "cpu", device=torch.device("cpu"))
    cpu.model.load_state_dict(gpu.model.state_dict())
    (xg, yg), (xc, yc) = (next(iter(t.source.train_batches(0, 32, seed=0, device=d)))
                          for t, d in ((gpu, CUDA), (cpu, torch.device("cpu"))))
    assert torch.equal(yg.cpu(), yc), "labels"
    assert (xg.cpu() - xc).abs().max().item() < 1e-5, "images"
    x = xc.double()
    gpu.model.double().train(), cpu.model.double().train()
    lg = gpu.model(x.to(CUDA).contiguous(memory_format=torch.channels_last))
    lc = cpu.model(x.contiguous(memory_format=torch.channels_last))
    assert _rel(lg.cpu(), lc) < 1e-10, "training-mode forward"
    F.cross_entropy(lg, yc.to(CUDA)).backward()
    F.cross_entropy(lc, yc).backward()
    for (name, p), q in zip(cpu.model.named_parameters(), gpu.model.parameters(), strict=True):
        if p.grad.abs().max() > 1e-12:
            assert _rel(q.grad.cpu(), p.grad) < 1e-8, f"gradient of {name}"
    for m in (gpu, cpu):
        for group in m.optimizer.param_groups:
            group["lr"] = 0.1
    gpu.optimizer.step(), cpu.optimizer.step()
    assert _rel(_flat(gpu.model), _flat(cpu.model)) < 1e-6, "SGD step (fused on CUDA)"

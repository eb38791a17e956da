"""The fast paths compute what the plain path computes (issue 5: no speed-up bought by changing the mathematics).

Stated precision. In float64 the fast and plain paths agree to 1e-12 (relative): the same mathematics, only
the order of the reductions differs. In float32 both paths' logits are within 1e-5 of a float64 evaluation.
Float32 gradients can differ by more than rounding where a pre-activation lies within rounding of zero and the
ReLU mask differs (seen: 1e-3 on early layers' gradients for one batch in 16), so the float32 training step is
checked on the parameters after one SGD step (1e-4, norm-relative), and on the evaluation of the result.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab import create_model
from resnetlab.errors import ConfigError
from resnetlab.networks.folding import fold_bn
from resnetlab.runs.directory import RunDir
from resnetlab.settings.config import build_config
from resnetlab.training.build import build_trainer
from resnetlab.training.evaluation import evaluate
from resnetlab.training.fast import has_cxx_compiler
from resnetlab.training.trainer import Trainer


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


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name, overrides, folded", [
    ("resnet20", {}, 19),  # stem + 2 per unit
    ("preact_resnet20", {}, 10),  # stem + the BN after conv1 in each unit
    ("preact_resnet164", {"depth": 11}, 10),  # stem + 2 per unit + 3 projections
    ("resnet20", {"unit": "bn_after_add"}, 10),  # stem + the BN after conv1; the BN after the add stays
    ("resnet20", {"option": "C"}, 28),  # and a projection's conv-BN on every unit
])
def test_fold_bn_gives_the_same_function(name: str, overrides: dict, folded: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    _random_bn_stats(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = fold_bn(model)
    bns = lambda m: sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert bns(model) - bns(fast) == folded
    assert model.training and not fast.training  # the original is left in its mode, with its weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model.eval()(x)
        got_cl = fold_bn(model.to(memory_format=torch.channels_last))(x.contiguous(memory_format=torch.channels_last))
        model64 = model.double()
        want64 = model64(x.double())
        got64 = fold_bn(model64)(x.double())
    assert _rel(got64, want64) < 1e-12
    assert _rel(fast(x), want64) < 1e-5 and _rel(got_cl, want64) < 1e-5 and _rel(want, want64) < 1e-5


@pytest.mark.parametrize("name, overrides", [("resnet20", {}), ("preact_resnet164", {"depth": 11})])
def test_channels_last_is_the_same_mathematics(name: str, overrides: dict) -> None:
    torch.manual_seed(0)
    plain = create_model(name, **overrides).double()
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x, y = torch.randn(16, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (16,))
    out_plain = plain(x)
    out_fast = fast(x.contiguous(memory_format=torch.channels_last))
    F.cross_entropy(out_plain, y).backward()
    F.cross_entropy(out_fast, y).backward()
    assert _rel(out_fast, out_plain) < 1e-12
    for (pname, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        if p.grad.abs().max() > 1e-12:  # (BN biases before a BN have a zero gradient)
            assert _rel(q.grad, p.grad) < 1e-12, pname
    # float32: both paths' logits within 1e-5 of the float64 ones
    plain32 = copy.deepcopy(plain).float()
    fast32 = copy.deepcopy(plain).float().to(memory_format=torch.channels_last)
    assert _rel(plain32(x.float()), out_plain) < 1e-5
    assert _rel(fast32(x.float().contiguous(memory_format=torch.channels_last)), out_plain) < 1e-5


def _trainer(tmp_path: Path, tag: str, **overrides: object) -> Trainer:
    cfg = build_config(model="resnet20", data="synthetic:64", recipe="cifar",
                       overrides={"run.progress": False, "run.tensorboard": False, "run.compile": "off",
                                  **overrides})
    return build_trainer(cfg, RunDir(tmp_path / tag), device="cpu", log=lambda *_: None)


def test_trainer_fast_path_follows_the_plain_path(tmp_path: Path) -> None:
    """One SGD step of the library's step with channels-last (the CPU default) and without it."""
    fast = _trainer(tmp_path, "fast")
    plain = _trainer(tmp_path, "plain", **{"run.channels_last": False})
    assert fast.channels_last and not plain.channels_last
    plain.model.load_state_dict(fast.model.state_dict())
    for trainer in (fast, plain):
        trainer.model.train()
        x, y = next(iter(trainer.source.train_batches(0, 16, seed=0)))
        trainer.train_step(x, y, seed=0)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    assert ((flat(fast.model) - flat(plain.model)).norm() / flat(plain.model).norm()).item() < 1e-4
    # evaluation with folded BN and channels-last against the plain evaluation of the same weights
    a = evaluate(fast.model, fast.source, "test", 16, torch.device("cpu"), channels_last=True)
    b = evaluate(plain.model, plain.source, "test", 16, torch.device("cpu"), fold=False)
    assert a["error"] == b["error"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.slow
def test_compiled_step_follows_the_eager_step(tmp_path: Path) -> None:
    """Three SGD steps of the torch.compile'd trainer against eager ones from the same weights (compilation
    takes 20-40 s on the 2-core CPU, hence slow). In float64 they agree to 1e-6 (the step's loss is taken in
    float32), which shows the generated kernels compute the same mathematics; in float32, fused and
    reordered sums move a few pre-activations across zero (as with channels-last, see above), so float32 is
    checked on the forward pass only: logits within 1e-5."""
    eager = _trainer(tmp_path, "eager")
    compiled = _trainer(tmp_path, "compiled", **{"run.compile": "default"})
    assert compiled.train_model is not compiled.model and eager.train_model is eager.model
    compiled.model.load_state_dict(eager.model.state_dict())
    x32, _ = next(iter(eager.source.train_batches(0, 16, seed=0)))
    x32 = x32.contiguous(memory_format=torch.channels_last)
    eager.model.train(), compiled.model.train()
    with torch.no_grad():
        assert _rel(compiled.train_model(x32), eager.train_model(x32)) < 1e-5
    compiled.model.load_state_dict(eager.model.state_dict())  # the same BN statistics again after that forward
    losses: dict[str, list[float]] = {"eager": [], "compiled": []}
    for tag, trainer in (("eager", eager), ("compiled", compiled)):
        trainer.model.double()
        for step, (x, y) in zip(range(3), trainer.source.train_batches(0, 16, seed=0), strict=False):
            before = trainer.sums.loss()
            trainer.train_step(x.double(), y, seed=step)
            losses[tag].append(trainer.sums.loss() - before)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    assert ((flat(compiled.model) - flat(eager.model)).norm() / flat(eager.model).norm()).item() < 1e-6
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-6)
    assert len(set(losses["eager"])) == 3  # the steps moved the weights: three different losses


def test_compile_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run.compile"):
        _trainer(tmp_path, "bad", **{"run.compile": "fastest"})


def test_compile_auto_is_eager_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run.compile=auto` (the default, and what old config.json files hold) trains the main job eager, sets no
    compile cache, and logs the measurement behind that; a named mode compiles (lazily: nothing is compiled
    here) with PyTorch's on-disk cache under the resnetlab cache directory."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")  # restored after the test ...
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")  # ... and absent during it
    main_cfg = build_config(overrides={"run.progress": False, "run.tensorboard": False})
    assert main_cfg.run.compile == "auto"
    main_job = build_trainer(main_cfg, RunDir(tmp_path / "main"), device="cpu", log=lambda *_: None)
    assert main_job.compile.mode == "off" and main_job.train_model is main_job.model
    assert main_job.compile.reason.startswith("run.compile=auto: eager on cpu; compiled steps measured")
    assert main_job.resolved()["compile"] == "off"
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    if not has_cxx_compiler():
        with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
            _trainer(tmp_path, "named", **{"run.compile": "default"})
        return
    named = _trainer(tmp_path, "named", **{"run.compile": "default", "data.cache_dir": str(tmp_path / "cache")})
    assert named.compile.mode == "default" and named.compile.reason == "run.compile=default"
    assert named.train_model is not named.model and named.eager_model is named.model
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor")

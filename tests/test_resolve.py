"""What a path means (issue 22): a run directory is one net for every command.

`export`, `predict` and `torch.hub` once took a run directory's *oldest* kept checkpoint while `eval` and
`--resume` took the newest good one. Here a run with several checkpoints, the same run resumed, and the same run
with its newest checkpoint corrupted go through every path that reads weights (`eval`, `train --resume`,
`train --init`, `export`, `predict`, `analyze --checkpoint`, the hub entry points, `load_pretrained`), and each
must use the same tensors: those of the newest checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab.training.evaluation
import resnetlab.training.trainer
from resnetlab.cli import main
from resnetlab.runs.directory import RunDir
from resnetlab.weights.checkpoint import load_checkpoint
from resnetlab.weights.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
# resnet20 as the registry builds it (the hub entry point checks the net), on 32x32 synthetic images: 4 steps an
# epoch, an evaluation and a checkpoint after each, the newest two kept
TRAIN = ["train", "--model", "resnet20", "--data", "synthetic:64", "--set", "optim.batch_size=16",
         "--set", "run.progress=false", "--set", "run.tensorboard=false"]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three run directories and, for each, the checkpoint every command must use."""
    root = tmp_path_factory.mktemp("resolve")
    several = root / "several"
    assert main([*TRAIN, "--epochs", "3", "--out", str(several)]) == 0
    steps = RunDir(several).step_checkpoints()
    assert [p.name for p in steps] == ["step-00000012.pt", "step-00000008.pt"]  # newest first
    resumed = root / "resumed"
    shutil.copytree(several, resumed, ignore=shutil.ignore_patterns(".lock"))
    (resumed / "checkpoints" / "step-00000012.pt").unlink()  # as killed after its step-8 checkpoint
    (resumed / "summary.json").unlink()
    assert main(["train", "--resume", str(resumed)]) == 0  # step 12 again, from the second session
    corrupt = root / "corrupt"
    shutil.copytree(several, corrupt, ignore=shutil.ignore_patterns(".lock"))
    newest = corrupt / "checkpoints" / "step-00000012.pt"
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    return {"several": (several, several / "checkpoints" / "step-00000012.pt"),
            "resumed": (resumed, resumed / "checkpoints" / "step-00000012.pt"),
            "corrupt": (corrupt, corrupt / "checkpoints" / "step-00000008.pt")}


KINDS = ["several", "resumed", "corrupt"]


@pytest.mark.parametrize("kind", KINDS)
def test_load_pretrained_and_hub_use_the_newest_good_checkpoint(runs: dict[str, Any], kind: str) -> None:
    run, good = runs[kind]
    want = _state(good)
    pre = load_pretrained(run)
    assert pre.source == str(good) and _same(pre.module.state_dict(), want)
    assert bool(pre.skipped) == (kind == "corrupt")
    hub = torch.hub._import_module("hubconf", str(ROOT / "hubconf.py"))
    assert _same(hub.resnet20(weights=str(run)).state_dict(), want)


@pytest.mark.parametrize("kind", KINDS)
def test_export_holds_the_newest_good_checkpoint(runs: dict[str, Any], kind: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    run, good = runs[kind]
    out = tmp_path / "net.safetensors"
    assert main(["export", str(run), "--format", "safetensors", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("note: skipped" in err and "used step-00000008.pt" in err) == (kind == "corrupt"), err
    tensors = load_file(str(out))
    assert _same({k: v for k, v in tensors.items() if not k.startswith("normalization.")}, _state(good))


@pytest.mark.parametrize("kind", KINDS)
def test_eval_and_analyze_evaluate_the_newest_good_checkpoint(runs: dict[str, Any], kind: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run, good = runs[kind]
    seen: list[dict[str, torch.Tensor]] = []
    real = resnetlab.training.evaluation.evaluate

    def spy(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, float]:
        seen.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(resnetlab.training.evaluation, "evaluate", spy)
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert len(seen) == 1 and _same(seen[0], _state(good))
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "propagation", "--checkpoint", str(run), "--batch-size", "4"]) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_predict_computes_with_the_newest_good_checkpoint(runs: dict[str, Any], kind: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run, good = runs[kind]
    rng = np.random.default_rng(0)
    image = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--json", "--top-k", "3"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["top"]
    payload = load_checkpoint(good)
    pre = load_pretrained(good)  # the checkpoint file itself: no run directory involved
    assert _same(pre.module.state_dict(), payload["model"])
    x = torch.from_numpy(np.asarray(Image.open(image), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    want = pre.predict(x, 3)[0]
    assert [t["class"] for t in got] == [c for c, _ in want]
    assert [t["probability"] for t in got] == pytest.approx([p for _, p in want], abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_init_starts_from_the_newest_good_checkpoint(runs: dict[str, Any], kind: str, tmp_path: Path) -> None:
    run, good = runs[kind]
    out = tmp_path / "fine-tune"
    assert main([*TRAIN, "--iters", "1", "--init", str(run), "--out", str(out)]) == 0
    init = json.loads((out / "config.json").read_text())["resolved"]["init"]
    assert init["path"] == str(good) and init["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()


def test_resume_continues_from_the_newest_good_checkpoint(runs: dict[str, Any], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The corrupt run, its summary gone: resumed from step 8 (step 12 does not verify), with its weights, and
    said so in the log."""
    run = tmp_path / "corrupt"
    shutil.copytree(runs["corrupt"][0], run, ignore=shutil.ignore_patterns(".lock"))
    (run / "summary.json").unlink()
    restored: list[dict[str, Any]] = []
    real = resnetlab.training.trainer.Trainer.restore

    def spy(self: Any, payload: dict[str, Any]) -> None:
        restored.append(payload)
        real(self, payload)

    monkeypatch.setattr(resnetlab.training.trainer.Trainer, "restore", spy)
    assert main(["train", "--resume", str(run)]) == 0
    assert len(restored) == 1 and restored[0]["progress"]["step"] == 8
    assert _same(restored[0]["model"], _state(runs["corrupt"][1]))
    log = (run / "log.txt").read_text()
    assert "skipping bad checkpoint" in log and "from step-00000008.pt" in log


def test_a_folder_that_is_not_a_run_and_best_on_a_file(tmp_path: Path, runs: dict[str, Any],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain").mkdir()
    assert main(["export", str(tmp_path / "plain"), "--format", "safetensors", "-o", str(tmp_path / "x")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    good = runs["several"][1]
    assert main(["eval", str(good), "--best"]) == 2
    assert "--best" in capsys.readouterr().err
    assert main(["eval", str(runs["several"][0]), "--best", "--device", "cpu"]) == 0

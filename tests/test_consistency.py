"""One run directory means one net to every command (issue 22, part 4).

Over run directories the fuzzer's generators make (tests/fuzz/common.py: a ResNet-20 on a generated
three-class image folder of 8x8 images) -- one with several checkpoints, one resumed after a crash, one whose
newest checkpoint is corrupt -- these properties hold:

- the top-1 error of `eval RUN` equals that of the exported .safetensors evaluated back (`export` then `eval
  --weights`) and that implied by `predict RUN <the test images> --json` against the true labels (the images
  are the training size, so predict's resize and crop leave the pixels as eval sees them);
- export, predict, eval and torch.hub use the weights of the newest checkpoint that verifies: the exported
  tensors and the hub model's state equal that checkpoint's, and eval and predict of the run print what they
  print for that checkpoint file named directly.

Everything runs in-process through `resnetlab.cli.main`, so the module takes a few seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.cli import main
from resnetlab.weights.checkpoint import load_checkpoint
from tests.fuzz.common import REPO, image_folder, tiny_run
from tests.fuzz.judge import newest_good
from tests.fuzz.surface_files import damage_run

CLASSES = ("ant", "bee", "cat")
KINDS = ("several checkpoints", "resumed", "newest corrupt")


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, f"resnetlab {' '.join(map(str, argv))}: exit {rc}: {err.strip()}"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The data and the three run directories (trained once for the module)."""
    base = tmp_path_factory.mktemp("consistency")
    data = image_folder(base / "data", CLASSES, per_class=8, size=8)
    several = tiny_run(base / "several", f"folder:{data}", epochs=3, keep=3, depth=20)
    resumed = tiny_run(base / "resumed", f"folder:{data}", epochs=3, keep=3, depth=20)
    for name in ("step-00000002.pt", "step-00000003.pt", "best.pt"):  # killed after its first checkpoint
        (resumed / "checkpoints" / name).unlink()
    (resumed / "summary.json").unlink()
    assert main(["train", "--resume", str(resumed)]) == 0
    corrupt = base / "corrupt"
    shutil.copytree(several, corrupt)
    damage_run(corrupt, "newest_corrupt")
    runs = {"several checkpoints": several, "resumed": resumed, "newest corrupt": corrupt}
    for kind, run in runs.items():
        assert newest_good(run) is not None and len(list((run / "checkpoints").glob("step-*.pt"))) >= 2, kind
    return {"data": data, **runs}


def _test_images(data: Path) -> list[tuple[Path, str]]:
    return [(p, p.parent.name) for p in sorted((data / "test").rglob("*.png"))]


def _eval_wrong(out: str) -> tuple[int, int, float]:
    """(wrong, images, loss) from eval's line; the error is printed to 0.01 %, exact for a few dozen images."""
    found = re.search(r"\((?:test|val), (\d+) images\): top-1 error ([\d.]+)%.*loss ([\d.]+)", out)
    assert found, out
    n = int(found.group(1))
    return round(float(found.group(2)) / 100 * n), n, float(found.group(3))


@pytest.mark.parametrize("kind", KINDS)
def test_eval_export_and_predict_agree_on_the_error(kind: str, world: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run, data = world[kind], world["data"]
    wrong_eval, n, _ = _eval_wrong(_cli(capsys, "eval", run, "--data", f"folder:{data}"))
    exported = tmp_path / "w.safetensors"
    _cli(capsys, "export", run, "--format", "safetensors", "-o", exported)
    wrong_export, n_export, _ = _eval_wrong(_cli(capsys, "eval", "--weights", exported, "--data", f"folder:{data}"))
    images = _test_images(data)
    rows = json.loads(_cli(capsys, "predict", run, *(p for p, _ in images), "--json", "--top-k", "2"))
    label = {str(p): cls for p, cls in images}
    wrong_predict = sum(row["top"][0]["class"] != label[row["image"]] for row in rows)
    # an image whose two best classes are within float rounding may fall either way between the three paths
    ties = sum(row["top"][0]["probability"] - row["top"][1]["probability"] < 1e-5 for row in rows)
    assert n == n_export == len(rows) == len(images)
    assert abs(wrong_eval - wrong_export) <= ties and abs(wrong_eval - wrong_predict) <= ties, \
        f"{kind}: top-1 wrong of {n}: eval {wrong_eval}, exported {wrong_export}, predict {wrong_predict}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_uses_the_newest_good_checkpoint(kind: str, world: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import safetensors.torch

    run, data = world[kind], world["data"]
    newest = newest_good(run)
    assert newest is not None
    want = load_checkpoint(newest)["model"]

    failures: list[str] = []

    def same(got: dict[str, torch.Tensor], what: str) -> None:
        differ = sorted(set(got) ^ set(want)) or [k for k in want if not torch.equal(got[k].float(), want[k].float())]
        if differ:
            failures.append(f"{what} is not {newest.name} ({differ[0]} differs)")

    exported = tmp_path / "w.safetensors"
    _cli(capsys, "export", run, "--format", "safetensors", "-o", exported)
    same({k: v for k, v in safetensors.torch.load_file(exported).items() if not k.startswith("normalization.")},
         "export")
    sys.path.insert(0, str(REPO))
    try:
        import hubconf
    finally:
        sys.path.remove(str(REPO))
    same(hubconf.resnet20(weights=str(run)).state_dict(), "torch.hub's resnet20(weights=RUN)")
    images = [str(p) for p, _ in _test_images(data)]
    if _cli(capsys, "predict", run, *images, "--json") != _cli(capsys, "predict", newest, *images, "--json"):
        failures.append(f"predict RUN is not predict {newest.name}")
    on_run = _eval_wrong(_cli(capsys, "eval", run, "--data", f"folder:{data}"))
    on_newest = _eval_wrong(_cli(capsys, "eval", newest, "--data", f"folder:{data}"))
    if on_run != on_newest:
        failures.append(f"eval RUN is not eval {newest.name}")
    assert not failures, f"{kind}: " + "; ".join(failures)

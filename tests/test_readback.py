"""Files read back, checked for shape (issue 14, part 1): a config, summary or suite result of another shape,
checkpoint tensors of another dtype, and data whose classes differ from the net's, each get one line naming
the file and the field, never a traceback or a silent cast."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main

TINY = ["--model", "resnet20", "--set", "model.depth=8", "--iters", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("readback") / "run"
    assert main(["train", *TINY, "--data", "synthetic:8", "--out", str(where)]) == 0
    return where


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))


def _one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("doc, needle", [
    ([], "config.json: expected a JSON object of sections, got list"),
    ({"model": 5}, "config.json: field 'model': expected an object with a registry 'name', got 5"),
    ({"model": {"name": "resnet20"}, "optim": "x"}, "config.json: field 'optim': expected an object of settings"),
    ({"model": {"name": "resnet20"}, "recipe": 3}, "config.json: field 'recipe': expected a name"),
])
def test_a_config_of_another_shape_is_named(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            doc: object, needle: str) -> None:
    """Valid JSON of the wrong shape in config.json was a traceback on --resume."""
    copy = _copy(run, tmp_path)
    (copy / "config.json").write_text(json.dumps(doc))
    assert main(["train", "--resume", str(copy)]) == 2
    assert needle in _one_line(capsys)


@pytest.mark.parametrize("name, doc, needle", [
    ("summary.json", [], "summary.json: expected a JSON object, got list"),
    ("summary.json", {"final": 5}, "summary.json: field 'final': expected an object, got int"),
    ("summary.json", {"final": {"test_error": [1]}}, "field 'final.test_error': expected a number"),
    ("summary.json", {"steps": "many"}, "field 'steps': expected an integer, got str"),
    ("config.json", None, "config.json: expected a JSON object with an 'optim' object"),
])
def test_report_names_a_summary_of_another_shape(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 name: str, doc: object, needle: str) -> None:
    copy = _copy(run, tmp_path)
    (copy / name).write_text(json.dumps(doc))
    assert main(["report", str(copy), "-o", str(tmp_path / "r.html")]) == 2
    assert needle in _one_line(capsys)
    assert not (tmp_path / "r.html").exists()


def test_report_names_suite_results_of_another_shape(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    for doc, needle in (([], "expected a JSON object"), ({"rows": 5}, "field 'rows'"),
                        ({"meta": [], "rows": []}, "field 'meta'"), ({"rows": [], "kendall_tau": "x"}, "kendall_tau")):
        (suite / "results.json").write_text(json.dumps(doc))
        assert main(["report", str(suite), "-o", str(tmp_path / "r.html")]) == 2
        assert needle in _one_line(capsys)
    (suite / "results.json").write_text(json.dumps({"rows": [], "meta": {}}))
    assert main(["report", str(suite), "-o", str(tmp_path / "r.html")]) == 0


def test_metrics_rows_of_another_shape_are_skipped(run: Path, tmp_path: Path) -> None:
    from resnetlab.runs.records import evaluation_rows, row_from_dict

    good = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row_from_dict(good) is not None
    assert row_from_dict({**good, "test_error": "x"}) is None and row_from_dict(5) is None  # type: ignore[arg-type]
    assert len(evaluation_rows([good, {**good, "step": [1]}, 5])) == 1  # type: ignore[list-item]


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.float16])
def test_checkpoint_tensors_of_another_dtype_are_refused(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        dtype: torch.dtype) -> None:
    """They were cast into the float32 net without a word."""
    from resnetlab.weights.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(run / "checkpoints" / "best.pt")
    key = next(k for k, v in payload["model"].items() if v.is_floating_point())
    payload["model"][key] = payload["model"][key].to(dtype)
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, payload)
    assert main(["eval", str(bad)]) == 2
    assert f"tensor {key} is {str(dtype).removeprefix('torch.')}, the model's is float32" in _one_line(capsys)


def _folder(root: Path, classes: tuple[str, ...]) -> Path:
    for split in ("train", "test"):
        for i, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for j in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i + j, dtype=np.uint8)).save(root / split / cls / f"{j}.png")
    return root


def test_eval_on_data_with_other_classes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Checkpoints did not store class names, so `eval --data` on another data set said nothing."""
    cats = _folder(tmp_path / "cats", ("cat", "dog"))
    ships = _folder(tmp_path / "ships", ("ship", "truck"))
    same = _folder(tmp_path / "same", ("cat", "dog"))
    assert main(["train", *TINY, "--data", f"folder:{cats}", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", f"folder:{ships}"]) == 2
    assert "trained on classes cat, dog" in _one_line(capsys)
    assert main(["eval", str(tmp_path / "run"), "--data", f"folder:{same}"]) == 0


def test_paths_the_os_refuses_get_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(tmp_path / ("a" * 300))]) == 2
    assert "File name too long" in _one_line(capsys)
    with pytest.raises(SystemExit) as exc:  # argparse's one-line error
        main(["export", "--weights", "", "--model", "resnet20", "--format", "safetensors", "-o",
              str(tmp_path / "w.safetensors")])
    assert exc.value.code == 2 and "argument --weights: an empty path" in _one_line(capsys)
    with pytest.raises(SystemExit) as exc:  # an empty recipe was the default recipe
        main(["train", *TINY, "--recipe", "", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2 and "argument --recipe: an empty name" in _one_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("model", [[["a", "b", True]], "weights", {"stem.conv.weight": [1.0]}, {5: torch.zeros(1)}])
def test_a_checkpoint_whose_weights_are_not_a_tensor_map_is_named(run: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture, model: object) -> None:
    """Found by the fuzz campaign: a list of triples as the weights was a ValueError traceback in `predict
    --weights` (dict() of it); every reader of a weights file now names the field."""
    from resnetlab.weights.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(run / "checkpoints" / "best.pt")
    payload["model"] = model
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, payload)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(images / "a.png")
    for argv in (["predict", "--weights", str(bad), str(images)],
                 ["export", "--weights", str(bad), "--format", "safetensors", "-o", str(tmp_path / "w.st")],
                 ["eval", str(bad)]):
        assert main(argv) == 2, argv
        line = _one_line(capsys)
        assert "not a mapping of names to tensors" in line or "weights are not a mapping" in line, line
    assert not (tmp_path / "w.st").exists()


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("config", None, "without its 'config' field"),
    ("norm", None, "without its 'norm' field"),
    ("spec", None, "without its 'spec' field"),
    ("model", None, "without its 'model' field"),
    ("config", [1, 2], "field 'config' is list, not a mapping"),
    ("norm", "x", "field 'norm' is str, not a mapping"),
])
def test_a_checkpoint_payload_without_a_field_is_named(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       field: str, value: object, needle: str) -> None:
    """A checkpoint without 'config' or 'norm' (valid frame and checksum) was a KeyError traceback in `eval`
    and `train --resume`; every reader now names the field in one line."""
    from resnetlab.weights.checkpoint import load_checkpoint, save_checkpoint

    copy = _copy(run, tmp_path)
    (copy / "summary.json").unlink()
    for ckpt in (copy / "checkpoints").iterdir():
        payload = load_checkpoint(ckpt)
        if value is None:
            del payload[field]
        else:
            payload[field] = value
        save_checkpoint(ckpt, payload)
    best = copy / "checkpoints" / "best.pt"
    for argv in (["eval", str(best)], ["eval", str(copy)],
                 ["export", "--weights", str(best), "--format", "safetensors", "-o", str(tmp_path / "w.st")],
                 ["analyze", "propagation", "--checkpoint", str(copy), "--out", str(tmp_path / "p.png")],
                 ["train", "--resume", str(copy)]):
        assert main(argv) == 2, argv
        assert needle in _one_line(capsys), argv
    assert not (tmp_path / "w.st").exists() and not (tmp_path / "p.png").exists()

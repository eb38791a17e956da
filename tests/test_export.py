"""Trained nets out and back in (issue 15): safetensors, ONNX, torch.export, torch.hub, and predictions on files."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_pets
from resnetlab.cli import main
from resnetlab.errors import CheckpointError, ConfigError
from resnetlab.weights.export import ATOL, RTOL, export
from resnetlab.weights.formats import model_for
from resnetlab.weights.pretrained import Trained, load_image, load_pretrained
from resnetlab.weights.resolve import resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny resnet (8 layers) trained 3 steps on a two-class image folder (cat, dog) of 8x8 PNGs."""
    root = tmp_path_factory.mktemp("export")
    write_pets(root)
    run = root / "run"
    code = main(["train", "--model", "resnet20", "--data", f"folder:{root / 'pets'}", "--iters", "3", "--out",
                 str(run), "--set", "model.depth=8", "--set", "optim.batch_size=4", "--set", "run.progress=false",
                 "--set", f"data.cache_dir={root / 'cache'}"])
    assert code == 0
    return run


def _logits(pre, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return pre.module(pre.normalise(x))


def test_a_run_comes_back_ready_with_its_classes(trained: Path) -> None:
    pre = load_pretrained(trained)
    assert pre.classes == ["cat", "dog"] and pre.image_size == 8 and not pre.module.training
    weights = resolve(trained)
    model, payload = model_for(weights), weights.payload
    assert payload["data"] == {"classes": ["cat", "dog"], "image_size": 8, "channels": 3}
    x = torch.rand(2, 3, 8, 8)
    norm = payload["norm"]
    with torch.no_grad():
        assert torch.equal(_logits(pre, x), model.eval()((x - norm["mean"]) / norm["std"]))


def test_safetensors_round_trip_from_the_file_alone(trained: Path, tmp_path: Path) -> None:
    pre = load_pretrained(trained)
    out = tmp_path / "net.safetensors"
    export(pre, "safetensors", out)
    back = load_pretrained(out)
    assert back.classes == pre.classes and back.image_size == pre.image_size
    assert back.module.spec == pre.module.spec
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(_logits(back, x), _logits(pre, x))  # the same float32 weights: bit-identical
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "resnetlab" and json.loads(meta["resnetlab"])["classes"] == ["cat", "dog"]


def test_a_safetensors_export_is_the_same_bytes_every_time(trained: Path, tmp_path: Path) -> None:
    """The safetensors writer keeps the metadata in a hash map: its two keys came out in either order, so two
    exports of one net (the API's and the command's) differed in bytes half the time. Now sorted."""
    pre = load_pretrained(trained)
    written = set()
    for k in range(8):
        export(pre, "safetensors", tmp_path / f"{k}.safetensors")
        written.add((tmp_path / f"{k}.safetensors").read_bytes())
    assert len(written) == 1
    size = int.from_bytes(next(iter(written))[:8], "little")
    meta = json.loads(next(iter(written))[8:8 + size])["__metadata__"]
    assert list(meta) == sorted(meta) == ["format", "resnetlab"]



@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_graph_exports_compute_the_net(trained: Path, tmp_path: Path, fmt: str) -> None:
    """The exported eval graph (BN folded, normalisation inside, dynamic batch) run outside resnetlab's code."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    pre = load_pretrained(trained)
    out = tmp_path / f"net.{fmt}"
    report = export(pre, fmt, out)
    assert report["max_abs_diff"] <= ATOL + RTOL * 10
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))  # a batch size not seen on export
    want = _logits(pre, x).numpy()
    if fmt == "onnx":
        import onnxruntime

        got = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
            None, {"pixels": x.numpy()})[0]
    else:
        with torch.no_grad():
            got = torch.export.load(str(out)).module()(x).numpy()
    assert np.abs(got - want).max() <= ATOL + RTOL * np.abs(want).max()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no side files, no temporaries


def test_export_cli_and_its_errors(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "n.safetensors"
    assert main(["export", str(trained), "--format", "safetensors", "-o", str(out)]) == 0
    assert "exported safetensors" in capsys.readouterr().out
    cases = [
        (["export", str(trained), "--format", "onnx", "-o", str(tmp_path / "missing" / "x.onnx")], "no such directory"),
        (["export", "--format", "onnx", "-o", str(tmp_path / "x.onnx")], "one of the two"),
        (["export", str(tmp_path / "nothing"), "--format", "pt2", "-o", str(tmp_path / "x.pt2")], "nothing"),
        (["export", str(trained), "--format", "pt2", "-o", str(tmp_path)], "not a regular file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.safetensors"]


def test_export_without_the_extra_says_what_to_install(trained: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert main(["export", str(trained), "--format", "onnx", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "pip install 'resnetlab[export]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_foreign_safetensors_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    assert main(["predict", "--weights", str(path), str(path)]) == 2
    assert "without resnetlab's metadata" in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[:40])  # truncated
    assert main(["eval", "--weights", str(path), "--data", "digits"]) == 2
    assert "a safetensors file cut short" in capsys.readouterr().err


def test_torch_hub_builds_registry_models_and_loads_weights(trained: Path, tmp_path: Path) -> None:
    from resnetlab import create_model

    model = torch.hub.load(str(ROOT), "resnet56", source="local", trust_repo=True)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in create_model("resnet56").parameters())
    assert torch.hub.load(str(ROOT), "preact_resnet164", source="local", num_classes=100).spec.num_classes == 100
    file = tmp_path / "n.safetensors"
    export(load_pretrained(trained), "safetensors", file)  # an 8-layer net: not the registry's resnet20
    with pytest.raises(CheckpointError, match="not the registry's resnet20: it holds resnet20 with depth=8"):
        torch.hub.load(str(ROOT), "resnet20", source="local", weights=str(file))
    real = tmp_path / "r20.safetensors"
    export(Trained(create_model("resnet20", num_classes=2).eval(), torch.zeros(3, 1, 1), torch.ones(3, 1, 1),
                   ["cat", "dog"], 32, "test"), "safetensors", real)
    net = torch.hub.load(str(ROOT), "resnet20", source="local", weights=str(real))
    assert not net.training and net.pretrained.classes == ["cat", "dog"] and net.spec.depth == 20
    hub = torch.hub._import_module("hubconf", str(ROOT / "hubconf.py"))
    listed = [n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_")]  # what hub.list lists
    assert "resnet110" in listed and "preact_resnet1001" in listed and all("resnet" in n or "plain" in n
                                                                         for n in listed)


def test_torch_hub_weights_and_best_mean_what_the_cli_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 30: the hub's `weights=''` loaded the current directory's run (Path('') is '.'), and `best=` was
    taken for a spec override ("spec overrides do not apply with weights"). An empty weights path is a one-line
    error; `best=True` picks the run's best.pt and `best=False` its newest checkpoint, as `--best` does; an
    unknown keyword is still an error."""
    write_pets(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--data", f"folder:{tmp_path / 'pets'}", "--iters", "2", "--out",
                 str(run), "--set", "optim.batch_size=4", "--set", "run.progress=false", "--set",
                 f"data.cache_dir={tmp_path / 'cache'}"]) == 0

    def hub(**kwargs: Any) -> Any:
        return torch.hub.load(str(ROOT), "resnet20", source="local", **kwargs)

    monkeypatch.chdir(run)  # a run directory is the current folder: '' must not mean it
    with pytest.raises(ConfigError, match="empty") as info:
        hub(weights="")
    assert "\n" not in str(info.value)
    assert Path(hub(weights=str(run), best=True).pretrained.source).name == "best.pt"
    newest = Path(hub(weights=str(run), best=False).pretrained.source)
    assert newest.name.startswith("step-") and newest == Path(hub(weights=str(run)).pretrained.source)
    with pytest.raises(ValueError, match="spec overrides do not apply"):
        hub(weights=str(run), depth=8)
    with pytest.raises(ConfigError, match="best"):
        hub(best=True)  # no weights to pick from
    with pytest.raises(ConfigError, match="best"):
        hub(weights=str(run), best="yes")


def test_an_export_is_readable_as_open_makes_files_and_may_have_a_long_name(tmp_path: Path) -> None:
    """Issue 30: an exported .safetensors was mode 0600 (its writer's own mode), unreadable to a colleague on a
    shared cluster; and a legal 240-character output name was refused (its temporary names passed the 255-byte
    limit on a name). The export gets 0666 & ~umask, as `open()` gives, under any name that fits."""
    from resnetlab import create_model

    pre = Trained(create_model("resnet20", num_classes=2, depth=8).eval(), torch.zeros(3, 1, 1),
                  torch.ones(3, 1, 1), ["cat", "dog"], 8, "test")
    old = os.umask(0o022)
    try:
        short, long = tmp_path / "n.safetensors", tmp_path / ("n" * 243 + ".safetensors")  # 255 bytes
        for out in (short, long):
            export(pre, "safetensors", out)
        os.umask(0o027)
        export(pre, "safetensors", tmp_path / "group.safetensors")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {short.name: 0o644, long.name: 0o644, "group.safetensors": 0o640}
    assert load_pretrained(long).classes == ["cat", "dog"]


def _images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 65536, (20, 50), dtype=np.uint16)).save(folder / "grey16.png")
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8), "L").save(folder / "small.jpg")
    Image.fromarray(rng.integers(0, 256, (12, 12, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).quantize(8).save(folder / "palette.png")
    return sorted(folder.iterdir())


def test_predict_odd_images_and_folders_with_names(trained: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    files = _images(tmp_path / "imgs")
    assert main(["predict", str(trained), str(tmp_path / "imgs"), "--top-k", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(f) for f in files]
    pre = load_pretrained(trained)
    for row, f in zip(rows, files, strict=True):
        names = [t["class"] for t in row["top"]]
        assert sorted(names) == ["cat", "dog"]
        assert sum(t["probability"] for t in row["top"]) == pytest.approx(1.0, abs=1e-5)
        x = load_image(f, pre)
        assert x.shape == (3, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
        assert names[0] == pre.classes[int(_logits(pre, x[None]).argmax())]
    assert main(["predict", str(trained), str(files[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{files[0]}: ") and ("cat" in line and "dog" in line)


def test_sixteen_bit_images_are_scaled_not_clipped(trained: Path, tmp_path: Path) -> None:
    """A 16-bit grey PNG of mid-grey (32768) reads as mid-grey, not white."""
    path = tmp_path / "g.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    x = load_image(path, load_pretrained(trained))
    assert float(x.mean()) == pytest.approx(128 / 255, abs=1 / 255)


def test_predict_bad_files_one_line_no_output(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = _images(tmp_path / "imgs")[0]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [([str(trained), str(good), str(bad)], "cannot read as an image"),
             ([str(trained), str(tmp_path / "gone.png")], "no such file"),
             ([str(trained), str(empty)], "no JPEG or PNG"),
             ([str(trained)], "at least one image"),
             ([str(trained), str(good), "--top-k", "0"], "--top-k"),
             (["--weights", str(bad), str(good)], str(bad))]
    for argv, message in cases:
        assert main(["predict", *argv]) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and message in captured.err and len(captured.err.strip().splitlines()) == 1, argv

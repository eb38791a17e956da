"""The causes of issue 22's hostile-input probe, one regression test each: silent wrong answers, data loss,
unbounded resources, tracebacks and misleading words on the newest surfaces (export, predict, hub, safetensors
metadata, odd images, run directories, recipes). Each case must end in one line on stderr and exit 2, with every
input left as it was and no output written."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_pets
from resnetlab.cli import main
from resnetlab.weights.checkpoint import load_checkpoint, save_checkpoint

TINY = ["--model", "resnet20", "--set", "model.depth=8", "--set", "optim.batch_size=4", "--set",
        "run.progress=false", "--set", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny run on a two-class folder of 8x8 PNGs, its exported safetensors, and one image to predict."""
    root = tmp_path_factory.mktemp("trust")
    write_pets(root)
    run = root / "run"
    assert main(["train", *TINY, "--data", f"folder:{root / 'pets'}", "--iters", "2", "--out", str(run),
                 "--set", f"data.cache_dir={root / 'cache'}"]) == 0
    st = root / "net.safetensors"
    assert main(["export", str(run), "--format", "safetensors", "-o", str(st)]) == 0
    return {"root": root, "run": run, "st": st, "image": root / "pets" / "test" / "cat" / "0.png",
            "data": root / "pets"}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fails(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    cap = capsys.readouterr()
    assert code == 2, (code, cap.err)
    assert cap.err.count("\n") == 1 and cap.err.startswith("resnetlab: error:") and needle in cap.err, cap.err
    return cap.out


def _rewrite(src: Path, dst: Path, edit: Any = None, tensors: Any = None) -> Path:
    """A copy of an exported safetensors file with its resnetlab metadata (a dict) or its tensors edited."""
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    if edit is not None:
        info = json.loads(header["__metadata__"]["resnetlab"])
        edited = edit(info)
        header["__metadata__"]["resnetlab"] = edited if isinstance(edited, str) else json.dumps(info)
    if tensors is not None:
        from safetensors.torch import load, save

        loaded = load(raw)
        tensors(loaded)
        return dst.write_bytes(save(loaded, metadata=header["__metadata__"])) and dst
    text = json.dumps(header).encode()
    dst.write_bytes(len(text).to_bytes(8, "little") + text + body)
    return dst


# ---- a file's metadata is checked against its tensors and against itself ------------------------------------
@pytest.mark.parametrize(("edit", "needle"), [
    (lambda m: m.update(image_size=1), "image_size '1' is not a side"),
    (lambda m: m.update(image_size=True), "image_size 'True' is not a side"),
    (lambda m: m.update(image_size=10**9), "is not a side"),
    (lambda m: m.update(classes=["cat"]), "class names (1 names) do not match its classifier's 2"),
    (lambda m: m.update(classes=[0, 1]), "is not a non-empty string"),
    (lambda m: m.update(classes=["cat", "dog\nresnetlab: all good"]), "control or formatting characters"),
    (lambda m: m.update(classes=["cat", "\x1b[31mdog"]), "control or formatting characters"),
    (lambda m: m.update(classes=["cat", "cat"]), "'cat' names two classifier rows"),
    (lambda m: m.update(classes="cat,dog"), "'classes' is str, not a list"),
    (lambda m: m["spec"].update(widths=[16384, 16384, 16384]), "do not fit its own spec"),
    (lambda m: m["spec"].update(depth=14), "depth: 14 does not match units"),
    (lambda m: m["spec"].update(stem_width=8), "do not fit its own spec (stem.conv.weight"),
    (lambda m: "[" * 100_000 + "]" * 100_000, "nests deeper than"),
    (lambda m: m.update(spec=json.loads("[" * 60 + "]" * 60)), "metadata is not valid"),
])
def test_metadata_that_disagrees_is_refused_by_every_command(made: dict[str, Path], tmp_path: Path, edit: Any,
                                                             needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _rewrite(made["st"], tmp_path / "bad.safetensors", edit)
    before = _digest(bad)
    _fails(["predict", "--weights", str(bad), str(made["image"])], needle, capsys)
    _fails(["eval", "--weights", str(bad), "--data", f"folder:{made['data']}"], needle, capsys)
    _fails(["export", "--weights", str(bad), "--format", "safetensors", "-o", str(tmp_path / "o.safetensors")],
           needle, capsys)
    assert _digest(bad) == before and not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize(("change", "needle"), [
    (lambda t: t.update({"normalization.std": torch.ones(3, 4, 4)}), "normalisation (mean (3, 8, 8), std (3, 4, 4))"),
    (lambda t: t.update({"normalization.mean": torch.zeros(1, 1, 1)}), "does not fit a 3-channel net"),
    (lambda t: t.update({"stem.conv.weight": torch.zeros(16, 3, 5, 5)}), "stem.conv.weight: (16, 3, 5, 5)"),
    (lambda t: t.update({"head.fc.weight": torch.full_like(t["head.fc.weight"], float("nan"))}),
     "holds NaN or Inf (a diverged net)"),
])
def test_tensors_that_disagree_with_the_metadata_are_refused(made: dict[str, Path], tmp_path: Path, change: Any,
                                                             needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _rewrite(made["st"], tmp_path / "bad.safetensors", tensors=change)
    _fails(["predict", "--weights", str(bad), str(made["image"]), "--json"], needle, capsys)
    _fails(["export", "--weights", str(bad), "--format", "safetensors", "-o", str(tmp_path / "o.st")], needle,
           capsys)


def test_eval_model_name_compares_the_net_not_the_name(made: dict[str, Path], capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    _fails(["eval", str(made["run"]), "--model", "resnet20"], "holds resnet20 with depth=8, but resnet20 has "
           "depth=20", capsys)


# ---- what a command prints cannot be forged or be NaN --------------------------------------------------------
def test_predict_escapes_file_names_and_prints_finite_json(made: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    odd = tmp_path / "a\nresnetlab: forged\x1b[2K.png"
    shutil.copy(made["image"], odd)
    capsys.readouterr()
    assert main(["predict", str(made["run"]), str(odd)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\\n" in out and "\x1b" not in out and "\\x1b" in out
    assert main(["predict", str(made["run"]), str(odd), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert rows[0]["image"] == str(odd)


# ---- images whose data ends before their header says ---------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _one_row_png(w: int = 32, h: int = 32) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + bytes(range(256))[: 3 * w] * 1)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _jpeg_claiming(side: int, progressive: bool = False) -> bytes:
    """A 16x16 JPEG whose frame header claims `side` x `side` pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
        buf, "JPEG", progressive=progressive)
    raw = bytearray(buf.getvalue())
    at = raw.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    raw[at + 5:at + 9] = struct.pack(">HH", side, side)
    return bytes(raw)


def _jpeg_cut_and_ended(side: int = 64) -> bytes:
    """A JPEG cut half-way through its data, with an end-of-image marker put back."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG")
    raw = buf.getvalue()
    return raw[: len(raw) * 2 // 3] + b"\xff\xd9"


@pytest.mark.parametrize(("name", "data", "needle"), [
    ("rows.png", _one_row_png(), "its pixel data ends early"),
    ("frame.jpg", _jpeg_claiming(4000), "its data ends before the last row of its 4000x4000 frame"),
    ("frame48.jpg", _jpeg_claiming(48), "its data ends before the last row of its 48x48 frame"),
    ("cut.jpg", _jpeg_cut_and_ended(), "its data ends before the last row of its 64x64 frame"),
    ("progressive.jpg", _jpeg_claiming(4000, progressive=True), "cannot code the 375,000 blocks"),
])
def test_images_cut_short_are_not_classified(made: dict[str, Path], tmp_path: Path, name: str, data: bytes,
                                             needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / name).write_bytes(data)
    assert _fails(["predict", str(made["run"]), str(tmp_path / name)], needle, capsys) == ""


def test_complete_images_of_every_layout_still_decode(tmp_path: Path) -> None:
    """The completeness checks pass real files: interlaced, 16-bit, palette and grey PNGs; progressive and
    grey JPEGs, 4:2:0 and 4:4:4, of odd sizes."""
    from resnetlab.data.images import opened

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    cases = [("a.png", Image.fromarray(rgb), {"interlace": 1}), ("b.png", Image.fromarray(rgb[..., 0]), {}),
             ("c.png", Image.fromarray(rgb).quantize(5), {}),
             ("d.png", Image.fromarray(rng.integers(0, 65536, (9, 7), dtype=np.uint16)), {}),
             ("e.jpg", Image.fromarray(rgb), {"progressive": True}), ("f.jpg", Image.fromarray(rgb[..., 1]), {}),
             ("g.jpg", Image.fromarray(np.zeros((64, 64, 3), np.uint8)), {"subsampling": 0, "quality": 1})]
    for name, img, kw in cases:
        img.save(tmp_path / name, **kw)
        with opened(str(tmp_path / name)) as decoded:
            assert decoded.size == img.size, name


# ---- sizes are checked before memory is spent ----------------------------------------------------------------
def test_a_sparse_huge_weights_file_is_refused_from_its_size(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    huge = tmp_path / "huge.pt"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)  # 3 GiB claimed, no disk used
    _fails(["eval", "--weights", str(huge), "--model", "resnet20", "--data", "digits"], "beyond the 1 GiB", capsys)


def test_elongated_images_are_refused_before_resizing(tmp_path: Path) -> None:
    """A 1 x 500,000 image for a 32-pixel net would be resized to 32 x 16,000,000 (1.5 GB): refused."""
    from resnetlab import create_model
    from resnetlab.data.images import shorter_side_to
    from resnetlab.errors import DataError
    from resnetlab.weights.pretrained import Trained, load_image

    Image.fromarray(np.zeros((1, 500_000, 3), np.uint8)).save(tmp_path / "line.png")
    pre = Trained(create_model("resnet20").eval(), torch.zeros(3, 1, 1), torch.ones(3, 1, 1),
                  [str(i) for i in range(10)], 32, "test")
    with pytest.raises(DataError, match="too elongated"):
        load_image(tmp_path / "line.png", pre)

    assert shorter_side_to(500, 375, 256) == (341, 256)
    with pytest.raises(ValueError, match="too elongated"):
        shorter_side_to(1, 100_000, 256)


# ---- outputs never replace an input or a file of a run directory ---------------------------------------------
def test_outputs_never_replace_inputs_or_run_files(made: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run, st = made["run"], made["st"]
    ckpt = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    files = [ckpt, run / "config.json", st]
    before = [_digest(f) for f in files]
    _fails(["export", str(run), "--format", "onnx", "-o", str(ckpt)], "is this command's input", capsys)
    _fails(["export", str(run), "--best", "--format", "onnx", "-o", str(ckpt)], "inside the checkpoints/", capsys)
    _fails(["export", str(run), "--format", "onnx", "-o", str(run / "checkpoints" / "step-99999999.pt")],
           "inside the checkpoints/", capsys)
    _fails(["export", "--weights", str(st), "--format", "safetensors", "-o", str(st)], "is this command's input",
           capsys)
    link = tmp_path / "link.safetensors"
    link.symlink_to(st)
    _fails(["export", "--weights", str(st), "--format", "safetensors", "-o", str(link)], "is this command's input",
           capsys)
    _fails(["export", str(run), "--format", "safetensors", "-o", str(run / "config.json")], "a file of run "
           "directory", capsys)
    _fails(["report", str(run), "-o", str(run / "config.json")], "a file of run directory", capsys)
    _fails(["export", str(run), "--format", "safetensors", "-o", str(tmp_path / ("x" * 250 + ".safetensors"))],
           "the file name is too long", capsys)
    assert [_digest(f) for f in files] == before
    assert main(["report", str(run), "-o", str(run / "report.html")]) == 0  # a new file beside them is fine


def test_an_output_that_is_a_folder_or_a_link_loop_is_one_line(made: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the fuzzer after issue 23: `report . -o .` raised ValueError (a temporary beside a path with no
    name), and `-o LOOP` (a link to itself) a RuntimeError, both as tracebacks."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    _fails(["report", str(made["run"]), "-o", str(loop)], "cannot be resolved", capsys)
    _fails(["export", str(made["run"]), "--format", "safetensors", "-o", str(loop)], "cannot be resolved", capsys)
    monkeypatch.chdir(tmp_path)
    _fails(["report", str(made["run"]), "-o", "."], "names a folder, not a file to write", capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"]


def test_pt2_export_to_a_full_disk_is_one_line(made: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    _fails(["export", str(made["run"]), "--format", "pt2", "-o", str(tmp_path / "n.pt2")], "No space left", capsys)
    assert list(tmp_path.iterdir()) == []


# ---- a finished run is never retrained; a resume checks before it trains ------------------------------------
def test_resume_refuses_a_run_whose_checkpoints_are_gone(made: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["run"], run, ignore=shutil.ignore_patterns(".lock"))
    for ckpt in (run / "checkpoints").iterdir():
        ckpt.unlink()
    kept = {p.name: _digest(p) for p in run.iterdir() if p.is_file()}
    _fails(["train", "--resume", str(run)], "ended (it has a summary.json) but its checkpoints are gone", capsys)
    shutil.rmtree(run / "checkpoints")
    _fails(["train", "--resume", str(run)], "its checkpoints/ folder is gone", capsys)
    assert {p.name: _digest(p) for p in run.iterdir() if p.is_file()} == kept


# ---- the command line beats a recipe; an empty init is not "no init" ------------------------------------------
def test_the_command_line_beats_a_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from resnetlab.settings.config import build_config

    recipe = tmp_path / "mine.toml"
    recipe.write_text('[data]\nsource = "synthetic:16"\n[model]\nname = "resnet56"\n[schedule]\nepochs = 1\n')
    cfg = build_config(recipe=str(recipe), model="resnet20", data="digits")
    assert cfg.data.source == "digits" and cfg.model.name == "resnet20"
    alone = build_config(recipe=str(recipe))
    assert alone.data.source == "synthetic:16" and alone.model.name == "resnet56"
    _fails(["train", "--set", "run.init=", "--out", str(tmp_path / "r")], "run.init: an empty path", capsys)
    assert not (tmp_path / "r").exists()


# ---- deeply nested documents are one line, not a RecursionError ----------------------------------------------
def test_deeply_nested_documents_are_one_line(made: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["run"], run, ignore=shutil.ignore_patterns(".lock"))
    (run / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    _fails(["train", "--resume", str(run)], "nests deeper than 64 levels", capsys)
    _fails(["report", str(run), "-o", str(tmp_path / "r.html")], "nests deeper than 64 levels", capsys)
    recipe = tmp_path / "deep.toml"
    recipe.write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    _fails(["train", "--recipe", str(recipe)], "nests deeper than 64 levels", capsys)
    ckpt = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    payload = load_checkpoint(ckpt)
    nested: Any = 1
    for _ in range(200):
        nested = [nested]
    payload["config"]["data"]["extra"] = nested
    save_checkpoint(ckpt, payload)
    _fails(["eval", str(ckpt)], "nests deeper than 64 levels", capsys)


# ---- settings within their bounds that still cannot train ----------------------------------------------------
def test_pad_larger_than_the_image_and_a_batch_batch_norm_cannot_use(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["train", *TINY, "--data", "digits", "--iters", "1", "--set", "data.pad=900", "--out",
            str(tmp_path / "a")], "data.pad: 900 is more than the images' side (8 pixels", capsys)
    _fails(["train", "--model", "resnet18", "--data", "synthetic:8", "--iters", "1", "--set", "optim.batch_size=1",
            "--set", "data.crop_size=32", "--out", str(tmp_path / "b")], "optim.batch_size: a step of 1 image",
           capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- misleading words: a file is named for what it is --------------------------------------------------------
@pytest.mark.parametrize(("content", "needle"), [
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "a PNG image, not a weights file"),
    (b"\x08\x0a\x12\x07pytorch\x1a\x052.1.0" + b"ai.onnx" + b"\0" * 40, "an ONNX model"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{", "a file of 9 bytes"),
    (b"", "an empty file"),
])
def test_a_file_of_another_kind_is_named_for_what_it_is(made: dict[str, Path], tmp_path: Path, content: bytes,
                                                        needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "given"
    path.write_bytes(content)
    out = _fails(["predict", str(path), str(made["image"])], needle, capsys)
    assert out == ""
    _fails(["eval", "--weights", str(path), "--model", "resnet20", "--data", "digits"], needle, capsys)


def test_names_scripts_need_are_kept_and_hiding_ones_refused(made: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A joiner that Persian or Devanagari names need is a class name; a bidi override, which reorders what a
    terminal shows, is not; an undecodable file name is printed escaped, not a UnicodeEncodeError."""
    from resnetlab.errors import printable

    assert printable("\u0645\u06cc\u200c\u0631\u0648\u062f") == "\u0645\u06cc\u200c\u0631\u0648\u062f"  # ZWNJ
    assert printable("a\u202eb\nc") == "a\\u202eb\\nc"
    ok = _rewrite(made["st"], tmp_path / "ok.safetensors", lambda m: m.update(classes=["cat", "क्\u200dष"]))
    assert main(["predict", "--weights", str(ok), str(made["image"])]) == 0
    bad = _rewrite(made["st"], tmp_path / "bad.safetensors", lambda m: m.update(classes=["cat", "dog\u202e"]))
    _fails(["predict", "--weights", str(bad), str(made["image"])], "control or formatting characters", capsys)
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/\xff.png"))
    shutil.copy(made["image"], odd)
    capsys.readouterr()
    assert main(["predict", str(made["run"]), str(odd)]) == 0
    assert "\\udcff.png" in capsys.readouterr().out


def test_a_class_folder_with_control_characters_is_refused_before_training(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]
                                                                          ) -> None:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog\x1b[2K"):
        for split in ("train", "test"):
            folder = tmp_path / "d" / split / cls
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "a.png")
    _fails(["train", *TINY, "--data", f"folder:{tmp_path / 'd'}", "--iters", "1", "--out", str(tmp_path / "r")],
           "holds control characters; rename it", capsys)


def test_predict_takes_images_after_its_options(made: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(made["run"]), "--best", str(made["image"]), "--top-k", "1"]) == 0
    assert capsys.readouterr().out.startswith(str(made["image"]))
    with pytest.raises(SystemExit) as stop:  # argparse's exit, as for any other bad argument
        main(["predict", str(made["run"]), str(made["image"]), "--bogus"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "unrecognized arguments: --bogus" in err

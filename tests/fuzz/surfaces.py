"""The fuzzer's reach into the newest surfaces (issue 22): generators of six more families, and the judge's
checks for silent wrong answers and lost data. `scripts/fuzz.py` registers both; read it first.

Families (each a hypothesis strategy of `Case`):

- `export`: every format x every source kind (a run directory, with --best, a step checkpoint, best.pt, an
  exported .safetensors or a foreign state_dict as --weights, and damaged ones) x hostile -o targets (the
  run's own checkpoint or config.json, the input itself, a link to it, a directory, a missing folder, a
  300-character name, a FIFO, /dev/null);
- `predict`: generated images of every PIL mode, of extreme shapes and declared sizes, corrupt in ways PIL
  itself does not notice, under hostile file names, by name or in nested folders; with run directories,
  checkpoints and .safetensors (good, or with hostile metadata) as the net; text and --json output;
- `hub`: hubconf's entry points called in-process (and through `torch.hub.load`) with weights of every kind;
- `safetensors`: exported files with generated metadata (image size, classes, spec, deep nesting), odd
  normalisation tensors, NaN weights, lying header lengths and cuts; read by eval, predict, export, train --init;
- `rundir`: run directories in the states a crash or a live trainer leaves (newest checkpoint corrupt or cut,
  a temporary file, no checkpoints, a locked run, a deeply nested config.json); read by every command;
- `env`: RESNETLAB_CACHE and HOME pointing at files, unwritable or missing folders, or unset, around commands
  that use the data cache or `~`.

Judge checks (`before` / `after`, for every family): inputs are unchanged afterwards (size and SHA-256 of every
file the case made, unless the case declares it writable); stdout of a successful command holds no NaN or Inf
as a number, no control character (nor stderr: an error naming a hostile file name must not carry its escape
sequences to the terminal), and --json output is strict JSON of the documented shape; an export leaves
its output whole on success and none on failure; and where the answer is known, it is the right one: export,
predict, eval and hub use the weights of the run's newest checkpoint that verifies (or best.pt with --best).
A case may also declare its input invalid (`Case.invalid`): exit 0 on it is a silent wrong answer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.core import TINY, Case, _crafted_png, _png_chunk, _template_folder_run, damaged_state

REPO = Path(__file__).resolve().parents[2]
STEPS = [f"step-{i:08d}.pt" for i in (1, 2, 3)]  # the checkpoints of the `multi` template, oldest first
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _setups(*steps: tuple[Any, ...]) -> dict[str, Any]:
    """Case.files entries that `setup` carries out in order (fuzz.py's `_write` hands them here)."""
    return {f"__surface__{i}": s for i, s in enumerate(steps)}


def _quiet_main(argv: list[str]) -> tuple[int, str]:
    """`resnetlab.cli.main(argv)` without output; (exit code, stderr)."""
    from resnetlab.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        return main(argv), err.getvalue()


# -- templates, made once per process ------------------------------------------------------------------
_TEMPLATES: dict[str, Path] = {}


def image_folder(where: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3, size: int = 8,
                 seed: int = 0) -> Path:
    """An image-folder data set (train/ and test/) of random RGB PNGs, all `size` x `size`: one colour
    channel brighter per class, so a net can learn something. Returns the folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c, cls in enumerate(classes):
            (where / split / cls).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                arr = rng.integers(0, 160, (size, size, 3), dtype=np.uint8)
                arr[..., c % 3] += 90
                Image.fromarray(arr).save(where / split / cls / f"{j}.png")
    return where


def tiny_run(out: Path, data: str, epochs: int = 3, keep: int = 3, depth: int = 8) -> Path:
    """A ResNet-`depth` trained for `epochs` one-step epochs, keeping `keep` step checkpoints (and best.pt)."""
    argv = ["train", "--model", "resnet20", "--set", f"model.depth={depth}", "--data", data, "--epochs",
            str(epochs), "--set", f"run.keep_checkpoints={keep}", "--out", str(out)]
    rc, err = _quiet_main(argv)
    assert rc == 0, f"the template run failed: {argv}: {err.strip()[-300:]}"
    return out


def multi_run(depth: int = 8) -> Path:
    """A run on synthetic:8 (10 classes, 32x32) with step-00000001..3.pt and best.pt, all different. Depth 8
    is fast; depth 20 is the registry's resnet20 itself, which hub's `resnet20` entry accepts."""
    if f"multi{depth}" not in _TEMPLATES:
        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-")) / "run"
        _TEMPLATES[f"multi{depth}"] = tiny_run(where, "synthetic:8", depth=depth)
    return _TEMPLATES[f"multi{depth}"]


def safetensors_of(ckpt: Path) -> bytes:
    """Checkpoint `ckpt` in the layout `resnetlab export --format safetensors` writes (export.py
    `_write_safetensors`): its tensors, `normalization.mean`/`.std`, and metadata {"format": "resnetlab",
    "resnetlab": JSON of spec, classes, image size, version}. Written here, from the checkpoint file, so the
    fuzzer's inputs do not depend on the exporter under test."""
    import safetensors.torch as stt

    from resnetlab.version import __version__
    from resnetlab.weights.checkpoint import load_checkpoint

    payload = load_checkpoint(ckpt)
    tensors = {k: v.contiguous().clone() for k, v in payload["model"].items()}
    tensors["normalization.mean"] = payload["norm"]["mean"].float().contiguous().clone()
    tensors["normalization.std"] = payload["norm"]["std"].float().contiguous().clone()
    data = payload.get("data") or {}
    info = {"spec": payload["spec"], "classes": data.get("classes"), "image_size": data.get("image_size"),
            "resnetlab": __version__}
    return stt.save(tensors, metadata={"format": "resnetlab", "resnetlab": json.dumps(info)})


def exported_bytes() -> bytes:
    """The newest checkpoint of `multi_run` as an exported .safetensors file."""
    if "safetensors" not in _TEMPLATES:
        out = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-")) / "w.safetensors"
        out.write_bytes(safetensors_of(multi_run() / "checkpoints" / STEPS[-1]))
        _TEMPLATES["safetensors"] = out
    return _TEMPLATES["safetensors"].read_bytes()


def foreign_bytes() -> bytes:
    """A CIFAR ResNet-20 state_dict in the pytorch_resnet_cifar10 layout (zeros), as a torch.save file."""
    import torch

    buf = io.BytesIO()
    torch.save(damaged_state(("peer", "none", 2))[0], buf)
    return buf.getvalue()


# -- set-up steps ----------------------------------------------------------------------------------------
_HELD: list[int] = []  # lock file descriptors held for the current case (`release` closes them)


def setup(root: Path, step: tuple[Any, ...]) -> None:
    """Carry out one set-up step of a case in its directory `root`."""
    kind, *args = step
    if kind == "run":  # a copy of a template run, then damaged
        template, damage = args
        shutil.rmtree(root / "run", ignore_errors=True)  # fuzz.py copies its own one-step run for {root}/run
        src = {"multi": multi_run, "multi20": lambda: multi_run(20), "folder": _template_folder_run}[template]()
        shutil.copytree(src, root / "run", ignore=shutil.ignore_patterns(".lock"))
        damage_run(root / "run", damage)
    elif kind == "weights":  # a weights file: exported, foreign, edited safetensors, damaged checkpoint
        name, what, edit = args
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(weights_bytes(what, edit))
    elif kind == "images":  # image files by relative name
        for name, image_kind, seed in args[0]:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(image_file(image_kind, seed)[0])
    elif kind == "folder":  # a good image-folder data set (for cache-touching commands)
        image_folder(root / args[0])
    elif kind == "link":
        (root / args[0]).symlink_to(root / args[1])
    elif kind == "bytes":
        (root / args[0]).parent.mkdir(parents=True, exist_ok=True)
        (root / args[0]).write_bytes(args[1])
    elif kind == "mkdir":
        (root / args[0]).mkdir(parents=True, exist_ok=True)
        os.chmod(root / args[0], args[1])
    else:
        raise ValueError(f"unknown set-up step {kind!r}")


def release() -> None:
    """Close what a case's set-up held (the lock of a `locked` run)."""
    while _HELD:
        os.close(_HELD.pop())


# -- run directories in odd states -----------------------------------------------------------------------
RUN_DAMAGES = ["none", "newest_corrupt", "newest_truncated", "newest_empty", "newest_is_dir", "oldest_corrupt",
               "all_steps_corrupt", "tmp_leftover", "no_checkpoints_dir", "summary_no_checkpoints", "no_best",
               "best_corrupt", "config_nested", "config_missing_model", "config_missing_run", "config_list",
               "locked", "odd_names"]


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def damage_run(run: Path, damage: str) -> None:
    """Put a copied run directory in the state `damage` names (a crash mid-write, a live trainer, a user)."""
    ckpts = run / "checkpoints"
    steps = sorted(ckpts.glob("step-*.pt"))
    if damage == "newest_corrupt":
        _flip(steps[-1])
    elif damage == "newest_truncated":
        steps[-1].write_bytes(steps[-1].read_bytes()[: steps[-1].stat().st_size // 2])
    elif damage == "newest_empty":  # created, not yet written: a newer step than the good ones
        (ckpts / "step-00000099.pt").write_bytes(b"")
    elif damage == "newest_is_dir":
        (ckpts / "step-00000099.pt").mkdir()
    elif damage == "oldest_corrupt":
        _flip(steps[0])
    elif damage == "all_steps_corrupt":
        for p in steps:
            _flip(p)
    elif damage == "tmp_leftover":  # a trainer killed while writing the next checkpoint
        (ckpts / ".step-00000099.pt.tmp-4242").write_bytes(steps[-1].read_bytes()[:5000])
    elif damage == "no_checkpoints_dir":
        shutil.rmtree(ckpts)
    elif damage == "summary_no_checkpoints":
        for p in ckpts.iterdir():
            p.unlink()
    elif damage == "no_best":
        (ckpts / "best.pt").unlink()
    elif damage == "best_corrupt":
        _flip(ckpts / "best.pt")
    elif damage == "config_nested":
        (run / "config.json").write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif damage in ("config_missing_model", "config_missing_run"):
        doc = json.loads((run / "config.json").read_text())
        doc.pop(damage.rsplit("_", 1)[1], None)
        (run / "config.json").write_text(json.dumps(doc))
    elif damage == "config_list":
        (run / "config.json").write_text("[]")
    elif damage == "locked":  # a trainer holds the run: an flock on RUN/.lock from this process
        fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242")
        _HELD.append(fd)
    elif damage == "odd_names":  # files that look like checkpoints and are not: must be ignored
        (ckpts / "step-00000099.pt.bak").write_bytes(b"junk")
        (ckpts / "step-99.pt").write_bytes(b"junk")
    elif damage != "none":
        raise ValueError(damage)


# -- weights files ---------------------------------------------------------------------------------------
def weights_bytes(what: str, edit: Any = None) -> bytes:
    """A weights file: `export` (good .safetensors; `export20` of the depth-20 template), `edited`
    (safetensors changed by `edit`, see `edited_safetensors`), `foreign` (pytorch_resnet_cifar10 layout),
    `step`/`best` (a template checkpoint, `edit` = "cut" or "flip" damages it), `garbage`, `empty`."""
    if what == "export":
        return exported_bytes()
    if what == "export20":  # the depth-20 template's newest checkpoint (hub's resnet20 entry takes it)
        return safetensors_of(multi_run(20) / "checkpoints" / STEPS[-1])
    if what == "edited":
        return edited_safetensors(edit)
    if what == "foreign":
        return foreign_bytes()
    if what in ("step", "best"):
        raw = (multi_run() / "checkpoints" / (STEPS[-1] if what == "step" else "best.pt")).read_bytes()
        if edit == "cut":
            return raw[: len(raw) * 2 // 3]
        if edit == "flip":
            return raw[:1000] + bytes([raw[1000] ^ 1]) + raw[1001:]
        return raw
    if what == "garbage":
        return os.urandom(300)
    return b""


# the edits of an exported .safetensors file, with the reason a reader must refuse it (None: it may accept)
SAFETENSORS_EDITS: dict[str, tuple[tuple[Any, ...], str | None]] = {
    **{f"image_size={label}": (("image_size", v), "image_size not a usable side" if v is not None else None)
       for label, v in (("0", 0), ("1", 1), ("-1", -1), ("10**9", 10**9), ("2**63", 2**63), ("'32'", "32"),
                        ("true", True), ("32.0", 32.0), ("null", None), ("Infinity", float("inf")))},
    "classes: 2 names for 10 outputs": (("classes", ["a", "b"]), "class names do not fit the classifier"),
    "classes: ints": (("classes", list(range(10))), "class names are not strings"),
    "classes: newline": (("classes", [f"c{i}\nline" for i in range(10)]), None),
    "classes: escape": (("classes", [f"\x1b[31mc{i}" for i in range(10)]), None),
    "classes: None": (("classes", None), None),
    "classes: a string": (("classes", "0123456789"), "class names are not a list"),
    "classes: duplicates": (("classes", ["same"] * 10), "class names repeat"),
    "spec: widths 10**6": (("spec", "widths", [10**6] * 3), "spec beyond any net"),
    "spec: depth 10**9": (("spec", "depth", 10**9), "spec beyond any net"),
    "spec: depth 20 (tensors of 8)": (("spec", "depth", 20), "tensors do not fit the spec"),
    "spec: num_classes 3": (("spec", "num_classes", 3), "tensors do not fit the spec"),
    "spec: no depth": (("spec_drop", "depth"), None),  # a spec field with a default may be left out
    "spec: no widths": (("spec_drop", "widths"), None),
    "spec: unknown field": (("spec", "nope", 1), "unknown spec field"),
    "spec: a list": (("info", "spec", []), "spec is not an object"),
    "info: a list": (("info_doc", []), "metadata is not an object"),
    "info: nested 100000": (("raw_info", "[" * 100_000 + "]" * 100_000), "metadata nested beyond reason"),
    "info: spec nested 100000": (("raw_info", '{"spec": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                                 "metadata nested beyond reason"),
    "info: not JSON": (("raw_info", "{bad json"), "metadata not JSON"),
    "format: other": (("format", "other"), "not resnetlab's metadata"),
    "norm: mean (5,1,1)": (("norm", "mean", "five"), "normalisation does not fit 3 channels"),
    "norm: mean 1-D": (("norm", "mean", "flat"), None),  # broadcast over channels? only if it is read right
    "norm: mean (3,7,7)": (("norm", "mean", "pixel7"), "per-pixel mean of another size"),
    "norm: NaN mean": (("norm", "mean", "nan"), "NaN normalisation"),
    "norm: zero std": (("norm", "std", "zero"), "zero std"),
    "norm: int std": (("norm", "std", "int"), "integer std"),
    "norm: no std": (("norm", "std", "drop"), "no std"),
    "weights: NaN conv": (("nan", "conv", float("nan")), "NaN weights"),
    "weights: Inf bias": (("nan", "bias", float("inf")), "infinite weights"),
    "weights: float16": (("dtype", "float16"), "weights of another dtype"),
    **{f"length: {h}": (("length", h), "header length lies") for h in ("+1", "-1", "0", "file", "2**63", "2**64-1")},
    **{f"cut at {w}": (("cut", w), "truncated file") for w in ("0", "3", "8", "9", "header/2", "header end",
                                                                 "header end+1", "data/2", "last byte")},
    "header nested 100000": (("header_nested", 100_000), "header nested beyond reason"),
    "header: tensor offsets overlap": (("offsets", "overlap"), "tensor entries overlap"),
    "trailing junk": (("trailing", b"junk"), None),
}


def _norm_tensor(kind: str, like: Any) -> Any:
    import torch

    return {"five": torch.ones(5, 1, 1), "flat": like.flatten(), "pixel7": torch.ones(3, 7, 7),
            "nan": torch.full_like(like, float("nan")), "zero": torch.zeros_like(like),
            "int": torch.ones(like.shape, dtype=torch.int32)}[kind]


def edited_safetensors(edit: tuple[Any, ...]) -> bytes:
    """The exported file changed by `edit` (a key of SAFETENSORS_EDITS, resolved to its tuple)."""
    import safetensors.torch as stt
    import torch

    raw = exported_bytes()
    n = int.from_bytes(raw[:8], "little")
    what = edit[0]
    if what == "length":
        value = {"+1": n + 1, "-1": n - 1, "0": 0, "file": len(raw), "2**63": 2**63, "2**64-1": 2**64 - 1}[edit[1]]
        return value.to_bytes(8, "little") + raw[8:]
    if what == "cut":
        at = {"header/2": 8 + n // 2, "header end": 8 + n, "header end+1": 9 + n, "data/2": (8 + n + len(raw)) // 2,
              "last byte": len(raw) - 1}.get(edit[1])
        return raw[: int(edit[1]) if at is None else at]
    if what == "trailing":
        return raw + edit[1]
    header = json.loads(raw[8:8 + n])
    if what == "header_nested":
        text = (json.dumps(header)[:-1] + ', "x": ' + "[" * edit[1] + "]" * edit[1] + "}").encode()
        return len(text).to_bytes(8, "little") + text + raw[8 + n:]
    if what == "offsets":  # the second tensor's data said to start inside the first one's
        names = [k for k in header if k != "__metadata__"]
        a, b = header[names[0]], header[names[1]]
        length = b["data_offsets"][1] - b["data_offsets"][0]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + length]
        text = json.dumps(header).encode()
        return len(text).to_bytes(8, "little") + text + raw[8 + n:]
    tensors = stt.load(raw)
    meta = dict(header["__metadata__"])
    info = json.loads(meta["resnetlab"])
    if what == "image_size":
        info["image_size"] = edit[1]
    elif what == "classes":
        info["classes"] = edit[1]
    elif what == "spec":
        info["spec"][edit[1]] = edit[2]
    elif what == "spec_drop":
        info["spec"].pop(edit[1], None)
    elif what == "info":
        info[edit[1]] = edit[2]
    elif what == "format":
        meta["format"] = edit[1]
    elif what == "norm":
        key = f"normalization.{edit[1]}"
        if edit[2] == "drop":
            tensors.pop(key)
        else:
            tensors[key] = _norm_tensor(edit[2], tensors[key])
    elif what == "nan":
        name = next(k for k in tensors if k.endswith("weight" if edit[1] == "conv" else "bias")
                    and not k.startswith("normalization"))
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = edit[2]
    elif what == "dtype":
        name = next(k for k in tensors if k.endswith("weight"))
        tensors[name] = tensors[name].to(getattr(torch, edit[1]))
    if what == "info_doc":
        meta["resnetlab"] = json.dumps(edit[1])
    elif what == "raw_info":
        meta["resnetlab"] = edit[1]
    else:
        meta["resnetlab"] = json.dumps(info)  # allow_nan: an Infinity image size stays what the edit says
    return stt.save(tensors, metadata=meta)


# -- images ----------------------------------------------------------------------------------------------
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]
IMAGE_KINDS = ([f"mode {m}" for m in MODES]
               + ["1x1", "1x100000", "100000x1", "declared 100000x100000", "declared 8193x8192", "png missing rows",
                  "jpeg partial frame", "png cut in its data", "zero bytes", "png named .jpg", "jpeg named .png",
                  "text", "animated gif", "exif rotated jpeg"])
# what a reader must refuse: the file is not a whole image (PIL itself decodes some of these without a word)
INVALID_IMAGES = {"png missing rows": "a PNG whose data covers half its rows",
                  "jpeg partial frame": "a JPEG whose scan covers a quarter of its declared frame",
                  "png cut in its data": "a PNG cut inside its image data", "zero bytes": "an empty image file",
                  "text": "a text file as an image"}


def image_file(kind: str, seed: int) -> tuple[bytes, str]:
    """The bytes of an image file of `kind` and the suffix its name gets."""
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)  # not square: the crop matters

    def save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    if kind.startswith("mode "):
        mode = kind[5:]
        arrays = {"1": rgb[..., 0] > 127, "L": rgb[..., 0], "LA": rgb[..., :2].copy(), "RGB": rgb,
                  "RGBA": rng.integers(0, 256, (12, 10, 4), dtype=np.uint8),
                  "I;16": rng.integers(0, 65536, (12, 10), dtype=np.uint16),
                  "I": rng.integers(0, 65536, (12, 10), dtype=np.int32),
                  "F": rng.random((12, 10), dtype=np.float32)}
        if mode == "P":
            img = Image.fromarray(rgb).convert("P")
        elif mode == "PA":
            img = Image.fromarray(rgb).convert("P").convert("PA")
        elif mode == "CMYK":
            img = Image.fromarray(rgb).convert("CMYK")
        elif mode == "1":
            img = Image.fromarray(arrays["1"])
        else:
            img = Image.fromarray(arrays[mode], mode if mode in ("LA", "RGBA") else None)
        try:
            return save(img, "PNG"), ".png"
        except OSError:  # PA, I, F, CMYK: TIFF, under a .png name (content decides, not the suffix)
            return save(img, "TIFF"), ".png"
    if kind in ("1x1", "1x100000", "100000x1"):
        w, h = (int(v) for v in kind.split("x"))
        return save(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "PNG"), ".png"
    if kind.startswith("declared "):
        w, h = (int(v) for v in kind.split()[1].split("x"))
        return _crafted_png(w, h, b"\x00" * 64), ".png"
    if kind == "png missing rows":  # IDAT holds 6 of 12 rows; PIL fills the rest without an error
        rows = b"".join(b"\x00" + rgb[r].tobytes() for r in range(6))
        ihdr = struct.pack(">IIBBBBB", 10, 12, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
                + _png_chunk(b"IEND", b"")), ".png"
    if kind == "jpeg partial frame":  # the frame header claims 4x the rows its scan holds; PIL pads with grey
        jpeg = bytearray(save(Image.fromarray(rgb), "JPEG"))
        sof = jpeg.find(b"\xff\xc0")
        jpeg[sof + 5:sof + 7] = (48).to_bytes(2, "big")
        return bytes(jpeg), ".jpg"
    if kind == "png cut in its data":
        png = save(Image.fromarray(rgb), "PNG")
        return png[: png.find(b"IDAT") + 20], ".png"
    if kind == "zero bytes":
        return b"", ".png"
    if kind == "png named .jpg":
        return save(Image.fromarray(rgb), "PNG"), ".jpg"
    if kind == "jpeg named .png":
        return save(Image.fromarray(rgb), "JPEG"), ".png"
    if kind == "text":
        return b"not an image\n", ".png"
    if kind == "animated gif":
        return save(Image.fromarray(rgb), "GIF", save_all=True, append_images=[Image.fromarray(255 - rgb)]), ".png"
    if kind == "exif rotated jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90
        return save(Image.fromarray(rgb), "JPEG", exif=exif), ".jpg"
    raise ValueError(kind)


NAMES = ["img", "new\nline", "\x1b[31mred", "car\rriage", "tab\tname", "sp ace ", "ünïcödé", "bell\x07"]


# -- families --------------------------------------------------------------------------------------------
FORMATS = st.sampled_from(["safetensors"] * 16 + ["pt2"] * 3 + ["onnx"])  # onnx: ~2-8 s a case; pt2: ~1 s
_RUN = ("run", "multi", "none")


def _weights_source(argv: list[str], name: str, what: str, edit: Any = None) -> tuple[list[str], list[Any], str]:
    return argv, [_RUN, ("weights", name, what, edit)], name


SOURCES: dict[str, tuple[list[str], list[tuple[Any, ...]], str]] = {
    # name: (argv part, set-up steps, the input file an output must not replace ("" if none))
    "run": (["{root}/run"], [_RUN], ""),
    "run --best": (["{root}/run", "--best"], [_RUN], ""),
    "run newest corrupt": (["{root}/run"], [("run", "multi", "newest_corrupt")], ""),
    "run with no steps": (["{root}/run"], [("run", "multi", "summary_no_checkpoints")], ""),
    "step checkpoint": ([f"{{root}}/run/checkpoints/{STEPS[-1]}"], [_RUN], f"run/checkpoints/{STEPS[-1]}"),
    "oldest step checkpoint": ([f"{{root}}/run/checkpoints/{STEPS[0]}"], [_RUN], f"run/checkpoints/{STEPS[0]}"),
    "best.pt": (["{root}/run/checkpoints/best.pt"], [_RUN], "run/checkpoints/best.pt"),
    "safetensors": _weights_source(["--weights", "{root}/in/w.safetensors"], "in/w.safetensors", "export"),
    "foreign --model": _weights_source(["--weights", "{root}/in/w.th", "--model", "resnet20"], "in/w.th", "foreign"),
    "foreign": _weights_source(["--weights", "{root}/in/w.th"], "in/w.th", "foreign"),
    "checkpoint cut": _weights_source(["--weights", "{root}/in/w.pt"], "in/w.pt", "step", "cut"),
    "checkpoint flipped": _weights_source(["{root}/in/w.pt"], "in/w.pt", "step", "flip"),
    "safetensors NaN weights": _weights_source(["--weights", "{root}/in/w.safetensors"], "in/w.safetensors",
                                               "edited", ("nan", "conv", float("nan"))),
    "garbage": _weights_source(["--weights", "{root}/in/w.pt"], "in/w.pt", "garbage"),
}
TARGETS = ["new", "existing file", "own step checkpoint", "own best.pt", "own config.json", "input", "link to input",
           "directory", "missing folder", "300-character name", "fifo", "/dev/null", "run directory"]


def _target(name: str, fmt: str, input_rel: str) -> tuple[str, list[tuple[Any, ...]], tuple[str, ...]]:
    """An -o target: (path template, extra set-up steps, writable relative paths)."""
    if name == "input" and input_rel:
        return "{root}/" + input_rel, [], ()
    if name == "link to input" and input_rel:
        return "{root}/link." + fmt, [("link", f"link.{fmt}", input_rel)], (f"link.{fmt}",)
    fixed = {"new": (f"{{root}}/out.{fmt}", [], ()),
             "existing file": (f"{{root}}/old.{fmt}", [("bytes", f"old.{fmt}", b"an older export")], (f"old.{fmt}",)),
             "own step checkpoint": (f"{{root}}/run/checkpoints/{STEPS[-1]}", [], ()),
             "own best.pt": ("{root}/run/checkpoints/best.pt", [], ()),
             "own config.json": ("{root}/run/config.json", [], ()),
             "directory": ("{dir}", [], ()), "missing folder": (f"{{root}}/nope/out.{fmt}", [], ()),
             "300-character name": ("{root}/" + "n" * 296 + f".{fmt}", [], ()), "fifo": ("{fifo}", [], ()),
             "/dev/null": ("/dev/null", [], ()), "run directory": ("{root}/run", [], ())}
    return fixed.get(name, fixed["new"])


def export_cases() -> st.SearchStrategy[Case]:
    """`resnetlab export`: every format from every kind of source, to every kind of hostile -o target. The
    judge checks that nothing the command read was replaced (the run's checkpoints, its config, the input),
    that a successful export is whole and holds the right weights, and that a failed one leaves no file."""

    def build(source: str, fmt: str, target: str) -> Case:
        argv_part, steps, input_rel = SOURCES[source]
        out, extra, writable = _target(target, fmt, input_rel)
        return Case("export", ["export", *argv_part, "--format", fmt, "-o", out], _setups(*steps, *extra),
                    writable=writable)

    # a new file half the time, so that successful exports (and their weights) are checked as often as refusals
    targets = st.sampled_from(["new"] * (len(TARGETS) - 1) + TARGETS[1:])
    return st.builds(build, st.sampled_from(sorted(SOURCES)), FORMATS, targets)


PREDICT_NETS: dict[str, tuple[list[str], list[str], list[tuple[Any, ...]]]] = {
    # name: (argv before the images, argv after them, set-up steps)
    "run": (["{root}/run"], [], [_RUN]),
    "run --best": (["{root}/run"], ["--best"], [_RUN]),
    "run --best before the images": (["{root}/run", "--best"], [], [_RUN]),  # as `predict RUN --best IMG`
    "run newest corrupt": (["{root}/run"], [], [("run", "multi", "newest_corrupt")]),
    "folder run": (["{root}/run"], [], [("run", "folder", "none")]),
    "checkpoint": ([f"{{root}}/run/checkpoints/{STEPS[1]}"], [], [_RUN]),
    "safetensors": ([], ["--weights", "{root}/w.safetensors"], [("weights", "w.safetensors", "export", None)]),
}
HOSTILE_METADATA = ["classes: newline", "classes: escape", "classes: 2 names for 10 outputs", "image_size=1",
                    "image_size=0", "image_size=10**9", "image_size='32'", "weights: NaN conv",
                    "norm: mean 1-D", "norm: NaN mean", "weights: Inf bias"]


def predict_cases() -> st.SearchStrategy[Case]:
    """`resnetlab predict` on generated images: every PIL mode, 1x1 and 1x100000 pixels, huge declared sizes,
    corruption PIL does not notice (a PNG missing rows, a JPEG frame its scan does not fill: must be refused),
    wrong extensions, empty files, folders nested two deep, and file names with a newline, a carriage return or
    a terminal escape sequence; the net a run directory, a checkpoint, or an exported .safetensors (good or with
    hostile metadata); text and --json output with --top-k values. The judge checks one output line (or JSON
    row) per image, no control character or NaN in stdout, and, where a run or checkpoint names the weights,
    the probabilities those weights give."""
    # plain RGB a third of the time, so that a case with a hostile name or a second image reaches the output
    kinds = st.sampled_from(["mode RGB"] * (len(IMAGE_KINDS) // 2) + IMAGE_KINDS)
    image = st.tuples(kinds, st.sampled_from(NAMES), st.sampled_from(["arg", "folder", "nested"]),
                      st.integers(0, 2**16))

    def net(name: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        if name in PREDICT_NETS:
            return PREDICT_NETS[name]
        return [], ["--weights", "{root}/w.safetensors"], [("weights", "w.safetensors", "edited",
                                                               SAFETENSORS_EDITS[name][0])]

    # mostly good nets and --top-k values, so that the images are what is tested
    nets = st.sampled_from([n for n in sorted(PREDICT_NETS) if "before" not in n] * 4
                           + ["run --best before the images"] + HOSTILE_METADATA).map(net)
    top_k = st.sampled_from([None] * 4 + ["1", "2", "3", "10", "11", "1000000", "0", "-1"])

    def build(net: tuple[list[str], list[str], list[tuple[Any, ...]]], images: list[tuple[str, str, str, int]],
              k: str | None, as_json: bool) -> Case:
        files, args, invalid = [], [], []
        for i, (kind, name, where, seed) in enumerate(images):
            suffix = image_file(kind, seed)[1]
            folder = {"arg": "in", "folder": "imgs", "nested": "imgs/sub/deeper"}[where]
            rel = f"{folder}/{name}{i}{suffix}"
            files.append((rel, kind, seed))
            if where == "arg":
                args.append("{root}/" + rel)
            if kind in INVALID_IMAGES:
                invalid.append(INVALID_IMAGES[kind])
        if any(w != "arg" for _, _, w, _ in images):
            args.append("{root}/imgs")
        argv = ["predict", *net[0], *args, *net[1], *(["--top-k", k] if k else []), *(["--json"] if as_json else [])]
        return Case("predict", argv, _setups(*net[2], ("images", tuple(files))), writable=(),
                    invalid="; ".join(sorted(set(invalid))))

    return st.builds(build, nets, st.lists(image, min_size=1, max_size=3), top_k, st.booleans())


HUB_WEIGHTS: dict[str, tuple[str | None, list[tuple[Any, ...]], str]] = {
    # name: (weights argument, set-up steps, why it must be refused ("" if it must load))
    "none": (None, [], ""),
    "run": ("{root}/run", [("run", "multi20", "none")], ""),
    "run newest corrupt": ("{root}/run", [("run", "multi20", "newest_corrupt")], ""),
    "run with no steps": ("{root}/run", [("run", "multi20", "summary_no_checkpoints")], "no checkpoint"),
    "checkpoint": (f"{{root}}/run/checkpoints/{STEPS[1]}", [("run", "multi20", "none")], ""),
    "safetensors": ("{root}/w.safetensors", [("weights", "w.safetensors", "export20", None)], ""),
    "safetensors NaN": ("{root}/w.safetensors",
                        [("weights", "w.safetensors", "edited", SAFETENSORS_EDITS["weights: NaN conv"][0])],
                        "NaN weights"),
    "safetensors nested": ("{root}/w.safetensors",
                           [("weights", "w.safetensors", "edited", SAFETENSORS_EDITS["info: nested 100000"][0])],
                           "metadata nested beyond reason"),
    "safetensors cut": ("{root}/w.safetensors",
                        [("weights", "w.safetensors", "edited", SAFETENSORS_EDITS["cut at data/2"][0])], "truncated"),
    "foreign": ("{root}/w.th", [("weights", "w.th", "foreign", None)], ""),
    "garbage": ("{garbage}", [], "garbage"), "missing": ("{missing}", [], "missing"),
    "empty": ("{empty}", [], "empty"), "directory": ("{dir}", [], "a plain folder"),
    "fifo": ("{fifo}", [], "a FIFO"), "devnull": ("/dev/null", [], "a device"), "loop": ("{loop}", [], "a loop"),
}
HUB_OVERRIDES = [{}] * 8 + [{"depth": 8}, {"num_classes": 3}, {"nope": 1}, {"depth": -1}, {"depth": 10**9},
                             {"widths": "x"}, {"shortcut": "nope"}, {"num_classes": 0}]


def hub_cases() -> st.SearchStrategy[Case]:
    """hubconf's entry points called in-process (`hubconf.NAME(weights=..., **overrides)`, sometimes through
    `torch.hub.load(repo, NAME, source="local")`), with weights of every kind and spec overrides with and
    without weights. A bad input must raise a resnetlab error or ValueError of one line; a good one must give
    a model in eval mode whose weights are the run's newest good checkpoint (or the file's)."""
    names = st.sampled_from(["resnet20"] * 4 + ["resnet56", "plain20", "preact_resnet20", "resnet18"])

    def build(via: str, name: str, weights: str, overrides: dict[str, Any], as_path: bool) -> Case:
        arg, steps, why = HUB_WEIGHTS[weights]
        kwargs = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        if arg is not None:
            kwargs.insert(0, f"weights{':path' if as_path else ''}={arg}")
        invalid = why if arg is not None and name == "resnet20" and not overrides else ""
        return Case("hub", [via, name, *kwargs], _setups(*steps), writable=(), invalid=invalid)

    return st.builds(build, st.sampled_from(["hub"] * 3 + ["hub.load"]), names, st.sampled_from(sorted(HUB_WEIGHTS)),
                     st.sampled_from(HUB_OVERRIDES), st.booleans())


def safetensors_cases() -> st.SearchStrategy[Case]:
    """An exported .safetensors with one generated change (SAFETENSORS_EDITS: metadata values, spec fields,
    nesting, normalisation tensors, NaN weights, header lengths, cuts at every kind of offset), read by eval
    --weights, predict --weights, export --weights and train --init. Where the change makes the file invalid,
    exit 0 is a finding (the file's claims are believed, or silently replaced by defaults)."""
    commands = {
        "eval": ["eval", "--weights", "{root}/w.safetensors", "--data", "synthetic:8"],
        "predict": ["predict", "--weights", "{root}/w.safetensors", "{root}/img.png"],
        "predict --json": ["predict", "--weights", "{root}/w.safetensors", "{root}/img.png", "--json", "--top-k",
                           "3"],
        "export": ["export", "--weights", "{root}/w.safetensors", "--format", "safetensors", "-o",
                   "{root}/out.safetensors"],
        "train --init": ["train", *TINY, "--init", "{root}/w.safetensors", "--out", "{root}/run2"]}
    # image size and class names matter to predict and export (which write them on); the rest to every reader
    uses_meta = {"predict", "predict --json", "export"}

    def build(edit: str, command: str) -> Case:
        change, why = SAFETENSORS_EDITS[edit]
        if why and change[0] in ("image_size", "classes") and command not in uses_meta:
            why = None
        return Case("safetensors", list(commands[command]),
                    _setups(("weights", "w.safetensors", "edited", change), ("images", (("img.png", "mode RGB", 0),))),
                    writable=(), invalid=why or "")

    return st.builds(build, st.sampled_from(sorted(SAFETENSORS_EDITS)), st.sampled_from(sorted(commands)))


def rundir_cases() -> st.SearchStrategy[Case]:
    """A run directory in an odd state (RUN_DAMAGES: the newest checkpoint corrupt, cut, empty or a folder; a
    temporary file of a killed write; no checkpoints; no best.pt; config.json nested 100,000 deep or missing a
    section; a run locked by a live trainer), given to eval, export, predict, train --resume and report. The
    judge checks the readers' answers come from the newest checkpoint that verifies and nothing is changed,
    except by --resume, which may write its own run (and must not when it refuses)."""
    commands = {
        "eval": ["eval", "{root}/run"], "eval --best": ["eval", "{root}/run", "--best"],
        "export": ["export", "{root}/run", "--format", "safetensors", "-o", "{root}/out.safetensors"],
        "export --best": ["export", "{root}/run", "--best", "--format", "safetensors", "-o", "{root}/out.safetensors"],
        "predict": ["predict", "{root}/run", "{root}/img.png", "--json"],
        "resume": ["train", "--resume", "{root}/run"],
        "report": ["report", "{root}/run", "-o", "{root}/r.html"]}

    def build(damage: str, command: str) -> Case:
        writable = ("run",) if command == "resume" and damage != "locked" else ()
        return Case("rundir", list(commands[command]),
                    _setups(("run", "multi", damage), ("images", (("img.png", "mode RGB", 0),))), writable=writable)

    return st.builds(build, st.sampled_from(RUN_DAMAGES), st.sampled_from(sorted(commands)))


CACHE_VALUES = {"unset": None, "a file": "{root}/cachefile", "below a file": "{root}/cachefile/sub",
                "unwritable (0o500)": "{root}/ro", "missing deep path": "{root}/a/b/c/d", "empty": "",
                "relative": "rel/cache", "~/cache": "~/cache", "normal": "{root}/cache"}
HOME_VALUES = {"unset": None, "a file": "{root}/homefile", "missing": "{root}/nohome/x", "empty": "",
               "normal": "{root}/home"}


def env_cases() -> st.SearchStrategy[Case]:
    """The environment: RESNETLAB_CACHE a file, below a file, an unwritable folder (0o500: root writes there
    anyway, so `below a file` is the case that bites every user), a missing deep path, empty or relative; HOME
    unset, a file, missing or empty; around commands that use the data cache (train and eval on `folder:`
    data) or expand `~` (--out ~/run, folder:~/data). The cache file given as RESNETLAB_CACHE must be left as
    it was. HOME unset with no cache variable is not generated: the cache would go to the real home."""
    tiny = ["--model", "resnet20", "--set", "model.depth=8", "--iters", "1"]
    commands = {
        "train folder": ["train", *tiny, "--data", "folder:{root}/data", "--out", "{root}/run2"],
        "train folder:~": ["train", *tiny, "--data", "folder:~/data", "--out", "{root}/run2"],
        "train --out ~": ["train", *TINY, "--out", "~/run2"],
        "eval folder": ["eval", "{root}/run", "--data", "folder:{root}/data"],
        "train digits": ["train", *tiny, "--data", "digits", "--out", "{root}/run2"]}

    def build(cache: str, home: str, command: str) -> Case:
        tilde = cache in ("unset", "empty", "~/cache") or "~" in " ".join(commands[command])
        if home in ("unset", "empty") and tilde:
            home = "normal"  # never the real home directory (nor "/" for an empty HOME)
        steps: list[tuple[Any, ...]] = [("folder", "data"), ("bytes", "cachefile", b"not a folder\n"),
                                        ("bytes", "homefile", b"not a folder\n"), ("mkdir", "ro", 0o500),
                                        ("folder", "home/data")]
        if command == "eval folder":
            steps.insert(0, ("run", "folder", "none"))
        env = {"RESNETLAB_CACHE": CACHE_VALUES[cache], "HOME": HOME_VALUES[home]}
        return Case("env", list(commands[command]), _setups(*steps), env=env, writable=())

    return st.builds(build, st.sampled_from(sorted(CACHE_VALUES)), st.sampled_from(sorted(HOME_VALUES)),
                     st.sampled_from(sorted(commands)))


STRATEGIES = {"export": export_cases, "predict": predict_cases, "hub": hub_cases, "safetensors": safetensors_cases,
              "rundir": rundir_cases, "env": env_cases}


# -- running: the environment and the hub entry points ---------------------------------------------------
@contextlib.contextmanager
def environment(case: Case, root: Path) -> Iterator[None]:
    """`case.env` set for the duration ({root} filled in; None unsets a variable), then restored."""
    saved = {k: os.environ.get(k) for k in case.env}
    try:
        for key, value in case.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value.replace("{root}", str(root))
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_HUB: dict[str, Any] = {}  # the model the last hub case returned, for `after`


def hub_main(argv: list[str]) -> int:
    """A hub case as a command: `hub NAME [weights[:path]=W] [K=JSON]...` calls `hubconf.NAME(...)` in-process
    (`hub.load`: through torch.hub.load). A resnetlab error or ValueError is printed as `resnetlab: error:`
    (all its lines: the judge wants one) and exits 2; any other exception escapes (a finding)."""
    import torch

    from resnetlab.errors import ResnetlabError

    _HUB.clear()
    via, name, *pairs = argv
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key.startswith("weights"):
            kwargs["weights"] = Path(value) if key == "weights:path" else value
        else:
            kwargs[key] = json.loads(value)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        if via == "hub.load":
            model = torch.hub.load(str(REPO), name, source="local", trust_repo=True, verbose=False, **kwargs)
        else:
            import hubconf

            model = getattr(hubconf, name)(**kwargs)
    except (ResnetlabError, ValueError) as exc:
        print(f"resnetlab: error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"hubconf.{name} returned a {type(model).__name__}, not a module")
    if "weights" in kwargs and (model.training or not hasattr(model, "pretrained")):
        raise AssertionError(f"hubconf.{name}(weights=...) returned a model in training mode or without .pretrained")
    _HUB["model"] = model
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")
    return 0


def runner(argv: list[str]) -> Any:
    """The function a case's argument list is given to: the CLI's main, or `hub_main`."""
    if argv and argv[0] in ("hub", "hub.load"):
        return hub_main
    from resnetlab.cli import main

    return main


# -- the judge's extra checks ----------------------------------------------------------------------------
@dataclass
class Before:
    """What the case directory held before the command ran, and the answers known in advance."""

    files: dict[str, tuple[Any, ...]]  # relative path -> ("file", size, sha256) | ("link", target) | (kind,)
    writable: tuple[str, ...]
    expected: Path | None = None  # the checkpoint (or weights file) a reader must use, where one is known
    images: list[str] | None = None  # predict: the image files it must answer for, in order
    output: str | None = None  # export: the -o path
    extra: dict[str, Any] = field(default_factory=dict)


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    found: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            st_ = os.lstat(path)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    found[rel] = ("file", st_.st_size, hashlib.sha256(f.read()).hexdigest())
            else:
                found[rel] = ("special",)
    return found


def _option(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a in names:
            return argv[i + 1]
    for a in argv:
        for n in names:
            if n.startswith("--") and a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def _derived_writable(argv: list[str], root: Path) -> tuple[str, ...]:
    """For a case of the older families, which declare nothing: the targets of its output and --resume options."""
    found = []
    for value in (_option(argv, "-o", "--output"), _option(argv, "--out"), _option(argv, "--resume")):
        if value:  # paths as given (not resolved: one may be a symlink loop)
            found.append(os.path.relpath(os.path.join(root, value), root))
    return tuple(found)


def newest_good(run: Path) -> Path | None:
    """The newest step checkpoint of `run` that verifies and holds weights: what a run directory means."""
    from resnetlab.errors import ResnetlabError
    from resnetlab.weights.checkpoint import is_tensor_map, load_checkpoint

    folder = run / "checkpoints"
    if not folder.is_dir():
        return None
    for path in sorted((p for p in folder.iterdir() if re.fullmatch(r"step-\d{8}\.pt", p.name)), reverse=True):
        try:
            if path.is_file() and is_tensor_map(load_checkpoint(path)["model"]):
                return path
        except ResnetlabError:
            continue
    return None


def _source(argv: list[str]) -> tuple[str | None, bool]:
    """The run directory, checkpoint or weights file a reader command names, and whether --best is given."""
    best = "--best" in argv
    weights = _option(argv, "--weights")
    if argv and argv[0] in ("hub", "hub.load"):
        weights = next((a.split("=", 1)[1] for a in argv if a.startswith("weights")), None)
        return weights, False
    if weights is not None:
        return weights, best
    positional = _positionals(argv)
    return (positional[0] if positional else None), best


def _positionals(argv: list[str]) -> list[str]:
    takes_value = {"--weights", "--model", "--top-k", "--format", "-o", "--output", "--data", "--split",
                   "--batch-size", "--device"}
    out, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a in takes_value:
            skip = True
        elif not a.startswith("-") or a == "-":
            out.append(a)
    return out


def _expected_weights(source: str | None, best: bool) -> Path | None:
    """The file whose weights a reader of `source` must use (None: unknown, or none is usable)."""
    if source is None:
        return None
    path = Path(source)
    if path.is_dir():
        if best:
            return path / "checkpoints" / "best.pt" if (path / "checkpoints" / "best.pt").is_file() else None
        return newest_good(path)
    return path if path.is_file() and not best else None


def _state_of(path: Path) -> dict[str, Any] | None:
    """The weights a checkpoint or exported .safetensors holds (None: another kind of file)."""
    from resnetlab.weights.checkpoint import load_checkpoint

    raw = path.read_bytes()
    try:
        if raw.endswith(b"RESNETLAB-CKPT-1"):
            return dict(load_checkpoint(path)["model"])
        import safetensors.torch as stt

        return {k: v for k, v in stt.load(raw).items() if not k.startswith("normalization.")}
    except Exception:  # noqa: BLE001 - an unreadable file: no expectation
        return None


def _same_state(got: dict[str, Any], want: dict[str, Any]) -> str | None:
    import torch

    if set(got) != set(want):
        return f"tensor names differ ({sorted(set(got) ^ set(want))[:2]})"
    for key in want:
        if got[key].shape != want[key].shape or not torch.equal(got[key].float(), want[key].float()):
            return f"tensor {key} differs"
    return None


def _image_list(items: list[str]) -> list[str]:
    files: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        else:
            files.append(item)
    return files


def before(case: Case, argv: list[str], root: Path) -> Before:
    """Record the case directory and what the answer must be, before the command runs."""
    writable = case.writable if case.writable is not None else _derived_writable(argv, root)
    state = Before(_snapshot(root), tuple(writable))
    command = argv[0] if argv else ""
    if command in ("export", "predict", "eval", "hub", "hub.load"):
        with contextlib.suppress(OSError):  # a path the OS refuses (a name too long, a loop): no answer known
            state.expected = _expected_weights(*_source(argv))
    if command == "export":
        state.output = _option(argv, "-o", "--output")
        state.extra["output_existed"] = state.output is not None and os.path.lexists(state.output)
    if command == "predict":
        items = _positionals(argv)
        with contextlib.suppress(OSError):
            state.images = _image_list(items if "--weights" in argv else items[1:])
        k = _option(argv, "--top-k") or "5"
        state.extra["top_k"] = int(k) if re.fullmatch(r"-?\d+", k) else None
    return state


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")
NON_FINITE = re.compile(r"(?<![\w.])[-+]?(nan|inf|infinity)(?![\w])", re.IGNORECASE)


def _inside(rel: str, prefixes: tuple[str, ...]) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


def after(case: Case, argv: list[str], root: Path, rc: int | None, stdout: str, stderr: str,
          ran: Before) -> str | None:
    """The first problem the extra checks find once the command has ended (and passed the older checks)."""
    now = _snapshot(root)
    for rel, was in ran.files.items():
        if not _inside(rel, ran.writable) and now.get(rel) != was:
            return f"input replaced: {rel}" if rel in now else f"input removed: {rel}"
    found = CONTROL.search(stderr)
    if found:  # an error naming a hostile file or value: the terminal would obey its escape sequences
        return f"control character {found.group()!r} on stderr"
    if rc == 0 and case.invalid:
        return f"accepted invalid input ({case.invalid})"
    if rc == 0:
        problem = _stdout_problem(argv, stdout)
        if problem:
            return problem
    command = argv[0] if argv else ""
    if command == "export":
        return _export_problem(argv, root, rc, ran)
    if command == "predict" and rc == 0:
        return _predict_problem(argv, stdout, ran)
    if command == "eval" and rc == 0 and ran.expected is not None:
        used = stdout.split(": ", 1)[0]
        if "/checkpoints/" in used and Path(used) != ran.expected:
            return f"eval used {Path(used).name}, not the newest good checkpoint {ran.expected.name}"
    if command in ("hub", "hub.load") and rc == 0 and ran.expected is not None and "model" in _HUB:
        want = _state_of(ran.expected)
        if want is not None:
            diff = _same_state(_HUB["model"].state_dict(), want)
            if diff:
                return f"hub model is not the weights of {ran.expected.name}: {diff}"
    return None


def _stdout_problem(argv: list[str], stdout: str) -> str | None:
    found = CONTROL.search(stdout)
    if found:
        return f"control character {found.group()!r} on stdout"
    for line in stdout.splitlines():
        if NON_FINITE.search(line):
            return f"non-finite number on stdout: {line.strip()[:100]!r}"
    if "--json" in argv:
        def refuse(token: str) -> Any:
            raise ValueError(f"bare {token}")

        try:
            json.loads(stdout, parse_constant=refuse)
        except ValueError as exc:
            return f"--json output is not strict JSON ({str(exc)[:80]})"
    return None


def _export_problem(argv: list[str], root: Path, rc: int | None, ran: Before) -> str | None:
    out = ran.output
    if out is None or out in ("/dev/null",):
        return "export to /dev/null reported success" if rc == 0 and out == "/dev/null" else None
    if not out.strip():  # an empty -o is refused; Path("") would be the current folder, which exists anyway
        return "export to an empty path reported success" if rc == 0 else None
    path = Path(out)
    rel = os.path.relpath(path, root) if path.is_absolute() else out
    if rc != 0:
        if os.path.lexists(path) and not ran.extra.get("output_existed"):
            return f"failed export left {rel}"
        return None
    if not path.is_file() or path.stat().st_size == 0:
        return f"export reported success but {rel} is not a whole file"
    fmt = _option(argv, "--format")
    if fmt == "safetensors":
        import safetensors

        try:
            with safetensors.safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            json.loads(meta["resnetlab"])
        except Exception as exc:  # noqa: BLE001
            return f"exported safetensors unreadable: {type(exc).__name__}"
        if ran.expected is not None:
            want, got = _state_of(ran.expected), _state_of(path)
            if want is not None and got is not None:
                diff = _same_state(got, want)
                if diff:
                    return f"export wrote other weights than {ran.expected.name}: {diff}"
    elif fmt == "pt2":
        import zipfile

        if not zipfile.is_zipfile(path):
            return "exported pt2 is not a zip archive"
    elif fmt == "onnx":
        import onnx

        try:
            onnx.checker.check_model(str(path))
        except Exception as exc:  # noqa: BLE001
            return f"exported onnx fails onnx.checker: {type(exc).__name__}"
    return None


def _predict_problem(argv: list[str], stdout: str, ran: Before) -> str | None:
    images = ran.images
    if ran.images is None:
        return None
    if "--json" not in argv:
        lines = stdout.splitlines()
        if len(lines) != len(images):
            return f"predict printed {len(lines)} lines for {len(images)} images"
        return None
    rows = json.loads(stdout)
    if not isinstance(rows, list) or len(rows) != len(images):
        return f"predict --json gave {len(rows) if isinstance(rows, list) else '?'} rows for {len(images)} images"
    if sorted(str(r.get("image")) for r in rows) != sorted(images):
        return "predict --json rows do not name the images given"
    for row in rows:
        top = row.get("top")
        probs = [t.get("probability") for t in top] if isinstance(top, list) else None
        if not probs or not all(isinstance(p, float | int) and 0 <= p <= 1 for p in probs):
            return f"predict --json: probabilities not in [0, 1]: {str(probs)[:80]}"
        if any(a < b for a, b in zip(probs, probs[1:], strict=False)) or sum(probs) > 1 + 1e-4:
            return f"predict --json: probabilities not descending or summing above 1: {probs[:5]}"
        k = ran.extra.get("top_k")
        if k is not None and len(probs) > k:
            return f"predict --json: {len(probs)} classes for --top-k {k}"
    if ran.expected is not None and ran.expected.read_bytes().endswith(b"RESNETLAB-CKPT-1"):
        return _predict_oracle(rows, ran.expected)
    return None


def _predict_oracle(rows: list[dict[str, Any]], ckpt: Path) -> str | None:
    """The top class and probability each image gets from `ckpt`'s weights (the library's own preprocessing)."""
    import torch

    from resnetlab.weights.export import load_image, load_pretrained

    pre = load_pretrained(ckpt)
    for row in rows:
        x = load_image(Path(row["image"]), pre)[None]
        with torch.no_grad():
            probs = torch.softmax(pre.model(pre.normalise(x)).float(), dim=1)[0]
        got = row["top"][0]
        mine = [float(p) for c, p in zip(pre.classes, probs.tolist(), strict=True) if c == got["class"]]
        # the top class (a tie may name either) with its probability, to the 6 digits predict prints
        if not mine or abs(max(mine) - got["probability"]) > 1e-4 or got["probability"] < float(probs.max()) - 1e-4:
            return (f"predict is not the answer of {ckpt.name}: {got['class']} {got['probability']:.4f}, "
                    f"{ckpt.name} gives {pre.classes[int(probs.argmax())]} {float(probs.max()):.4f}")
    return None


"""A fuzzer of hostile input (issue 14): what a careless or hostile user could hand the `resnetlab` command.

Hypothesis generates six families of cases; each runs in-process through `resnetlab.cli.main(argv)` and must
end the way every bad input should:

- exit 0, or exit 2 with exactly one line `resnetlab: error: ...` on stderr (exit 1 only for a suite whose
  members failed, with its one line); never a Python exception escaping `main` (a traceback);
- within a time bound (a FIFO or device read forever, an absurd net built until the process was killed);
- leaving no half-written output: no temporary file (`.NAME.tmp...`) in the case's directory afterwards.

Families: `args` (argument lists of every command, with hostile numbers and paths), `set` (`train --set
KEY=VALUE` over every config field), `config` (a run's config.json replaced by another JSON document),
`summary` (a run's summary.json and metrics.jsonl replaced), `checkpoint` (a torch-saved payload of
generated shape given to eval, predict, export and train --init), `suite` (a generated suite TOML),
`images` (image folders and tarballs holding hostile image files: odd modes, truncated files, decompression
bombs, other formats under a PNG/JPEG name; trained on, evaluated on, predicted) and `weights` (safetensors
files with a damaged header, metadata or tensor entry, and state_dicts in the CIFAR peer's or torchvision's
layout with keys missing, reshaped or of another dtype, some in PyTorch's legacy serialization and other
pickle protocols), `cifar` (a CIFAR-10 archive in the original python layout with one member replaced by a
batch of other dtypes, shapes or labels, another pickle protocol, junk, a pickle that calls code, or none).
Six more reach issue 22's surfaces (`export`, `predict`, `hub`, `safetensors`, `rundir`, `env`), with the judge's
checks of silent wrong answers and lost data (inputs unchanged, clean stdout, the right weights): both in
scripts/fuzz_surfaces.py. Two more reach issue 25's services, the CIFAR download against a loopback server of
generated behaviour (`fetch`) and the experiment trackers (`tracker`), with their own checks: in
scripts/fuzz_services.py.

    python scripts/fuzz.py --cases 5000 --out results/fuzz/campaign.json   # the campaign, by family
    pytest tests/test_fuzz.py                                               # a few hundred cases in CI

The campaign does not stop at the first finding: it runs every case and writes each distinct finding (family,
kind, the exception or message) with the first argument list that showed it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from resnetlab.errors import EXIT_DIVERGED  # a diverged `train` (a reported result, not bad input)

# the categories Python's default warning filters hide from a user (outside __main__): not findings
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
TIME_BOUND_S = 120.0  # a case that takes longer is a finding (a hang or an unbounded allocation)
TINY = ["--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:8", "--iters", "1"]
FAMILIES = ("args", "set", "config", "summary", "checkpoint", "suite", "images", "weights", "cifar",
            "export", "predict", "hub", "safetensors", "rundir", "env",  # these six: scripts/fuzz_surfaces.py
            "fetch", "tracker",  # issue 25's services: scripts/fuzz_services.py
            "reuse",  # issue 30's reused work: scripts/fuzz_reuse.py
            "killtrack")  # issue 30: a tracked run killed and resumed, scripts/fuzz_killtrack.py (its own runner)

# -- values ----------------------------------------------------------------------------------------------
NUMBERS = ["0", "-1", "-3", "1", "2", "7", "1e9", "1e400", "-1e400", "nan", "inf", "-inf", "", "1.5", "-0.5",
           "999999999999999999999", "true", "false", "[1, 2]", "[]", "{}", "x", "'", "\"", "None", "0x10",
           "1_000", " 3 ", "١٢"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _paths(root: Path) -> dict[str, str]:
    """Hostile paths, made once per case directory."""
    (root / "dir").mkdir(exist_ok=True)
    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(os.urandom(257))
    (root / "text.toml").write_text("this is = not [toml\n")
    (root / "doc.json").write_text('{"model": 5}')
    fifo = root / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    loop = root / "loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    return {"missing": str(root / "missing"), "dir": str(root / "dir"), "empty": str(root / "empty.pt"),
            "garbage": str(root / "garbage.pt"), "text": str(root / "text.toml"), "json": str(root / "doc.json"),
            "fifo": str(fifo), "loop": str(loop), "devnull": "/dev/null", "devzero": "/dev/zero", "dot": ".",
            "blank": "", "long": str(root / ("a" * 300)), "deep": str(root / "dir" / "x" / "y" / "z.png")}


PATH_KEYS = ["missing", "dir", "empty", "garbage", "text", "json", "fifo", "loop", "devnull", "devzero", "dot",
             "blank", "long", "deep"]


# -- cases -----------------------------------------------------------------------------------------------
@dataclass
class Case:
    family: str
    argv: list[str]
    files: dict[str, Any] = field(default_factory=dict)  # relative path -> JSON value, bytes or torch payload
    env: dict[str, str | None] = field(default_factory=dict)  # set around the command ({root} filled; None: unset)
    writable: tuple[str, ...] | None = None  # paths (relative) it may change; None: its -o/--out/--resume targets
    invalid: str = ""  # why the input must be refused, where it must: exit 0 on it is a finding

    def render(self, root: Path) -> list[str]:
        """The argument list with {NAME} placeholders replaced by paths under `root`."""
        paths = _paths(root) | {"root": str(root)}
        return [re.sub(r"\{(\w+)\}", lambda m: paths.get(m.group(1), m.group(0)), a) for a in self.argv]


def _path_arg() -> st.SearchStrategy[str]:
    return st.sampled_from([f"{{{k}}}" for k in PATH_KEYS])


def _value() -> st.SearchStrategy[str]:
    return st.sampled_from(NUMBERS) | st.text(alphabet=st.characters(blacklist_characters="\x00",
                                                                      blacklist_categories=["Cs"]), max_size=8)


def _data_arg() -> st.SearchStrategy[str]:
    schemes = st.sampled_from(["digits", "synthetic", "synthetic:", "cifar10:", "cifar100:", "folder:",
                               "imagenet:", "nope:", ":", "synthetic:-1", "synthetic:1e9", "synthetic:3"])
    return st.one_of(schemes, st.builds(lambda s, p: s + p, schemes, _path_arg()))


def args_cases() -> st.SearchStrategy[Case]:
    """Argument lists of every command, with hostile numbers, names and paths."""
    model = st.sampled_from(["resnet20", "plain20", "preact_resnet164", "resnet18", "nope", "", "resnet",
                             "resnet20 ", "RESNET20"])
    override = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
        ["depth", "units", "widths", "strides", "num_classes", "in_channels", "shortcut", "shortcut_scale",
         "gate_bias", "dropout", "unit", "option", "block", "stem", "stem_width", "expansion", "recompute",
         "input_size", "nope", ""]), _value())
    info = st.builds(lambda m, o, s: ["info", m, *sum((["--override", x] for x in o), []),
                                      *(["--input-size", s] if s else [])],
                     model, st.lists(override, max_size=3), st.none() | _value())
    # a filter always: the whole table (every net to 1,202 layers, built to count) is slow, not hostile
    models = st.builds(lambda f, s: ["models", "--filter", f"resnet2{f}", *(["--input-size", s] if s else [])],
                       st.text(max_size=4), st.none() | _value())
    evaluate = st.builds(lambda p, extra: ["eval", p, *extra], _path_arg(), st.lists(
        st.sampled_from(["--best", "--split=val", "--batch-size=0", "--batch-size=-1", "--data=digits",
                         "--device=cuda:9", "--model=nope"]), max_size=2))
    weights = st.builds(lambda p, d, m: ["eval", "--weights", p, "--data", d, *(["--model", m] if m else [])],
                        _path_arg(), _data_arg(), st.none() | model)
    export = st.builds(lambda p, f, o: ["export", "--weights", p, "--model", "resnet20", "--format", f, "-o", o],
                       _path_arg(), st.sampled_from(["safetensors", "onnx", "pt2", "zip", ""]), _path_arg())
    predict = st.builds(lambda w, imgs, k: ["predict", "--weights", w, *imgs, "--top-k", k],
                        _path_arg(), st.lists(_path_arg(), min_size=1, max_size=2), _value())
    report = st.builds(lambda dirs, o: ["report", *dirs, "-o", o], st.lists(_path_arg(), min_size=1, max_size=2),
                       _path_arg())
    train = st.builds(lambda d, flag, v, out: ["train", *TINY[:4], "--data", d, flag, v, "--out", out],
                      _data_arg(), st.sampled_from(["--iters", "--epochs", "--seed", "--val-split", "--recipe",
                                                    "--device", "--init", "--resume"]),
                      _value() | _path_arg(), st.sampled_from(["{root}/run", "{dir}", "{devnull}", "{dot}",
                                                               "{blank}", "{fifo}"]))
    experiment = st.builds(lambda s, flag, v: ["experiment", s, "--scale", "small", "--data", "synthetic:8",
                                               "--iters", "1", "--only", "nope", flag, v, "--out", "{root}/suite"],
                           st.sampled_from(["degradation", "nope", "{text}", "{dir}", "{fifo}", "{json}", "list"]),
                           st.sampled_from(["--seeds", "--epochs", "--iters", "--scale"]), _value())
    analyze = st.builds(lambda m, b, o: ["analyze", "propagation", "--model", m, "--batch-size", b, "--out", o],
                        model, _value(), _path_arg())
    argv = st.one_of(info, models, evaluate, weights, export, predict, report, train, experiment, analyze)
    return st.builds(lambda a: Case("args", a), argv)


def config_fields() -> list[str]:
    import dataclasses

    from resnetlab.settings.config import Config

    cfg = Config()
    keys = [f"model.{k}" for k in ("depth", "shortcut", "unit", "widths", "num_classes", "nope")]
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(value)]
    return keys + ["nope.x", "optim", "optim.", ".lr", "run.seed.x"]


def set_cases() -> st.SearchStrategy[Case]:
    """`train --set KEY=VALUE` over every config field, with hostile values: checked before any work."""
    pair = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(config_fields()), _value())
    return st.builds(lambda pairs: Case("set", ["train", *TINY, *sum((["--set", p] for p in pairs), []),
                                                "--out", "{root}/run"]),
                     st.lists(pair, min_size=1, max_size=2))


RUN_COMMANDS = [["eval", "{root}/run"], ["train", "--resume", "{root}/run"], ["report", "{root}/run", "-o",
                "{root}/r.html"], ["export", "{root}/run", "--format", "safetensors", "-o", "{root}/w.safetensors"],
                ["predict", "{root}/run", "{root}/dir"]]


def config_cases() -> st.SearchStrategy[Case]:
    """A finished tiny run whose config.json is replaced by another JSON document (or a field of it)."""
    return st.builds(lambda doc, cmd: Case("config", cmd, {"run/config.json": doc}),
                     JSON_VALUES | st.builds(_patched_config, st.sampled_from(config_fields()), JSON_VALUES),
                     st.sampled_from(RUN_COMMANDS))


def summary_cases() -> st.SearchStrategy[Case]:
    """A finished tiny run whose summary.json or metrics.jsonl is replaced; read back by report and eval."""
    metrics = st.lists(JSON_VALUES, max_size=3).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode())
    return st.builds(lambda name, doc, cmd: Case("summary", cmd, {f"run/{name}": doc}),
                     st.sampled_from(["summary.json", "metrics.jsonl"]), JSON_VALUES | metrics,
                     st.sampled_from(RUN_COMMANDS[:3] + [["report", "{root}", "-o", "{root}/r.html"]]))


def checkpoint_cases() -> st.SearchStrategy[Case]:
    """A torch-saved payload of generated shape, given wherever a checkpoint or weights file is read."""
    tensor_like = st.sampled_from(["float32", "int8", "bool", "float16", "float64", "empty", "nan", "scalar"])
    fields = st.sampled_from(["spec", "model", "config", "norm", "data", "progress", "optimizer", "rng", "schedule"])
    payload = st.one_of(
        JSON_VALUES,
        fields.map(lambda field_: {"__patch__": field_, "value": {"__delete__": True}}),
        st.dictionaries(st.sampled_from(["spec", "model", "config", "norm", "progress", "data", "state_dict",
                                         "best_prec1", "optimizer", "rng", "version"]),
                        JSON_VALUES | tensor_like.map(lambda t: {"__tensor__": t}), max_size=6),
        st.builds(lambda field_, value: {"__patch__": field_, "value": value},
                  fields, JSON_VALUES | tensor_like.map(lambda t: {"__tensor__": t})))
    cmd = st.sampled_from([["eval", "{root}/ckpt.pt"], ["eval", "--weights", "{root}/ckpt.pt", "--data",
                                                         "synthetic:8", "--model", "resnet20"],
                           ["predict", "--weights", "{root}/ckpt.pt", "{root}/dir"],
                           ["export", "--weights", "{root}/ckpt.pt", "--format", "safetensors", "-o",
                            "{root}/w.safetensors"],
                           ["train", *TINY, "--init", "{root}/ckpt.pt", "--out", "{root}/run2"]])
    return st.builds(lambda p, c: Case("checkpoint", c, {"ckpt.pt": ("torch", p)}), payload, cmd)


def suite_cases() -> st.SearchStrategy[Case]:
    """A generated suite file: valid TOML of the wrong shape, or plain junk."""
    key = st.sampled_from(["title", "source", "recipe", "members", "label", "model", "set", "small", "cpu",
                           "paper", "override"])
    toml_value = st.sampled_from(['5', '"x"', 'true', '[]', '[5]', '{}', '{ depth = 8 }', '{ depth = -1 }',
                                  '"resnet20"', '{ "optim.lr" = "x" }', 'nan', '1e400', '[{ label = 5 }]',
                                  '[{ label = "a", model = "resnet20", small = { depth = 8 } }]'])
    member = st.dictionaries(key, toml_value, max_size=5).map(
        lambda d: "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }")
    doc = st.builds(lambda top, members: "\n".join(f"{k} = {v}" for k, v in top.items())
                    + "\nmembers = [" + ", ".join(members) + "]\n",
                    st.dictionaries(st.sampled_from(["title", "source", "recipe"]), toml_value, max_size=3),
                    st.lists(member, max_size=2))
    text = doc | st.text(max_size=40)
    return st.builds(lambda t: Case("suite", ["experiment", "{root}/s.toml", "--scale", "small", "--data",
                                              "synthetic:8", "--iters", "1", "--out", "{root}/suite"],
                                    {"s.toml": t}), text)


# -- hostile images ---------------------------------------------------------------------------------------
IMAGE_KINDS = ["rgb", "rgb_1x1", "rgb_tall", "grey", "grey_alpha", "bilevel", "palette", "palette_transparent",
               "rgba", "cmyk_jpeg", "grey16", "int32", "float_tiff_as_png", "truncated_png", "truncated_jpeg",
               "garbage", "empty", "text", "gif_animated", "webp_as_png", "bmp_as_jpg", "bomb_png",
               "huge_header_png", "zero_width_png", "png_bad_crc", "jpeg_header_only"]


def _png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    import struct
    import zlib

    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) if crc is None else crc))


def _crafted_png(width: int, height: int, rows: bytes, bad_crc: bool = False) -> bytes:
    """A PNG written by hand: its header may claim any size (a decompression bomb, a zero width)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows),
                                                                        1 if bad_crc else None)
            + _png_chunk(b"IEND", b""))


def image_bytes(kind: str, seed: int) -> bytes:
    """The bytes of one hostile (or merely unusual) image file of `kind`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)

    def save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    png = save(Image.fromarray(rgb), "PNG")
    jpeg = save(Image.fromarray(rgb), "JPEG")
    makers: dict[str, Callable[[], bytes]] = {
        "rgb": lambda: png,
        "rgb_1x1": lambda: save(Image.fromarray(rgb[:1, :1]), "PNG"),
        "rgb_tall": lambda: save(Image.fromarray(rng.integers(0, 256, (300, 1, 3), dtype=np.uint8)), "PNG"),
        "grey": lambda: save(Image.fromarray(rgb[..., 0], "L"), "PNG"),
        "grey_alpha": lambda: save(Image.fromarray(rgb[..., :2].copy(), "LA"), "PNG"),
        "bilevel": lambda: save(Image.fromarray(rgb[..., 0]).convert("1"), "PNG"),
        "palette": lambda: save(Image.fromarray(rgb).convert("P"), "PNG"),
        "palette_transparent": lambda: save(Image.fromarray(rgb).convert("P"), "PNG", transparency=0),
        "rgba": lambda: save(Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA"), "PNG"),
        "cmyk_jpeg": lambda: save(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "grey16": lambda: save(Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)), "PNG"),
        "int32": lambda: save(Image.fromarray(rng.integers(-2**31, 2**31 - 1, (8, 8), dtype=np.int32), "I"),
                              "TIFF"),
        "float_tiff_as_png": lambda: save(Image.fromarray(rng.random((8, 8), dtype=np.float32), "F"), "TIFF"),
        "truncated_png": lambda: png[: int(rng.integers(1, len(png)))],
        "truncated_jpeg": lambda: jpeg[: int(rng.integers(1, len(jpeg)))],
        "garbage": lambda: rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8).tobytes(),
        "empty": lambda: b"",
        "text": lambda: b"this is not an image\n",
        "gif_animated": lambda: save(Image.fromarray(rgb), "GIF", save_all=True,
                                     append_images=[Image.fromarray(255 - rgb)]),
        "webp_as_png": lambda: save(Image.fromarray(rgb), "WEBP"),
        "bmp_as_jpg": lambda: save(Image.fromarray(rgb), "BMP"),
        # 200,000 x 200,000 pixels claimed by a 100-byte file: PIL's bomb check must stop it before decoding
        "bomb_png": lambda: _crafted_png(200_000, 200_000, b"\x00" * 64),
        # 10,000 x 10,000 (below PIL's error threshold): a 300 MB decode from a file of a few hundred bytes
        "huge_header_png": lambda: _crafted_png(10_000, 10_000, b"\x00" * 64),
        "zero_width_png": lambda: _crafted_png(0, 8, b""),
        "png_bad_crc": lambda: _crafted_png(8, 8, b"\x00" * (8 * 25), bad_crc=True),
        "jpeg_header_only": lambda: jpeg[:20],
    }
    return makers[kind]()


def _image_tree(kinds: list[str], seed: int, where: str) -> dict[str, bytes]:
    """An image-folder data set (train/ and test/, two classes) of good 8x8 images, with the hostile
    `kinds` placed at `where` ("train", "test" or "both") under their (sometimes misleading) names."""
    files: dict[str, bytes] = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for j in range(2):
                files[f"data/{split}/{cls}/{j}.png"] = image_bytes("rgb", seed + j + (cls == "dog") * 7)
    for i, kind in enumerate(kinds):
        split = where if where != "both" else ("train", "test")[i % 2]
        suffix = ".jpg" if "jpeg" in kind or kind == "bmp_as_jpg" else ".png"
        files[f"data/{split}/{('cat', 'dog')[i % 2]}/bad{i}{suffix}"] = image_bytes(kind, seed + i)
    return files


def image_cases() -> st.SearchStrategy[Case]:
    """Image folders and tarballs holding hostile image files (modes, truncation, bombs, other formats under a
    JPEG/PNG name), trained on, evaluated on and predicted: each file is decoded as RGB or named in one line."""
    tiny = ["--model", "resnet20", "--set", "model.depth=8", "--iters", "1"]
    kinds = st.lists(st.sampled_from(IMAGE_KINDS), min_size=1, max_size=3)
    commands = {
        "train": ["train", *tiny, "--data", "folder:{root}/data", "--out", "{root}/run2"],
        "train_tar": ["train", *tiny, "--data", "folder:{root}/data.tar.gz", "--out", "{root}/run2"],
        "eval": ["eval", "{root}/run", "--data", "folder:{root}/data"],
        "predict_folder": ["predict", "{root}/run", "{root}/data/train", "{root}/data/test"],
        "predict_files": ["predict", "{root}/run", "--top-k", "2"]}

    def build(k: list[str], seed: int, where: str, command: str) -> Case:
        argv = list(commands[command])
        if command == "predict_files":  # each hostile file by name
            argv += ["{root}/" + name for name in _image_tree(k, seed, where) if "/bad" in name]
        return Case("images", argv, {"__images__": (k, seed, where)})

    return st.builds(build, kinds, st.integers(0, 2**16), st.sampled_from(["train", "test", "both"]),
                     st.sampled_from(sorted(commands)))


# -- hostile CIFAR archives -------------------------------------------------------------------------------
CIFAR10_MEMBERS = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def cifar_cases() -> st.SearchStrategy[Case]:
    """A CIFAR-10 archive in the original python layout (`cifar10:PATH`) with one member replaced: a batch
    dict with generated data and labels (other dtypes, shapes, label ranges, missing keys), a pickle of
    another protocol or of another object, or junk bytes; as a tarball or an extracted directory."""
    data = st.sampled_from(["uint8", "int64", "float32", "rows_3071", "three_d", "empty", "list", "none",
                            "bytes", "one_row"])
    labels = st.one_of(st.lists(st.integers(-3, 12) | st.sampled_from([2**70, True, 1.5, "x", None]),
                                max_size=4), st.sampled_from([5, "x", None, [[1, 2], [3]]]))
    batch = st.fixed_dictionaries({}, optional={"data": data, "labels": labels,
                                                "labels_key": st.sampled_from([b"labels", "labels", b"fine",
                                                                               5])})
    meta = st.sampled_from(["ten", "nine", "ints", "not_utf8", "str_key", "list"])
    replaced = st.one_of(
        st.builds(lambda m, b, proto: ("batch", m, b, proto), st.sampled_from(CIFAR10_MEMBERS[:-1]), batch,
                  st.integers(0, 5)),
        st.builds(lambda m, proto: ("meta", m, proto), meta, st.integers(0, 5)),
        st.builds(lambda m, junk: ("junk", m, junk), st.sampled_from(CIFAR10_MEMBERS),
                  st.sampled_from([b"", b"\x80\x05junk", b"cos\nsystem\n(S'true'\ntR.", b"\x80\x02]q\x00."])),
        st.builds(lambda m: ("missing", m), st.sampled_from(CIFAR10_MEMBERS)))
    cmd = st.sampled_from([["train", *TINY[:4], "--iters", "1", "--data", "cifar10:{root}/cifar-10-python.tar.gz",
                            "--out", "{root}/run2"],
                           ["train", *TINY[:4], "--iters", "1", "--data", "cifar10:{root}/cifar-10-batches-py",
                            "--out", "{root}/run2"]])
    return st.builds(lambda r, c: Case("cifar", c, {"__cifar__": r}), replaced, cmd)


def cifar_member(rep: tuple[Any, ...], name: str, rng: Any) -> bytes | None:
    """The bytes of CIFAR-10 member `name`: a good one (3 images), or the replacement `rep` describes."""
    import pickle

    import numpy as np

    good_batch = {b"batch_label": b"b", b"labels": [0, 1, 2], b"data": rng.integers(0, 256, (3, 3072),
                                                                                    dtype=np.uint8)}
    good_meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    if rep[0] == "missing" and rep[1] == name:
        return None
    if rep[0] == "junk" and rep[1] == name:
        return rep[2]
    if rep[0] == "batch" and rep[1] == name:
        _, _, spec, proto = rep
        arrays = {"uint8": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                  "int64": np.zeros((3, 3072), dtype=np.int64), "float32": np.zeros((3, 3072), np.float32),
                  "rows_3071": np.zeros((3, 3071), np.uint8), "three_d": np.zeros((3, 3, 1024), np.uint8),
                  "empty": np.zeros((0, 3072), np.uint8), "list": [[0] * 3072] * 3, "none": None,
                  "bytes": b"\0" * 9216, "one_row": np.zeros((1, 3072), np.uint8)}
        blob: dict[Any, Any] = {b"batch_label": b"b"}
        if "data" in spec:
            blob[b"data"] = arrays[spec["data"]]
        if "labels" in spec:
            blob[spec.get("labels_key", b"labels")] = spec["labels"]
        return pickle.dumps(blob, protocol=proto)
    if rep[0] == "meta" and name == "batches.meta":
        _, kind, proto = rep
        names = {"ten": [f"c{i}".encode() for i in range(10)], "nine": [b"c"] * 9, "ints": list(range(10)),
                 "not_utf8": [b"\xff\xfe"] * 10, "list": None, "str_key": None}[kind]
        obj: Any = ({"label_names": [f"c{i}" for i in range(10)]} if kind == "str_key" else
                    [b"c"] * 10 if kind == "list" else {b"label_names": names})
        return pickle.dumps(obj, protocol=proto)
    return pickle.dumps(good_meta if name == "batches.meta" else good_batch, protocol=2)


# -- hostile weights files (safetensors, the CIFAR peer's layout, torchvision's) -------------------------
def weights_cases() -> st.SearchStrategy[Case]:
    """Weights files in the other formats resnetlab reads, damaged: a safetensors file written by `resnetlab
    export` with its header, metadata or a tensor changed, or cut; state_dicts in the CIFAR peer's or
    torchvision's layout with keys missing, extra, reshaped or of another dtype."""
    header_edit = st.one_of(
        st.builds(lambda k, v: ("meta", k, v), st.sampled_from(["format", "resnetlab", "nope"]),
                  st.sampled_from(["", "resnetlab", "{}", "[]", "5", '{"spec": 5}', '{"spec": {"depth": -1}}',
                                   '{"spec": {"depth": 1e400}}', "{bad json", '{"classes": 5}'])),
        st.builds(lambda k, v: ("tensor", k, v), st.sampled_from(["dtype", "shape", "data_offsets", "whole"]),
                  st.sampled_from(["F16", "I8", "BOOL", "X", "", [], [-1], [2**40], [0, 2**40], [5, 1], None,
                                   5, "F64"])),
        st.builds(lambda n: ("cut", n, None), st.integers(1, 4000)),
        st.builds(lambda n: ("length", n, None), st.sampled_from([0, 1, 2**40, 2**63, 99_999_999])),
        st.builds(lambda n: ("drop", n, None), st.sampled_from(["normalization.mean", "normalization.std",
                                                                "fc.weight", "stem.conv.weight"])))
    state_edit = st.tuples(st.sampled_from(["peer", "peer_legacy", "torchvision"]),
                           st.sampled_from(["none", "drop", "extra", "reshape", "int8", "float16", "empty",
                                            "deep", "wide_linear", "prec_str", "prec_tensor", "no_prefix"]),
                           st.sampled_from([2, 4, 5]))  # the pickle protocol
    cmd = st.sampled_from([
        ["eval", "--weights", "{root}/w.{ext}", "--data", "synthetic:8", "--model", "resnet20"],
        ["eval", "--weights", "{root}/w.{ext}", "--data", "synthetic:8"],
        ["train", *TINY[:2], "--data", "synthetic:8", "--iters", "1", "--init", "{root}/w.{ext}", "--out",
         "{root}/run2"],
        ["predict", "--weights", "{root}/w.{ext}", "{root}/img.png"],
        ["export", "--weights", "{root}/w.{ext}", "--format", "safetensors", "-o", "{root}/again.safetensors"]])
    safetensors = st.builds(lambda e, c: Case("weights", [a.replace("{ext}", "safetensors") for a in c],
                                              {"__weights__": ("safetensors", e)}), header_edit, cmd)
    state = st.builds(lambda e, c: Case("weights", [a.replace("{ext}", "th") for a in c],
                                        {"__weights__": ("state", e)}), state_edit, cmd)
    return safetensors | state


def _exported(root: Path) -> bytes:
    """The template run's weights as `resnetlab export` writes them (made once per process)."""
    if "safetensors" not in _TEMPLATE:
        from resnetlab.cli import main

        out = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-")) / "w.safetensors"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["export", str(_template_run()), "--format", "safetensors", "-o", str(out)]) == 0
        _TEMPLATE["safetensors"] = out
    return _TEMPLATE["safetensors"].read_bytes()


def damaged_safetensors(edit: tuple[str, Any, Any]) -> bytes:
    raw = _exported(Path())
    n = int.from_bytes(raw[:8], "little")
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    what, key, value = edit
    if what == "cut":
        return raw[: min(key, len(raw) - 1)]
    if what == "length":
        return key.to_bytes(8, "little") + raw[8:]
    if what == "meta":
        header.setdefault("__metadata__", {})[key] = value
    elif what == "drop":
        header.pop(key, None)
    else:  # one tensor entry's field
        name = next(k for k in header if k != "__metadata__")
        if key == "whole":
            header[name] = value
        else:
            header[name][key] = value
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def damaged_state(edit: tuple[str, str, int]) -> tuple[Any, bool]:
    """A state_dict file in the CIFAR peer's or torchvision's key layout, changed by `edit`; (object, legacy)."""
    import torch

    layout, change = edit[:2]
    if layout == "torchvision":
        state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
                 "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    else:  # the peer's option-A ResNet-20 layout
        state = {"module.conv1.weight": torch.zeros(16, 3, 3, 3), "module.bn1.weight": torch.ones(16),
                 "module.bn1.bias": torch.zeros(16), "module.bn1.running_mean": torch.zeros(16),
                 "module.bn1.running_var": torch.ones(16)}
        for stage, width in enumerate((16, 32, 64), start=1):
            for i in range(3):
                cin = width // 2 if stage > 1 and i == 0 else width
                for conv, c in (("conv1", cin), ("conv2", width)):
                    state[f"module.layer{stage}.{i}.{conv}.weight"] = torch.zeros(width, c, 3, 3)
                    bn = conv.replace("conv", "bn")
                    state[f"module.layer{stage}.{i}.{bn}.weight"] = torch.ones(width)
                    state[f"module.layer{stage}.{i}.{bn}.bias"] = torch.zeros(width)
                    state[f"module.layer{stage}.{i}.{bn}.running_mean"] = torch.zeros(width)
                    state[f"module.layer{stage}.{i}.{bn}.running_var"] = torch.ones(width)
        state["module.linear.weight"] = torch.zeros(10, 64)
        state["module.linear.bias"] = torch.zeros(10)
    first = next(iter(state))
    if change == "drop":
        state.pop(first)
    elif change == "extra":
        state["module.layer9.0.conv1.weight"] = torch.zeros(1)
    elif change == "reshape":
        state[first] = torch.zeros(3, 3)
    elif change in ("int8", "float16"):
        state[first] = state[first].to(getattr(torch, change))
    elif change == "empty":
        state = {}
    elif change == "deep" and layout != "torchvision":
        state["module.layer1.99999.conv1.weight"] = torch.zeros(16, 16, 3, 3)
    elif change == "wide_linear":
        key = "fc.weight" if layout == "torchvision" else "module.linear.weight"
        state[key] = torch.zeros(0, 64)
    elif change == "no_prefix":
        state = {k.removeprefix("module."): v for k, v in state.items()}
    obj: Any = {"state_dict": state, "best_prec1": 91.7}
    if change == "prec_str":
        obj["best_prec1"] = "high"
    elif change == "prec_tensor":
        obj["best_prec1"] = torch.tensor(91.7)
    if layout == "torchvision":
        obj = state
    return obj, layout == "peer_legacy"


STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "args": args_cases, "set": set_cases, "config": config_cases, "summary": summary_cases,
    "checkpoint": checkpoint_cases, "suite": suite_cases, "images": image_cases, "weights": weights_cases,
    "cifar": cifar_cases, **{name: (lambda name=name: _surfaces().STRATEGIES[name]()) for name in FAMILIES[9:15]},
    **{name: (lambda name=name: _services().STRATEGIES[name]()) for name in ("fetch", "tracker")},
    "reuse": lambda: _reuse().STRATEGIES["reuse"](),
    "killtrack": lambda: _killtrack().plans().map(lambda plan: Case("killtrack", plan.argv(), {"__plan__": plan}))}


def _surfaces() -> Any:
    """scripts/fuzz_surfaces.py: the newer families and the judge's checks of inputs, stdout and answers."""
    import tests.fuzz.surfaces as surfaces

    return surfaces


def _services() -> Any:
    """scripts/fuzz_services.py: the fetch and tracker families (issue 25), their set-up and checks."""
    import tests.fuzz.services as services

    return services


def _reuse() -> Any:
    """scripts/fuzz_reuse.py: the reuse family (issue 30), its two calls and its judge."""
    import tests.fuzz.reuse as reuse

    return reuse


def _killtrack() -> Any:
    """scripts/fuzz_killtrack.py: the killtrack family (issue 30), which runs and judges its cases itself."""
    import tests.fuzz.killtrack as killtrack

    return killtrack


def _patched_config(key: str, value: Any) -> dict[str, Any]:
    return {"__patch__": key, "value": value}


# -- running one case -----------------------------------------------------------------------------------
_TEMPLATE: dict[str, Path] = {}


def _template_run() -> Path:
    """A finished tiny run (trained once per process) that run-reading cases copy and damage."""
    if "run" not in _TEMPLATE:
        from resnetlab.cli import main

        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-")) / "run"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["train", *TINY, "--out", str(where)]) == 0
        _TEMPLATE["run"] = where
    return _TEMPLATE["run"]


def _template_folder_run() -> Path:
    """A finished tiny run trained on a good two-class image folder (cat, dog), for eval/predict cases."""
    if "folder_run" not in _TEMPLATE:
        from resnetlab.cli import main

        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-"))
        for name, data in _image_tree([], 0, "train").items():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            (where / name).write_bytes(data)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["train", "--model", "resnet20", "--set", "model.depth=8", "--iters", "1", "--data",
                         f"folder:{where / 'data'}", "--out", str(where / "run")]) == 0
        _TEMPLATE["folder_run"] = where / "run"
    return _TEMPLATE["folder_run"]


def _tensor(kind: str) -> Any:
    import torch

    return {"float32": torch.ones(2, 2), "int8": torch.ones(2, 2, dtype=torch.int8),
            "bool": torch.ones(2, 2, dtype=torch.bool), "float16": torch.ones(2, 2, dtype=torch.float16),
            "float64": torch.ones(2, 2, dtype=torch.float64), "empty": torch.empty(0),
            "nan": torch.full((2, 2), float("nan")), "scalar": torch.tensor(3.0)}[kind]


def _materialise(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__tensor__"}:
        return _tensor(value["__tensor__"])
    if isinstance(value, dict):
        return {k: _materialise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_materialise(v) for v in value]
    return value


def _write(root: Path, case: Case) -> None:
    import torch

    if case.family in ("config", "summary") or any(a.startswith("{root}/run") for a in case.argv):
        shutil.copytree(_template_run(), root / "run", ignore=shutil.ignore_patterns(".lock"))
    for rel, value in case.files.items():
        path = root / rel
        if rel.startswith("__surface__"):  # a set-up step of the newer families
            _surfaces().setup(root, value)
            continue
        if rel.startswith("__service__"):  # a set-up step of the fetch and tracker families
            _services().setup(root, value)
            continue
        if rel == "__reuse__":  # call A and the change of the reuse family
            _reuse().setup(root, value)
            continue
        if rel == "__images__":  # an image folder (and its tarball) with hostile files; a run to evaluate with
            import tarfile

            shutil.rmtree(root / "run", ignore_errors=True)
            shutil.copytree(_template_folder_run(), root / "run", ignore=shutil.ignore_patterns(".lock"))
            for name, data in _image_tree(*value).items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
            with tarfile.open(root / "data.tar.gz", "w:gz") as tar:
                tar.add(root / "data", arcname="data")
            continue
        if rel == "__cifar__":  # the original CIFAR-10 python layout, extracted and as a tarball
            import tarfile

            import numpy as np

            rng = np.random.default_rng(0)
            folder = root / "cifar-10-batches-py"
            folder.mkdir()
            for name in CIFAR10_MEMBERS:
                data = cifar_member(value, name, rng)
                if data is not None:
                    (folder / name).write_bytes(data)
            with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
                tar.add(folder, arcname="cifar-10-batches-py")
            continue
        if rel == "__weights__":
            (root / "img.png").write_bytes(image_bytes("rgb", 0))
            kind, edit = value
            if kind == "safetensors":
                (root / "w.safetensors").write_bytes(damaged_safetensors(edit))
            else:
                obj, legacy = damaged_state(edit)
                torch.save(obj, root / "w.th", pickle_protocol=edit[2],
                           **({"_use_new_zipfile_serialization": False} if legacy else {}))
            continue
        if isinstance(value, tuple) and value[0] == "torch":
            from resnetlab.weights.checkpoint import load_checkpoint, save_checkpoint

            payload = value[1]
            if isinstance(payload, dict) and "__patch__" in payload:  # a real checkpoint with one field changed
                base = load_checkpoint(_template_run() / "checkpoints" / "best.pt")
                if payload["value"] == {"__delete__": True}:  # a real checkpoint without that field
                    del base[payload["__patch__"]]
                else:
                    base[payload["__patch__"]] = _materialise(payload["value"])
                payload = base
            if isinstance(payload, dict):  # in resnetlab's checksummed frame, so the reader gets to the content
                save_checkpoint(path, _materialise(payload))
            else:
                torch.save(_materialise(payload), path)
        elif isinstance(value, bytes):
            path.write_bytes(value)
        elif isinstance(value, str) and rel.endswith(".toml"):
            path.write_text(value)
        elif isinstance(value, dict) and "__patch__" in value:  # config.json with one field changed
            doc = json.loads(path.read_text())
            section, _, key = value["__patch__"].partition(".")
            if isinstance(doc.get(section), dict):
                doc[section][key] = value["value"]
            path.write_text(json.dumps(doc))
        else:
            path.write_text(json.dumps(value))


class _Timeout(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise _Timeout


@dataclass
class Outcome:
    argv: list[str]
    rc: int | None
    err: str
    seconds: float
    problem: str | None  # None: the case ended as bad input should


def run_case(case: Case, root: Path) -> Outcome:
    """Run `case` in the empty directory `root` and judge how it ended."""
    if case.family == "killtrack":  # sessions in child processes, killed and resumed: its own runner and judge
        return Outcome(**_killtrack().run_plan(case.files["__plan__"], root))
    surfaces = _surfaces()
    root.mkdir(parents=True, exist_ok=True)
    try:
        _write(root, case)
        argv = case.render(root)
        ran = surfaces.before(case, argv, root)  # the inputs' hashes, the answer where it is known
    except BaseException:
        surfaces.release()
        raise
    main = surfaces.runner(argv)
    out, err = io.StringIO(), io.StringIO()
    rc: int | None = None
    problem = None
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_BOUND_S)
    start = time.perf_counter()
    cwd = os.getcwd()
    try:
        os.chdir(root)  # a relative default output (runs/, ./propagation.png) lands in the case's directory
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), surfaces.environment(case, root), \
                _services().around(case, root), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every warning the user would see, even under pytest's recorder
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse's one-line usage error
                rc = exc.code if isinstance(exc.code, int) else 2
            for w in caught:  # as Python shows them: deprecation, import and resource warnings are hidden
                if not issubclass(w.category, HIDDEN_WARNINGS):
                    print(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}", file=err)
    except _Timeout:
        problem = f"timeout: still running after {TIME_BOUND_S:.0f} s"
    except BaseException as exc:  # noqa: BLE001 - anything escaping main is the finding
        problem = f"exception: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
        surfaces.release()
    seconds = time.perf_counter() - start
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.startswith("resnetlab") or "Traceback" in ln]
    warned = [ln for ln in text.splitlines() if re.match(r"\S+:\d+: \w+Warning: ", ln)]  # Python's format
    if problem is None:
        if "Traceback" in text:
            problem = "traceback on stderr"
        elif warned:  # a library's warning reaching the user (PIL's decompression-bomb warning, torch's)
            problem = "warning on stderr: " + re.sub(r"^.*?(\w+Warning: )", r"\1", warned[0])[:120]
        elif rc not in (0, 1, EXIT_DIVERGED) and len([ln for ln in text.splitlines() if ln.strip()]) > 1:
            problem = "more than one line on stderr"
        elif rc not in (0, 1, 2, EXIT_DIVERGED):
            problem = f"exit {rc}"
        elif rc == 1 and "member run(s) failed" not in text:
            problem = "exit 1 without a failed suite member"
        elif rc == EXIT_DIVERGED and (argv[:1] != ["train"] or "diverged" not in out.getvalue()):
            problem = f"exit {EXIT_DIVERGED} without a diverged training"
        elif rc not in (0, EXIT_DIVERGED) and len(lines) != 1:
            problem = f"{len(lines)} error lines, not one"
    if problem is None:
        leftovers = [rel for p in root.rglob(".*tmp*") if p.is_file() and (rel := str(p.relative_to(root)))
                     not in ran.files]  # a temporary file the case made (a killed trainer's) is an input
        if leftovers:
            problem = f"half-written output left: {leftovers[0]}"
    if problem is None:
        try:
            problem = (surfaces.after(case, argv, root, rc, out.getvalue(), text, ran)
                       or _services().after(case, argv, root, rc, out.getvalue(), text)
                       or _reuse().after(case, argv, root, rc, out.getvalue(), text))
        except Exception as exc:  # noqa: BLE001 - the judge's own failure, named so it is not taken for the product's
            problem = f"judge failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return Outcome(argv, rc, text.strip().splitlines()[-1][:200] if text.strip() else "", seconds, problem)


def signature(outcome: Outcome) -> str:
    """What makes two findings the same: the kind and the message with numbers and paths blurred."""
    text = re.sub(r"/\S+", "PATH", outcome.problem or "")
    return re.sub(r"\d+", "N", text)[:160]


# -- the campaign ---------------------------------------------------------------------------------------
def campaign(families: list[str], cases: int, seed: int) -> dict[str, Any]:
    """Run `cases` cases per family; every finding kept, not only the first."""
    findings: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    for family in families:
        tally = counts.setdefault(family, {"cases": 0, "exit 0": 0, "one-line error": 0, "findings": 0})

        _family_test(family, cases, seed, tally, findings)()
        print(f"{family}: {tally}", file=sys.stderr, flush=True)
    return {"counts": counts, "findings": sorted(findings.values(), key=lambda f: -f["count"])}


def _family_test(family: str, cases: int, seed: int, tally: dict[str, int],
                 findings: dict[str, dict[str, Any]]) -> Callable[[], None]:
    """A hypothesis test over one family that records each finding instead of stopping at the first."""

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(STRATEGIES[family]())
    def one(case: Case) -> None:
        with tempfile.TemporaryDirectory(prefix="resnetlab-fuzz-") as tmp:
            outcome = run_case(case, Path(tmp))
        tally["cases"] += 1
        if outcome.problem is None:
            tally["exit 0" if outcome.rc == 0 else "one-line error"] += 1
            return
        tally["findings"] += 1
        found = findings.setdefault(f"{family}: {signature(outcome)}", {
            "family": family, "problem": outcome.problem, "count": 0, "argv": outcome.argv,
            "files": {k: repr(v)[:300] for k, v in case.files.items()}})
        found["count"] += 1

    return one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--cases", type=int, default=100, help="cases per family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the counts and findings here (JSON)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases: at least 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    result = campaign(args.families, args.cases, args.seed)
    result |= {"command": "python tools/fuzz_campaign.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "seconds": round(time.time() - started, 1), "cases_per_family": args.cases}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    total = sum(c["cases"] for c in result["counts"].values())
    print(f"{total} cases, {len(result['findings'])} distinct findings", file=sys.stderr)
    for f in result["findings"]:
        print(f"  [{f['count']}x] {f['family']}: {f['problem']}  argv={f['argv']}", file=sys.stderr)
    return 1 if result["findings"] else 0

"""The set-up of issue 22's families (tests.fuzz.surfaces): run directories in the states a crash or a live
trainer leaves, weights files (exported, foreign, edited safetensors, damaged checkpoints) and image files of
every kind, each made by one set-up step of a case."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fuzz.common import (
    STEPS,
    exported_bytes,
    foreign_bytes,
    image_folder,
    multi_run,
    safetensors_of,
    template_folder_run,
    write_files,
)
from tests.fuzz.core import at_case_end
from tests.fuzz.craft import edited_frame, image_file, safetensors_parts


def setup(root: Path, step: tuple[Any, ...]) -> None:
    """Carry out one set-up step of a case in its directory `root`."""
    kind, *args = step
    if kind == "run":  # a copy of a template run, then damaged
        template, damage = args
        shutil.rmtree(root / "run", ignore_errors=True)  # the running copies its one-step run for {root}/run
        src = {"multi": multi_run, "multi20": lambda: multi_run(20), "folder": template_folder_run}[template]()
        shutil.copytree(src, root / "run", ignore=shutil.ignore_patterns(".lock"))
        damage_run(root / "run", damage)
    elif kind == "weights":  # a weights file: exported, foreign, edited safetensors, damaged checkpoint
        name, what, edit = args
        write_files(root, {name: weights_bytes(what, edit)})
    elif kind == "images":  # image files by relative name
        write_files(root, {name: image_file(image_kind, seed)[0] for name, image_kind, seed in args[0]})
    elif kind == "folder":  # a good image-folder data set (for cache-touching commands)
        image_folder(root / args[0])
    elif kind == "link":
        (root / args[0]).symlink_to(root / args[1])
    elif kind == "bytes":
        write_files(root, {args[0]: args[1]})
    elif kind == "mkdir":
        (root / args[0]).mkdir(parents=True, exist_ok=True)
        os.chmod(root / args[0], args[1])
    else:
        raise ValueError(f"unknown set-up step {kind!r}")


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _config_without(run: Path, section: str) -> None:
    doc = json.loads((run / "config.json").read_text())
    doc.pop(section, None)
    (run / "config.json").write_text(json.dumps(doc))


def _locked(run: Path) -> None:
    """A trainer holds the run: an flock on RUN/.lock from this process, until the case ends."""
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242")
    at_case_end(lambda: os.close(fd))


# the states a crash mid-write, a live trainer or a user leave a copied run in: what each does to the run, given
# the run, its checkpoints/ and its step checkpoints (oldest first)
RUN_DAMAGES: dict[str, Callable[[Path, Path, list[Path]], object]] = {
    "none": lambda run, ckpts, steps: None,
    "newest_corrupt": lambda run, ckpts, steps: _flip(steps[-1]),
    "newest_truncated": lambda run, ckpts, steps: steps[-1].write_bytes(
        steps[-1].read_bytes()[: steps[-1].stat().st_size // 2]),
    # created, not yet written: a newer step than the good ones
    "newest_empty": lambda run, ckpts, steps: (ckpts / "step-00000099.pt").write_bytes(b""),
    "newest_is_dir": lambda run, ckpts, steps: (ckpts / "step-00000099.pt").mkdir(),
    "oldest_corrupt": lambda run, ckpts, steps: _flip(steps[0]),
    "all_steps_corrupt": lambda run, ckpts, steps: [_flip(p) for p in steps],
    # a trainer killed while writing the next checkpoint
    "tmp_leftover": lambda run, ckpts, steps: (ckpts / ".step-00000099.pt.tmp-4242").write_bytes(
        steps[-1].read_bytes()[:5000]),
    "no_checkpoints_dir": lambda run, ckpts, steps: shutil.rmtree(ckpts),
    "summary_no_checkpoints": lambda run, ckpts, steps: [p.unlink() for p in list(ckpts.iterdir())],
    "no_best": lambda run, ckpts, steps: (ckpts / "best.pt").unlink(),
    "best_corrupt": lambda run, ckpts, steps: _flip(ckpts / "best.pt"),
    "config_nested": lambda run, ckpts, steps: (run / "config.json").write_text(
        '{"model": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "config_missing_model": lambda run, ckpts, steps: _config_without(run, "model"),
    "config_missing_run": lambda run, ckpts, steps: _config_without(run, "run"),
    "config_list": lambda run, ckpts, steps: (run / "config.json").write_text("[]"),
    "locked": lambda run, ckpts, steps: _locked(run),
    # files that look like checkpoints and are not: must be ignored
    "odd_names": lambda run, ckpts, steps: write_files(ckpts, {"step-00000099.pt.bak": b"junk", "step-99.pt": b"junk"}),
}


def damage_run(run: Path, damage: str) -> None:
    """Put a copied run directory in the state `damage` names (RUN_DAMAGES)."""
    RUN_DAMAGES[damage](run, run / "checkpoints", sorted((run / "checkpoints").glob("step-*.pt")))


def weights_bytes(what: str, edit: Any = None) -> bytes:
    """A weights file: `export` (good .safetensors; `export20` of the depth-20 template, which hub's resnet20
    entry takes), `edited` (see `edited_safetensors`), `foreign` (pytorch_resnet_cifar10 layout), `step` (the
    newest template checkpoint; `edit` "cut" or "flip" damages it), `garbage`."""
    if what == "step":
        raw = (multi_run() / "checkpoints" / STEPS[-1]).read_bytes()
        damaged = {"cut": raw[: len(raw) * 2 // 3], "flip": raw[:1000] + bytes([raw[1000] ^ 1]) + raw[1001:]}
        return damaged.get(edit, raw)
    makers = {"export": exported_bytes, "export20": lambda: safetensors_of(multi_run(20) / "checkpoints" / STEPS[-1]),
              "edited": lambda: edited_safetensors(edit), "foreign": foreign_bytes, "garbage": lambda: os.urandom(300)}
    return makers[what]()


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
    framed = edited_frame(raw, edit)
    if framed is not None:
        return framed
    what = edit[0]
    header = safetensors_parts(raw)[0]
    tensors = stt.load(raw)
    meta = dict(header["__metadata__"])
    info = json.loads(meta["resnetlab"])
    if what in ("image_size", "classes"):
        info[what] = edit[1]
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

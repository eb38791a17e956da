"""Families of hostile input files: image folders and tarballs of hostile images (`images`), damaged safetensors
and peers' state_dicts (`weights`), a CIFAR-10 archive with one member replaced (`cifar`)."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz import craft
from tests.fuzz.common import TINY, TINY_NET, exported_bytes, template_folder_run, write_files
from tests.fuzz.core import Case, Family, register


def image_cases() -> st.SearchStrategy[Case]:
    """Image folders and tarballs holding hostile image files (modes, truncation, bombs, other formats under a
    JPEG/PNG name), trained on, evaluated on and predicted: each file is decoded as RGB or named in one line."""
    kinds = st.lists(st.sampled_from(craft.FOLDER_KINDS), min_size=1, max_size=3)
    commands = {
        "train": ["train", *TINY_NET, "--data", "folder:{root}/data", "--out", "{root}/run2"],
        "train_tar": ["train", *TINY_NET, "--data", "folder:{root}/data.tar.gz", "--out", "{root}/run2"],
        "eval": ["eval", "{root}/run", "--data", "folder:{root}/data"],
        "predict_folder": ["predict", "{root}/run", "{root}/data/train", "{root}/data/test"],
        "predict_files": ["predict", "{root}/run", "--top-k", "2"]}

    def build(k: list[str], seed: int, where: str, command: str) -> Case:
        argv = list(commands[command])
        if command == "predict_files":  # each hostile file by name
            argv += ["{root}/" + name for name in craft.image_tree(k, seed, where) if "/bad" in name]
        return Case("images", argv, steps=(("images", k, seed, where),))

    return st.builds(build, kinds, st.integers(0, 2**16), st.sampled_from(["train", "test", "both"]),
                     st.sampled_from(sorted(commands)))


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
        st.builds(lambda m, b, proto: ("batch", m, b, proto), st.sampled_from(craft.CIFAR10_MEMBERS[:-1]), batch,
                  st.integers(0, 5)),
        st.builds(lambda m, proto: ("meta", m, proto), meta, st.integers(0, 5)),
        st.builds(lambda m, junk: ("junk", m, junk), st.sampled_from(craft.CIFAR10_MEMBERS),
                  st.sampled_from([b"", b"\x80\x05junk", b"cos\nsystem\n(S'true'\ntR.", b"\x80\x02]q\x00."])),
        st.builds(lambda m: ("missing", m), st.sampled_from(craft.CIFAR10_MEMBERS)))
    cmd = st.sampled_from([["train", *TINY_NET, "--data", f"cifar10:{{root}}/{folder}", "--out", "{root}/run2"]
                           for folder in ("cifar-10-python.tar.gz", "cifar-10-batches-py")])
    return st.builds(lambda r, c: Case("cifar", c, steps=(("cifar", r),)), replaced, cmd)


def weights_cases() -> st.SearchStrategy[Case]:
    """Weights files in the other formats resnetlab reads, damaged: an exported safetensors file with its header,
    metadata or a tensor changed, or cut; state_dicts in the CIFAR peer's or torchvision's layout with keys
    missing, extra, reshaped or of another dtype."""
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
                                              steps=(("weights", "safetensors", e),)), header_edit, cmd)
    state = st.builds(lambda e, c: Case("weights", [a.replace("{ext}", "th") for a in c],
                                        steps=(("weights", "state", e),)), state_edit, cmd)
    return safetensors | state


def setup(root: Path, step: tuple[Any, ...]) -> None:
    """`("images", KINDS, SEED, WHERE)`: an image folder (and its tarball) with hostile files, and a run to
    evaluate with; `("cifar", REPLACED)`: the CIFAR-10 python layout, extracted and as a tarball;
    `("weights", KIND, EDIT)`: a damaged safetensors or state_dict file and an image to predict."""
    if step[0] == "images":
        shutil.rmtree(root / "run", ignore_errors=True)
        shutil.copytree(template_folder_run(), root / "run", ignore=shutil.ignore_patterns(".lock"))
        write_files(root, craft.image_tree(*step[1:]))
        with tarfile.open(root / "data.tar.gz", "w:gz") as tar:
            tar.add(root / "data", arcname="data")
    elif step[0] == "cifar":
        write_files(root, craft.cifar_members(step[1]))
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    else:
        import torch

        (root / "img.png").write_bytes(craft.image_file("mode RGB", 0, (8, 8))[0])
        _, kind, edit = step
        if kind == "safetensors":
            (root / "w.safetensors").write_bytes(craft.edited_frame(exported_bytes(), edit))
        else:
            obj, legacy = craft.damaged_state(edit)
            torch.save(obj, root / "w.th", pickle_protocol=edit[2],
                       **({"_use_new_zipfile_serialization": False} if legacy else {}))


register(Family("images", image_cases, setup), Family("weights", weights_cases, setup),
         Family("cifar", cifar_cases, setup))

"""What the folder and ImageNet readers share (`resnetlab.data.images`, `base.hold_out`, `base.check_count`):
one evaluation-split rule, one validation hold-out, one image decoder, one batch-size check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import load_data
from resnetlab.data.images import decode_image, eval_dir, open_rgb, to_mode
from resnetlab.errors import DataError


def _imagenet_opts(data_opts, **kw):
    return data_opts(crop_size=8, scale=(8, 8), test_resize=8, workers=0, **kw)


def _load(scheme: str, root: Path, data_opts, **kw):
    opts = _imagenet_opts(data_opts, **kw) if scheme == "imagenet" else data_opts(**kw)
    return load_data(f"{scheme}:{root}", opts)


@pytest.mark.parametrize("scheme", ["folder", "imagenet"])
@pytest.mark.parametrize("eval_name", ["val", "test"])
def test_either_eval_folder_name_is_the_test_split(make_folder, data_opts, scheme: str, eval_name: str) -> None:
    root = make_folder(counts=(3, 2), test_dir=eval_name, size=(8, 8))
    src = _load(scheme, root, data_opts)
    assert (src.train_size, src.eval_size("test"), src.has_val) == (6, 4, False)
    _, y = next(iter(src.eval_batches("test", 4)))
    assert y.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("scheme", ["folder", "imagenet"])
def test_both_eval_folders_or_neither_is_one_line_error(make_folder, data_opts, scheme: str) -> None:
    root = make_folder(counts=(3, 2), size=(8, 8))
    shutil.copytree(root / "test", root / "val")
    with pytest.raises(DataError) as info:
        _load(scheme, root, data_opts)
    assert str(info.value) == f"{root}: has both val/ and test/; keep one of them as the evaluation split"
    shutil.rmtree(root / "test")
    shutil.rmtree(root / "val")
    with pytest.raises(DataError) as info:
        _load(scheme, root, data_opts)
    assert str(info.value) == f"{root}: missing val/ or test/ with class folders"


def test_the_rule_holds_inside_a_tarball(make_folder, data_opts, tmp_path: Path) -> None:
    import tarfile

    root = make_folder(counts=(3, 2), size=(8, 8))
    shutil.copytree(root / "test", root / "val")
    archive = tmp_path / "both.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    with pytest.raises(DataError, match=r"both\.tar\.gz: has both val/ and test/"):
        load_data(f"folder:{archive}", data_opts())


def test_eval_dir_rule() -> None:
    assert eval_dir({"train": {}, "val": {}}, "r") == "val"
    assert eval_dir(["train", "test"], "r") == "test"
    with pytest.raises(DataError, match="r: has both"):
        eval_dir(("val", "test"), "r")
    with pytest.raises(DataError, match="r: missing val/ or test/"):
        eval_dir(("train",), "r")


def test_both_readers_hold_out_the_same_validation_images(make_folder, data_opts) -> None:
    root = make_folder(classes=("a", "b", "c"), counts=(5, 1), size=(8, 8))
    folder = _load("folder", root, data_opts, val_split=6, split_seed=3)
    imagenet = _load("imagenet", root, data_opts, val_split=6, split_seed=3)
    for split in ("val", "test"):
        assert folder.eval_size(split) == imagenet.eval_size(split)
        y_folder = torch.cat([y for _, y in folder.eval_batches(split, 4)])
        y_imagenet = torch.cat([y for _, y in imagenet.eval_batches(split, 4)])
        assert torch.equal(y_folder, y_imagenet)
    assert folder.eval_size("val") == 6 and folder.train_size == imagenet.train_size == 9
    assert torch.cat([y for _, y in folder.eval_batches("val", 6)]).bincount().tolist() == [2, 2, 2]
    # the same images, not only the same labels: the folder source's pixels against the files' own
    held = folder.split("val").images
    files = sorted((root / "train").glob("*/*.png"))
    train_pixels = [torch.from_numpy(decode_image(str(f), str(f)).copy()).permute(2, 0, 1) for f in files]
    picked = [i for i, p in enumerate(train_pixels) if any(torch.equal(p, h) for h in held)]
    assert [file for file, _ in imagenet._splits["val"]] == [str(files[i]) for i in picked]


@pytest.mark.parametrize("scheme", ["folder", "imagenet"])
def test_too_large_a_validation_split_is_the_same_error(make_folder, data_opts, scheme: str) -> None:
    root = make_folder(counts=(3, 2), size=(8, 8))
    name = "pets" if scheme == "folder" else str(root)
    with pytest.raises(DataError) as info:
        _load(scheme, root, data_opts, val_split=6)
    assert str(info.value) == f"{name}: DataOptions.val_split=6 must be smaller than the 6 training images"


@pytest.mark.parametrize("scheme", ["folder", "imagenet", "digits"])
@pytest.mark.parametrize("bad", [0, True, 2.0, "4"])
def test_one_batch_size_check(make_folder, data_opts, scheme: str, bad: object) -> None:
    src = load_data("digits", data_opts()) if scheme == "digits" else _load(
        scheme, make_folder(counts=(3, 2), size=(8, 8)), data_opts)
    for call, caller in ((lambda: src.eval_batches("test", bad), "eval_batches"),
                         (lambda: src.steps_per_epoch(bad), "steps_per_epoch"),
                         (lambda: src.train_batches(0, bad, seed=0), "train_batches")):
        with pytest.raises(DataError) as info:
            call()
        assert str(info.value) == f"{caller}: batch_size must be an integer >= 1, got {bad!r}"


def test_one_decoder_for_paths_bytes_and_modes(tmp_path: Path, image_writer) -> None:
    for i, mode in enumerate(("RGB", "L", "RGBA", "P")):
        path = tmp_path / f"{mode}.png"
        image_writer(path, (8, 8), mode=mode, seed=i)
        from_path = decode_image(str(path), "x")
        assert from_path.shape == (8, 8, 3) and from_path.dtype == np.uint8
        assert np.array_equal(from_path, decode_image(path.read_bytes(), "x"))
        assert np.array_equal(from_path, np.asarray(open_rgb(str(path))))
        with Image.open(path) as img:
            img.load()
            assert np.array_equal(np.asarray(to_mode(img, "L")), np.asarray(Image.fromarray(from_path).convert("L")))
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(grey16)
    assert decode_image(str(grey16), "g").tolist() == [[[255] * 3] * 4] * 4
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"bad\.png: cannot decode image"):
        open_rgb(str(bad))
    with pytest.raises(DataError, match=r"^shown: cannot decode image"):
        decode_image(bad.read_bytes(), "shown")

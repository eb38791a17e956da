"""Tests of resnetlab.data: readers, cache, safe unpickling, augmentation, determinism and splits."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import (
    ArrayDataset,
    AugParams,
    DataOptions,
    TensorSource,
    load_data,
    pad_crop_flip,
    parse_data_spec,
    safe_loads,
    stratified_holdout,
)
from resnetlab.data import cifar as cifar_mod
from resnetlab.data import folder as folder_mod
from resnetlab.errors import DataError


def tagged_dataset(n: int = 60, k: int = 3, size: int = 8) -> ArrayDataset:
    """Images whose pixel [0, 0, 0] is the image's index, labels i % k."""
    images = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ArrayDataset(images, torch.arange(n) % k, [f"c{i}" for i in range(k)])


def all_batches(source, **kw):
    """Clones of every (x, y) of ``source.train_batches(**kw)``."""
    return [(x.clone(), y.clone()) for x, y in source.train_batches(**kw)]


def same(a, b) -> bool:
    """Whether two lists of (x, y) batches are identical."""
    return len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
                                    for p, q in zip(a, b, strict=False))


@pytest.mark.parametrize("spec, expected", [
    ("digits", ("digits", None)), ("synthetic", ("synthetic", None)), ("synthetic:64", ("synthetic", "64")),
    ("cifar10:/a/b", ("cifar10", "/a/b")), ("folder:x.tar.gz", ("folder", "x.tar.gz")),
])
def test_parse_data_spec(spec, expected):
    assert tuple(parse_data_spec(spec)) == expected


@pytest.mark.parametrize("spec, needle", [
    ("mnist", "cifar10:PATH"), ("cifar10:", "needs a path"), ("synthetic:x", "synthetic:N"),
    ("digits:3", "no argument"), ("", "valid"),
])
def test_bad_spec(spec, needle):
    with pytest.raises(DataError, match=needle):
        parse_data_spec(spec)


@pytest.mark.parametrize("field, value", [
    ("normalize", "zca"), ("pad", -1), ("val_split", -5), ("workers", -1), ("scale", (300, 200)),
    ("crop_size", 0), ("flip", "yes"),
])
def test_bad_options_name_the_field(field, value):
    with pytest.raises(DataError, match=field):
        DataOptions(**{field: value})


def test_digits_fixed_split():
    a, b = load_data("digits"), load_data("digits", DataOptions(split_seed=7))
    assert (a.name, a.channels, a.image_size, a.train_size, a.eval_size("test")) == ("digits", 1, 8, 1437, 360)
    assert a.classes == [str(i) for i in range(10)] and not a.has_val
    assert torch.equal(a.split("test").images, b.split("test").images)
    assert a.split("train").images.max() == 255 and a.split("train").images.dtype == torch.uint8
    counts = a.split("test").labels.bincount()
    assert counts.min() >= 35 and counts.max() <= 37  # stratified


def test_synthetic_is_deterministic_and_learnable():
    a, b = load_data("synthetic:200"), load_data("synthetic:200")
    assert (a.train_size, a.eval_size("test"), a.channels, a.image_size) == (200, 50, 3, 32)
    assert torch.equal(a.split("train").images, b.split("train").images)
    tr, te = a.split("train"), a.split("test")
    centroids = torch.stack([tr.images[tr.labels == c].float().mean(0) for c in range(10)])
    dist = torch.cdist(te.images.float().flatten(1), centroids.flatten(1))
    assert (dist.argmin(1) == te.labels).float().mean() > 0.9


@pytest.mark.parametrize("as_tar, parent", [(True, False), (False, False), (False, True)])
def test_cifar10_reader(make_cifar, data_opts, as_tar, parent):
    path, exp = make_cifar("cifar10", tar=as_tar)
    src = load_data(f"cifar10:{path.parent if parent else path}", data_opts())
    assert (src.name, src.train_size, src.eval_size("test"), src.num_classes) == ("cifar10", 15, 3, 10)
    assert src.classes[:2] == ["name0", "name1"]
    assert torch.equal(src.split("train").images, torch.from_numpy(exp["train_x"]))
    assert src.split("train").labels.tolist() == exp["train_y"].tolist()
    assert src.split("test").labels.dtype == torch.int64
    # planes: R is the first 1024 values of a row, G the next
    assert int(src.split("test").images[0, 1, 0, 0]) == int(exp["test_x"].reshape(-1, 3072)[0, 1024])


def test_cifar100_reader(make_cifar, data_opts):
    path, exp = make_cifar("cifar100", tar=True, per_batch=5)
    src = load_data(f"cifar100:{path}", data_opts())
    assert (src.num_classes, src.train_size, src.eval_size("test")) == (100, 5, 5)
    assert src.split("test").labels.tolist() == exp["test_y"].tolist() and src.classes[99] == "name99"


def _pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


@pytest.mark.parametrize("member, blob, needle", [
    ("data_batch_2", _pickled({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
     "labels must lie"),
    ("data_batch_1", _pickled({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "shape"),
    ("test_batch", _pickled({b"data": np.zeros((2, 3072), np.uint8)}), "missing key"),
    ("data_batch_3", b"not a pickle at all", "not a readable pickle"),
    ("batches.meta", _pickled({b"label_names": [b"a"]}), "10 class names"),
])
def test_cifar_bad_members(make_cifar, data_opts, member, blob, needle):
    path, _ = make_cifar("cifar10", tar=True, override={member: blob})
    with pytest.raises(DataError, match=needle) as info:
        load_data(f"cifar10:{path}", data_opts())
    assert str(path) in str(info.value) and member in str(info.value) and "\n" not in str(info.value)


def test_cifar_missing_member_and_not_a_tarball(make_cifar, data_opts, tmp_path):
    path, _ = make_cifar("cifar10", tar=False)
    (path / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4"):
        load_data(f"cifar10:{path}", data_opts())
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(DataError, match="junk.tar.gz"):
        load_data(f"cifar10:{junk}", data_opts())
    with pytest.raises(DataError, match="nowhere"):
        load_data(f"cifar10:{tmp_path / 'nowhere'}", data_opts())


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Reduce:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def _fail(*args):
    raise AssertionError("decoded again")


def test_restricted_unpickler_refuses_code(make_cifar, data_opts, tmp_path, py2_batch_pickle):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(marker), protocol=2)
    path, _ = make_cifar("cifar10", tar=True, override={"data_batch_1": evil})
    with pytest.raises(DataError, match=r"refusing to unpickle global .*system") as info:
        load_data(f"cifar10:{path}", data_opts())
    assert "data_batch_1" in str(info.value) and not marker.exists()
    with pytest.raises(DataError, match="builtins.eval"):
        safe_loads(pickle.dumps(_Reduce()), "x.pkl")
    assert safe_loads(_pickled({b"a": np.arange(3, dtype=np.uint8)}), "ok")[b"a"].tolist() == [0, 1, 2]
    old = safe_loads(py2_batch_pickle, "py2")  # the format of the real (Python 2) CIFAR files
    assert old[b"data"].dtype == np.uint8 and old[b"data"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_cache_reuse_and_corrupt_rebuild(make_cifar, data_opts, monkeypatch, tmp_path):
    path, exp = make_cifar("cifar10", tar=True)
    first = load_data(f"cifar10:{path}", data_opts())
    entries = list((tmp_path / "cache").glob("cifar10-*.pt"))
    assert len(entries) == 1
    real = cifar_mod._parse_batch

    monkeypatch.setattr(cifar_mod, "_parse_batch", _fail)
    again = load_data(f"cifar10:{path}", data_opts())
    assert torch.equal(again.split("train").images, first.split("train").images)
    entries[0].write_bytes(b"corrupt")
    calls = []
    monkeypatch.setattr(cifar_mod, "_parse_batch", lambda *a: calls.append(1) or real(*a))
    rebuilt = load_data(f"cifar10:{path}", data_opts())
    assert calls and torch.equal(rebuilt.split("test").images, torch.from_numpy(exp["test_x"]))
    assert entries[0].stat().st_size > 1000


@pytest.mark.parametrize("tar, prefix", [(False, ""), (True, ""), (True, "top")])
def test_folder_reader(make_folder, data_opts, monkeypatch, tar, prefix):
    path = make_folder(tar=tar, prefix=prefix)
    src = load_data(f"folder:{path}", data_opts())
    assert (src.name, src.classes, src.train_size, src.eval_size("test")) == ("pets", ["cat", "dog"], 6, 4)
    assert src.split("train").labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert src.split("train").images.shape == (6, 3, 6, 6)
    monkeypatch.setattr(folder_mod, "decode_image", _fail)
    assert torch.equal(load_data(f"folder:{path}", data_opts()).split("train").images, src.split("train").images)
    if not tar:  # pixels in RGB order; a changed file misses the cache
        with Image.open(path / "test" / "dog" / "001.png") as img:
            assert np.array_equal(src.split("test").images[3].permute(1, 2, 0).numpy(), np.asarray(img))
        os.utime(path / "test" / "dog" / "001.png", ns=(10**9, 10**9))
        with pytest.raises(AssertionError, match="decoded again"):
            load_data(f"folder:{path}", data_opts())


def test_folder_modes_extensions_and_val_dir(make_folder, data_opts, image_writer):
    root = make_folder(test_dir="val")
    for i, mode in enumerate(("L", "RGBA", "P")):
        image_writer(root / "train" / "cat" / f"m{i}.PNG", mode=mode, seed=50 + i)
    image_writer(root / "train" / "dog" / "x.JPG", seed=60)
    (root / "train" / "dog" / "notes.txt").write_text("ignored")
    src = load_data(f"folder:{root}", data_opts())
    assert src.train_size == 10 and src.eval_size("test") == 4 and src.channels == 3
    grey = src.split("train").images[3]  # cat/m0.PNG sorts after cat/002.png
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


@pytest.mark.parametrize("what, needle", [
    ("size", "big.png.*7x6.*6x6"), ("truncated", "bad.png.*cannot decode"), ("empty", "train/fish.*no JPEG"),
    ("unknown", "test/emu.*not a class"), ("notrain", "missing train/"),
])
def test_folder_errors(make_folder, data_opts, image_writer, what, needle):
    root = make_folder()
    if what == "size":
        image_writer(root / "train" / "dog" / "big.png", (7, 6))
    elif what == "truncated":
        good = (root / "test" / "cat" / "001.png").read_bytes()
        (root / "test" / "cat" / "bad.png").write_bytes(good[: len(good) // 2])
    elif what == "empty":
        (root / "train" / "fish").mkdir()
    elif what == "unknown":
        image_writer(root / "test" / "emu" / "a.png")
    else:
        (root / "train").rename(root / "training")
    with pytest.raises(DataError, match=needle) as info:
        load_data(f"folder:{root}", data_opts())
    assert str(root) in str(info.value) and "\n" not in str(info.value)


def test_folder_not_a_tarball_and_symlink_loop(make_folder, data_opts, tmp_path):
    bogus = tmp_path / "bogus.tgz"
    bogus.write_text("hello")
    with pytest.raises(DataError, match="bogus.tgz"):
        load_data(f"folder:{bogus}", data_opts())
    root = make_folder()
    (root / "train" / "loop").symlink_to(root / "train")
    assert load_data(f"folder:{root}", data_opts()).classes == ["cat", "dog"]


def test_pad_crop_flip_matches_manual():
    x = torch.randn(4, 2, 5, 5)
    flips = torch.tensor([False, True, True, False])
    params = AugParams(torch.tensor([0, 2, 4, 1]), torch.tensor([3, 0, 4, 2]), flips)
    out = pad_crop_flip(x, 2, params)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(4):
        oy, ox = int(params.oy[i]), int(params.ox[i])
        crop = padded[i, :, oy:oy + 5, ox:ox + 5]
        assert torch.equal(out[i], crop.flip(-1) if params.flip[i] else crop)


def test_train_batches_determinism_tail_and_ranks():
    src = TensorSource("t", tagged_dataset(), tagged_dataset(10))
    full = all_batches(src, epoch=3, batch_size=8, seed=5)
    assert len(full) == src.steps_per_epoch(8) == 7
    assert same(full, all_batches(src, epoch=3, batch_size=8, seed=5))
    assert same(all_batches(src, epoch=3, batch_size=8, seed=5, start_step=4), full[4:])
    other = all_batches(src, epoch=4, batch_size=8, seed=5)
    assert not torch.equal(other[0][0], full[0][0])
    ranks = [all_batches(src, epoch=3, batch_size=8, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert same([(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(*ranks, strict=True)], full)
    with pytest.raises(DataError, match="divisible"):
        src.train_batches(0, 9, seed=0, world_size=2)
    plain = TensorSource("p", tagged_dataset(), tagged_dataset(10), DataOptions(normalize="none", pad=0, flip=False))
    ids = [round(v * 255) for x, _ in plain.train_batches(0, 8, seed=5) for v in x[:, 0, 0, 0].tolist()]
    assert len(set(ids)) == 56 and ids != sorted(ids)  # a shuffled epoch without repeats, drop_last
    assert src.steps_per_epoch(100) == 1 and len(all_batches(src, epoch=0, batch_size=100, seed=0)[0][1]) == 60


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches():
    """The same images, crops, flips and labels on the GPU: pixels exactly (normalize=none, back to uint8);
    normalised values to float32 rounding (the two devices round x / 255 and the division by std apart)."""
    for opts, exact in ((DataOptions(normalize="none"), True), (DataOptions(), False)):
        src = TensorSource("t", tagged_dataset(), tagged_dataset(10), opts)
        cpu = all_batches(src, epoch=0, batch_size=8, seed=1)
        gpu = [(x.cpu(), y.cpu()) for x, y in src.train_batches(0, 8, seed=1, device="cuda")]
        assert len(cpu) == len(gpu)
        for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
            assert torch.equal(yc, yg)
            if exact:
                assert torch.equal((xc * 255).round(), (xg * 255).round())
            else:
                assert (xc - xg).abs().max().item() < 1e-5


def test_eval_batches_are_plain_and_val_needs_split():
    src = TensorSource("t", tagged_dataset(), tagged_dataset(10), DataOptions(normalize="none"))
    xs = torch.cat([x for x, _ in src.eval_batches("test", 4)])
    assert torch.allclose(xs, tagged_dataset(10).images.float() / 255)
    assert [len(y) for _, y in src.eval_batches("test", 4)] == [4, 4, 2]
    with pytest.raises(DataError, match="val"):
        src.eval_batches("val", 4)


def test_val_split_stratified_disjoint_and_stats_from_train_only():
    data = tagged_dataset(60, k=3)
    src = TensorSource("t", data, tagged_dataset(6), DataOptions(val_split=12, split_seed=1))
    train_ids = set(src.split("train").images[:, 0, 0, 0].tolist())
    val_ids = set(src.split("val").images[:, 0, 0, 0].tolist())
    assert len(train_ids) == 48 and len(val_ids) == 12 and not train_ids & val_ids
    assert src.split("val").labels.bincount().tolist() == [4, 4, 4] and src.has_val
    assert src.eval_size("val") == 12 and sum(len(y) for _, y in src.eval_batches("val", 5)) == 12
    mean = src.norm_state()["mean"]
    assert torch.allclose(mean, src.split("train").images.float().mean(0) / 255, atol=1e-6)
    assert not torch.allclose(mean, data.images.float().mean(0) / 255, atol=1e-4)
    keep, held = stratified_holdout(np.arange(61) % 3, 13, 1)  # quotas 4.33, 4.26, 4.26 -> 5, 4, 4
    assert np.bincount(held % 3).tolist() == [5, 4, 4] and sorted([*keep, *held]) == list(range(61))
    with pytest.raises(DataError, match="val_split"):
        TensorSource("t", data, data, DataOptions(val_split=60))


def test_norm_state_roundtrip():
    a = TensorSource("a", tagged_dataset(), tagged_dataset(10), DataOptions(normalize="channel"))
    b = TensorSource("b", tagged_dataset(30), tagged_dataset(10), DataOptions(normalize="channel"))
    b.load_norm_state(a.norm_state())
    assert torch.equal(next(iter(a.eval_batches("test", 10)))[0], next(iter(b.eval_batches("test", 10)))[0])
    with pytest.raises(DataError, match="mean"):
        b.load_norm_state({"mean": torch.zeros(2), "std": torch.ones(3, 1, 1)})


def test_imagenet_source(imagenet_root, data_opts):
    o = data_opts(crop_size=32, scale=(36, 48), test_resize=36, workers=0)
    src = load_data(f"imagenet:{imagenet_root}", o)
    assert (src.num_classes, src.train_size, src.eval_size("test"), src.image_size) == (3, 12, 6, 32)
    full = all_batches(src, epoch=1, batch_size=4, seed=2)
    assert len(full) == 3 and full[0][0].shape == (4, 3, 32, 32) and full[0][1].dtype == torch.int64
    assert same(all_batches(src, epoch=1, batch_size=4, seed=2, start_step=1), full[1:])
    ranks = [all_batches(src, epoch=1, batch_size=4, seed=2, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat([ranks[0][0][0], ranks[1][0][0]]), full[0][0])
    two_workers = load_data(f"imagenet:{imagenet_root}", dataclasses.replace(o, workers=2))
    assert same(all_batches(two_workers, epoch=1, batch_size=4, seed=2), full)
    x, y = next(iter(src.eval_batches("test", 6)))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2]
    ten = load_data(f"imagenet:{imagenet_root}", dataclasses.replace(o, ten_crop=True))
    x10, _ = next(iter(ten.eval_batches("test", 2)))
    assert x10.shape == (2, 10, 3, 32, 32) and torch.equal(x10[:, 5], x10[:, 0].flip(-1))
    assert torch.equal(x10[:, 4], x[:2])
    (imagenet_root / "val" / "n02" / "v0.JPEG").write_bytes(b"broken")
    with pytest.raises(DataError, match="v0.JPEG"):
        list(src.eval_batches("test", 6))


# ---- issue 30: a data cache that cannot be written or read is a note, never a traceback ------------------------------
def _cache_failure(failure: str, monkeypatch: pytest.MonkeyPatch, cache: Path) -> str:
    """Make the data cache at ``cache`` fail as ``failure`` does; the cache_dir to use."""
    real_save, real_stat = torch.save, Path.stat

    def save(obj: object, f: object, *args: object, **kw: object) -> None:
        if failure == "full disk":  # as torch 2.x on a full disk: part of the file, then a RuntimeError
            Path(str(f)).write_bytes(b"PK\x03\x04" + b"\0" * 60)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1216 vs 1110")
        if failure == "read-only":  # as torch 2.x in an existing read-only folder (measured on a ro tmpfs)
            raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                               "Read-only file system")
        real_save(obj, f, *args, **kw)

    def stat(self: Path, **kw: object) -> os.stat_result:
        if str(self).startswith(str(cache)):  # a folder without search permission (not root): stat is EACCES
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kw)

    monkeypatch.setattr(torch, "save", save)
    if failure == "unreadable":
        monkeypatch.setattr(Path, "stat", stat)
    if failure == "below a file":
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("a file")
        return str(cache / "sub")
    if failure == "no home":  # a container's user without a home: expanduser raises
        def homeless(self: Path) -> Path:
            if not str(self).startswith("~"):
                return self
            raise RuntimeError("Could not determine home directory.")
        monkeypatch.delenv("RESNETLAB_CACHE", raising=False)
        monkeypatch.setattr(Path, "expanduser", homeless)
        return "~/.cache/resnetlab"
    cache.mkdir(parents=True, exist_ok=True)
    return str(cache)


@pytest.mark.parametrize("failure", ["full disk", "read-only", "unreadable", "below a file", "no home"])
@pytest.mark.parametrize("scheme", ["folder", "cifar10"])
def test_a_cache_that_fails_is_one_note(scheme, failure, make_cifar, make_folder, monkeypatch, tmp_path, capsys):
    """Were tracebacks: torch.save's RuntimeError (full disk, read-only folder), is_file's PermissionError
    (an entry below a folder without search permission), expanduser's RuntimeError (no home)."""
    path = make_folder() if scheme == "folder" else make_cifar("cifar10", tar=True)[0]
    cache = tmp_path / "cache"
    options = DataOptions(cache_dir=_cache_failure(failure, monkeypatch, cache))
    capsys.readouterr()
    source = load_data(f"{scheme}:{path}", options)
    assert source.train_size == (15 if scheme == "cifar10" else 6)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: ") and "going on without it" in err, err
    monkeypatch.undo()
    if cache.is_dir():  # no half-written entry or temporary
        assert [p.name for p in cache.iterdir()] == []


def test_an_image_rewritten_with_its_size_and_mtime_misses_the_cache(make_folder, data_opts) -> None:
    """The cache key held each file's size and mtime only: an image replaced by another of the same size whose
    mtime was put back (a copy that keeps times, `touch -r`) gave the old pixels (issue 30, found by the reuse
    family of the fuzzer)."""
    root = make_folder(counts=(2, 1), size=(6, 6))
    before = load_data(f"folder:{root}", data_opts()).split("train").images.clone()
    image, other = root / "train" / "cat" / "000.png", root / "train" / "dog" / "001.png"
    stat = image.stat()
    image.write_bytes(other.read_bytes()[: stat.st_size].ljust(stat.st_size, b"\0"))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    after = load_data(f"folder:{root}", data_opts()).split("train").images
    assert not torch.equal(before, after)

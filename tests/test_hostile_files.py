"""Hostile files, round two (issue 14, the causes that need no restructuring): special files read or replaced,
16-bit images, one-class folders, and a refused pickle's message."""

from __future__ import annotations

import os
import pickle
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import DataOptions, load_data
from resnetlab.errors import CheckpointError, DataError, ResnetlabError
from resnetlab.files.atomic import write_text_atomic
from resnetlab.files.reading import read_file
from resnetlab.weights.checkpoint import MAGIC


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.pt"
    os.mkfifo(path)
    return path


def test_a_fifo_or_device_is_refused_by_name_not_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A FIFO blocked forever on open; a character device was read until memory ran out."""
    fifo = _fifo(tmp_path)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(main(["eval", str(fifo)])), daemon=True)
    t.start()
    t.join(timeout=30)
    assert result == [2], "eval of a FIFO did not return within 30 s"
    assert "a FIFO" in capsys.readouterr().err
    for argv in (["eval", "/dev/zero"], ["eval", "--weights", "/dev/zero", "--data", "digits"],
                 ["train", "--init", "/dev/zero", "--iters", "1", "--out", str(tmp_path / "run")],
                 ["predict", "--weights", "/dev/zero", str(tmp_path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "a character device" in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "run").exists()
    with pytest.raises(CheckpointError, match="a socket|a FIFO|a character device|a block device"):
        read_file(Path("/dev/null"))


def test_outputs_never_replace_a_device_or_fifo(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`report -o /dev/null` as root would have replaced the system's /dev/null with a regular file."""
    fifo = _fifo(tmp_path)
    with pytest.raises(ResnetlabError, match="not a regular file"):
        write_text_atomic(fifo, "x")
    assert fifo.is_fifo()
    dev = Path("/dev/null")
    before = dev.stat()
    with pytest.raises(ResnetlabError, match="not a regular file"):
        write_text_atomic(dev, "x")
    assert dev.stat().st_rdev == before.st_rdev and dev.is_char_device()
    run = tmp_path / "run"
    assert main(["train", "--iters", "1", "--out", str(run), "--set", "run.progress=false"]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "-o", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err and fifo.is_fifo()
    assert main(["export", str(run), "--format", "safetensors", "-o", str(fifo)]) == 2
    assert fifo.is_fifo()


def _folder(root: Path, classes: tuple[str, ...], image: np.ndarray, mode: str | None = None) -> Path:
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(image, mode).save(root / split / cls / f"{i}.png")
    return root


def test_sixteen_bit_png_is_scaled_by_its_range_not_clipped(tmp_path: Path) -> None:
    """Mid-grey in 16 bits (32768) was read as white (255) by PIL's convert("RGB")."""
    img = np.full((6, 6), 32768, dtype=np.uint16)
    img[0, 0], img[0, 1] = 0, 65535
    root = _folder(tmp_path / "grey16", ("a", "b"), img)
    src = load_data(f"folder:{root}", DataOptions(normalize="none", pad=0, flip=False,
                                                  cache_dir=str(tmp_path / "cache")))
    x, _ = next(iter(src.eval_batches("test", 4)))
    pixels = (x * 255).round()
    assert pixels[0, :, 0, 0].tolist() == [0, 0, 0] and pixels[0, :, 0, 1].tolist() == [255, 255, 255]
    assert pixels[0, :, 3, 3].tolist() == [128, 128, 128]


def test_float_and_32_bit_images_are_refused() -> None:
    from resnetlab.data.folder import decode_image
    from resnetlab.data.images import to_8bit

    with pytest.raises(ValueError, match="no known range"):
        to_8bit(Image.fromarray(np.full((6, 6), 0.5, dtype=np.float32), "F"))
    with pytest.raises(ValueError, match="no known range"):
        to_8bit(Image.fromarray(np.full((6, 6), 70000, dtype=np.int32), "I"))
    assert np.asarray(to_8bit(Image.fromarray(np.full((2, 2), 65535, dtype=np.int32), "I"))).tolist() == [[255] * 2] * 2
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6), 0.5, dtype=np.float32), "F").save(buf, format="TIFF")
    with pytest.raises(DataError, match="no known range"):
        decode_image(buf.getvalue(), "x.tif")


def test_a_one_class_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """It trained and reported 0.00% error."""
    root = _folder(tmp_path / "one", ("only",), np.zeros((6, 6, 3), dtype=np.uint8))
    assert main(["train", "--data", f"folder:{root}", "--iters", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "at least two" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


class _Code:
    def __reduce__(self) -> tuple:
        return (print, ("this would run",))


def test_refused_pickle_never_suggests_the_unsafe_load(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """PyTorch's refusal ends with advice to re-run with weights_only=False; ours must not pass that on."""
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save({"format": "x", "code": _Code()}, buf)
    body = buf.getvalue()
    path = tmp_path / "evil.pt"
    path.write_bytes(body + hashlib.sha256(body).digest() + MAGIC)  # a valid frame around a hostile pickle
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "weights_only" not in err and "this would run" not in err
    legacy = tmp_path / "evil.th"
    legacy.write_bytes(pickle.dumps({"state_dict": _Code()}))
    assert main(["eval", "--weights", str(legacy), "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert "weights_only" not in err and "this would run" not in err


@pytest.mark.parametrize("argv, needle", [
    (["info", "resnet20", "--override", "units=5"], "units: expected a list"),
    (["info", "resnet20", "--override", "widths=16"], "widths: expected a list"),
    (["info", "resnet20", "--override", "strides=true"], "strides: expected a list"),
    (["info", "resnet20", "--override", "depth=200000"], "depth: 200000 is beyond"),
    (["info", "plain20", "--override", "widths=[16,32,100000]"], "widths: (16, 32, 100000) go beyond"),
    (["info", "resnet20", "--override", "num_classes=100000000"], "num_classes: 100000000 is beyond"),
    (["info", "resnet20", "--override", "shortcut=scaling", "--override", "shortcut_scale=nan"],
     "shortcut_scale: expected a finite"),
    (["info", "resnet20", "--override", "shortcut=exclusive_gating", "--override", "gate_bias=-inf"],
     "gate_bias: expected a finite"),
    (["info", "resnet20", "--input-size", "-3"], "--input-size: -3 is not a side"),
    (["info", "resnet20", "--input-size", "0"], "--input-size: 0 is not a side"),
    (["models", "--input-size", "100000"], "--input-size: 100000 is not a side"),
])
def test_spec_values_that_would_crash_or_allocate_get_one_line(argv: list[str], needle: str,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """A number for a list field was a traceback; NaN/inf in spec floats were accepted; an absurd depth or
    width was built until the process was killed; a negative or zero --input-size crashed or meant 32."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_depth_beyond_the_bound_is_refused_before_anything_is_built() -> None:
    from resnetlab.networks.registry import create_model
    from resnetlab.networks.spec import MAX_DEPTH, SpecError

    with pytest.raises(SpecError, match="beyond the largest"):
        create_model("plain20", depth=6 * MAX_DEPTH + 2)
    assert sum(p.numel() for p in create_model("resnet20", depth=8).parameters()) > 0


def _tarball(tmp_path: Path) -> Path:
    import tarfile

    root = _folder(tmp_path / "img", ("a", "b"), np.zeros((6, 6, 3), dtype=np.uint8))
    archive = tmp_path / "img.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="img")
    return archive


@pytest.mark.parametrize("bound, value, needle", [
    ("MAX_MEMBER_BYTES", 40, "decompressed, beyond the"),
    ("MAX_TOTAL_BYTES", 100, "decompress to more than"),
    ("MAX_MEMBERS", 5, "more than 5 members"),
])
def test_archives_are_read_within_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture, bound: str, value: int,
                                         needle: str) -> None:
    """A 1 MB .tar.gz holding a 1 GiB member took over 1 GB of memory: members are checked by their stated
    size before reading, and the archive by its members' total and count (bounds lowered here to fit a test)."""
    import resnetlab.data.archives as archives

    archive = _tarball(tmp_path)
    assert list(load_data(f"folder:{archive}", DataOptions(cache_dir=str(tmp_path / "c0"))).classes) == ["a", "b"]
    monkeypatch.setattr(archives, bound, value)
    assert main(["train", "--data", f"folder:{archive}", "--iters", "1", "--set", f"data.cache_dir={tmp_path}/c1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_cifar_batch_that_is_not_a_regular_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A FIFO named like a CIFAR batch file blocked the reader forever."""
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in ("batches.meta", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (batches / name).write_bytes(b"x")
    os.mkfifo(batches / "data_batch_1")
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(main(["train", "--data", f"cifar10:{batches}", "--iters", "1",
                                                            "--out", str(tmp_path / "run")])), daemon=True)
    t.start()
    t.join(timeout=30)
    assert result == [2], "a FIFO in a CIFAR folder did not return within 30 s"
    assert "data_batch_1: not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize("setting, needle", [
    ("schedule.gamma=-0.1", "schedule.gamma: the lr factor at each milestone must not be negative"),
    ("optim.batch_size=100000000", "optim.batch_size: 100000000 is beyond the largest"),
    ("run.threads=5000", "run.threads: 5000 is beyond"),
    ("run.seed=-1", "run.seed: must not be negative"),
    ("run.seed=99999999999999999999999", "run.seed: 99999999999999999999999 is beyond"),
    ("data.workers=1000", "data.workers: 1000 is beyond"),
    ("schedule.milestones=[1,10000000000]", "schedule.milestones: 10000000000 is beyond"),
])
def test_settings_that_would_run_away_are_refused_before_work(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              setting: str, needle: str) -> None:
    """A negative gamma trained with a negative learning rate; numbers that reach torch, numpy or the OS
    unchecked (threads, seeds, batch sizes) crashed or allocated without end."""
    assert main(["train", "--iters", "1", "--set", setting, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
    assert main(["experiment", "degradation", "--scale", "small", "--seeds", "100000", "--out",
                 str(tmp_path / "suite")]) == 2
    assert "--seeds: 100000 is not in 1..1000" in capsys.readouterr().err


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels, with a few zero bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [8500, 12_000, 200_000])  # below PIL's warning (89 Mpx), between, beyond its error
def test_an_image_claiming_too_many_pixels_is_refused_from_its_header(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      side: int) -> None:
    """Found by the fuzzer's image family: a 420 KB PNG of 12,000 x 12,000 pixels was decoded (1.6 GB, a
    DecompressionBombWarning on stderr) before its size was compared with the data set's. Now every reader
    (folder, tarball, ImageNet layout, predict) refuses more than MAX_PIXELS from the header, in one line."""
    from resnetlab.data.images import MAX_PIXELS, decode_image

    root = _folder(tmp_path / "data", ("a", "b"), np.zeros((6, 6, 3), dtype=np.uint8))
    (root / "train" / "a" / "bomb.png").write_bytes(_png_claiming(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not reach the user
        assert main(["train", "--data", f"folder:{root}", "--iters", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bomb.png: cannot decode image" in err, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match=f"{side}x{side} pixels" if side * side <= 89_478_485 else
                       f"too many pixels, beyond the 67,108,864 .*Image size \\({side * side} pixels\\) exceeds limit"):
        decode_image(_png_claiming(side, side), "x.png")
    assert MAX_PIXELS == 8192 * 8192


def test_an_image_of_another_size_is_refused_before_it_is_decoded(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """The size check reads the header: a 4,000 x 4,000 PNG with almost no data is named for its size, not
    decoded first (which would have failed as a truncated file after allocating 48 MB)."""
    root = _folder(tmp_path / "data", ("a", "b"), np.zeros((6, 6, 3), dtype=np.uint8))
    (root / "test" / "b" / "big.png").write_bytes(_png_claiming(4000, 4000))
    assert main(["train", "--data", f"folder:{root}", "--iters", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "big.png: image is 4000x4000 but the first training image" in err and "truncated" not in err, err


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("protocol", [3, 4])
def test_a_weights_file_of_another_pickle_protocol_is_read_or_named_without_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture, legacy: bool, protocol: int) -> None:
    """PyTorch printed a paragraph of warning on stderr for a pickle protocol other than its default (seen in
    this file's test run), and cannot read protocol 4 or 5 at all with weights_only (FRAME, operand 149):
    protocol 3 now loads in silence; 4 is one line saying why and what to do, with no unsafe advice."""
    from tests.fuzz.craft import damaged_state

    obj, _ = damaged_state(("peer", "none", protocol))
    path = tmp_path / "peer.th"
    torch.save(obj, path, pickle_protocol=protocol, **({"_use_new_zipfile_serialization": False} if legacy else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rc = main(["eval", "--weights", str(path), "--model", "resnet20", "--data", "synthetic:8"])
    out, err = capsys.readouterr()
    if protocol == 3:
        assert rc == 0 and "error" in out and not err
    else:
        assert rc == 2 and err.count("\n") == 1 and "pickled with protocol 4 or later" in err, err
        assert "weights_only=False" not in err and "arbitrary code" not in err

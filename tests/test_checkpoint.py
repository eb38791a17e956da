"""Checkpoints: atomic writes, checksums, refusal of code in pickles, fallback to the previous good file."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from resnetlab.cli import main
from resnetlab.errors import CheckpointError
from resnetlab.weights.checkpoint import MAGIC, load_checkpoint, save_checkpoint


def payload() -> dict:
    return {"model": {"w": torch.arange(6.0).view(2, 3)}, "spec": {}, "norm": {}, "config": {}, "step": 7,
            "note": "plain data"}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, payload())
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], payload()["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_files_are_detected(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, payload())
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[len(raw) // 3] ^= 0x10
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum|truncated"):
        load_checkpoint(path)


def test_crafted_pickle_with_valid_checksum_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    body = io.BytesIO()
    torch.save({"format": "resnetlab.checkpoint", "evil": Exploit()}, body, _use_new_zipfile_serialization=True)
    data = body.getvalue()
    path = tmp_path / "evil.pt"
    path.write_bytes(data + hashlib.sha256(data).digest() + MAGIC)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()
    raw_pickle = tmp_path / "raw.pt"  # a bare pickle, as a stranger might send
    raw_pickle.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw_pickle)
    assert not marker.exists()


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch, err: int) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, payload())
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(CheckpointError, match=os.strerror(err)) as info:
        save_checkpoint(path, {**payload(), "step": 8})
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_full_disk_during_training_stops_with_one_line_error(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    real_replace = os.replace

    def replace(src, dst):  # the third checkpoint write fails as on a full disk
        if str(dst).endswith("step-00000012.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code = main(["train", "--iters", "20", "--out", str(out), "--set", "run.checkpoint_every=4",
                 "--set", "optim.batch_size=32"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert load_checkpoint(out / "checkpoints" / "step-00000008.pt")["progress"]["step"] == 8
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["train", "--resume", str(out)]) == 0  # the run continues once there is space
    assert json.loads((out / "summary.json").read_text())["steps"] == 20


def test_resume_falls_back_to_previous_good_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "--iters", "12", "--out", str(out), "--set", "run.checkpoint_every=4", "--set",
            "optim.batch_size=32", "--set", "run.keep_checkpoints=3"]
    assert main(args) == 0
    newest = out / "checkpoints" / "step-00000012.pt"
    raw = bytearray(newest.read_bytes())
    raw[100] ^= 0xFF
    newest.write_bytes(bytes(raw))
    assert main(["train", "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipping bad checkpoint" in printed and "checksum mismatch" in printed
    assert "from step-00000008.pt" in printed
    assert load_checkpoint(newest)["progress"]["step"] == 12  # rewritten by the resumed run

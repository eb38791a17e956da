"""The one atomic writer (`resnetlab.files.atomic`): whole files or nothing, never a device or FIFO replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resnetlab.errors import ResnetlabError
from resnetlab.files.atomic import replace_with, temp_path, write_bytes_atomic, write_text_atomic


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_replaces_a_regular_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "results.md"
    target.write_text("old")
    write_text_atomic(target, "new ü\n")
    assert target.read_bytes() == "new ü\n".encode()
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and _litter(tmp_path) == []


def test_callback_form_writes_through_a_temporary_with_the_same_suffix(tmp_path: Path) -> None:
    target = tmp_path / "curves.png"
    seen: list[Path] = []

    def fill(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".curves.png.tmp-")
        tmp.write_bytes(b"png")

    replace_with(target, fill)
    assert target.read_bytes() == b"png" and not seen[0].exists() and _litter(tmp_path) == []
    assert temp_path(target) != temp_path(target)  # two writers of one file never share a temporary


@pytest.mark.parametrize("error", [RuntimeError("boom"), OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_an_error_in_the_callback_leaves_the_old_file_and_no_temporary(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "best.pt"
    target.write_bytes(b"old")

    def fill(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise error

    with pytest.raises(type(error)):
        replace_with(target, fill)
    assert target.read_bytes() == b"old" and _litter(tmp_path) == []


def test_an_error_before_the_temporary_exists_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.txt"
    with pytest.raises(ResnetlabError, match=r"x\.txt: cannot write \(No such file or directory\)"):
        write_text_atomic(missing, "x")


def test_a_fifo_a_device_or_a_directory_is_never_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    for target in (fifo, Path("/dev/null"), folder):
        with pytest.raises(ResnetlabError, match="exists and is not a regular file; not replaced") as info:
            write_text_atomic(target, "x")
        assert str(info.value) == f"{target}: exists and is not a regular file; not replaced"
        with pytest.raises(ResnetlabError, match="not a regular file"):
            replace_with(target, lambda tmp: tmp.write_bytes(b"x"))
    assert fifo.is_fifo() and folder.is_dir() and Path("/dev/null").is_char_device()
    assert _litter(tmp_path) == []


def test_the_one_atomic_writer_is_defined_once() -> None:
    """The run directory's old alias of the writer is gone (issue 23); what it guarded stays true: no module of the
    package defines a writer of its own beside files/atomic.py."""
    import ast

    import resnetlab

    writers = {"replace_with", "write_text_atomic", "write_bytes_atomic", "create_text_atomic"}
    root = Path(resnetlab.__file__).parent
    defined = sorted(f"{path.relative_to(root)}:{node.name}" for path in root.rglob("*.py")
                     for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.FunctionDef) and node.name in writers)
    assert defined == [f"files/atomic.py:{name}" for name in sorted(writers)]


def test_the_data_cache_notes_and_leaves_nothing_when_it_cannot_write(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from resnetlab.data.cache import save_entry
    from resnetlab.data.readers import read_synthetic

    splits = read_synthetic(8)
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    save_entry(blocked / "entry.pt", splits)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the data cache" in err and f"{blocked} is a file" in err
    taken = tmp_path / "entry.pt"
    taken.mkdir()
    save_entry(taken, splits)
    assert "not a regular file" in capsys.readouterr().err
    save_entry(tmp_path / "good.pt", splits)
    assert (tmp_path / "good.pt").is_file() and _litter(tmp_path) == []

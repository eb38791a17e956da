"""The one atomic writer (`resnetlab.files.atomic`): whole files or nothing, never a device or FIFO replaced."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterator
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


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process's umask for a test; the old one comes back afterwards."""
    old = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    try:
        yield set_mask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_an_output_gets_the_mode_a_plain_open_gives(tmp_path: Path, umask: Callable[[int], None], mask: int) -> None:
    """Issue 30: a writer that makes its file private (safetensors' writer creates it 0600) left an export
    unreadable to a colleague on a shared cluster. A new output gets 0666 & ~umask, as `open()` gives."""
    umask(mask)
    private = tmp_path / "n.safetensors"
    replace_with(private, lambda tmp: os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)))
    write_text_atomic(tmp_path / "results.md", "x")
    for path in (private, tmp_path / "results.md"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask: Callable[[int], None]) -> None:
    """As `open(path, "w")` on an existing file: the mode its owner gave it stays."""
    umask(0o022)
    target = tmp_path / "summary.json"
    target.write_text("old")
    target.chmod(0o640)
    replace_with(target, lambda tmp: os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


@pytest.mark.parametrize("name", ["r" * 240 + ".safetensors", "x" * 255, "é" * 122 + ".json", "a." + "b" * 253])
def test_a_legal_name_is_never_refused_for_its_temporary(tmp_path: Path, name: str) -> None:
    """Issue 30: `.NAME.tmp-PID-RANDOM.SUFFIX` passed the OS's 255-byte limit on a name (NAME_MAX) for a legal
    240-character output name, which was then refused. The temporary's name is shortened where it must be, and
    stays what the sweepers look for: a leading dot and `.tmp-` (`RunDir.sweep_temporaries`, tests/fuzz/judge.py)."""
    target = tmp_path / name
    assert len(os.fsencode(name)) <= 255
    tmp = temp_path(target)
    assert len(os.fsencode(tmp.name)) <= 255 and tmp.parent == tmp_path and tmp != temp_path(target)
    assert tmp.name.startswith(".") and ".tmp-" in tmp.name and fnmatch.fnmatch(tmp.name, ".*.tmp-*")
    if len(os.fsencode(target.suffix)) < 200:
        assert tmp.name.endswith(target.suffix)
    write_text_atomic(target, "x")
    assert target.read_text() == "x" and _litter(tmp_path) == []


def test_a_run_directory_of_a_long_legal_name_is_created_and_swept(tmp_path: Path) -> None:
    """The run directory is made under a temporary name and renamed: that name must fit as well; and the
    temporaries of its files (long names shortened) are what a resume sweeps."""
    from resnetlab.runs.directory import RunDir

    run = RunDir(tmp_path / ("r" * 250))
    run.create({"model": {"name": "resnet20"}})
    run.unlock()
    assert run.config.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["r" * 250]
    stale = temp_path(run.path / ("c" * 250 + ".png"))
    stale.write_bytes(b"half")
    run.sweep_temporaries()
    assert not stale.exists()

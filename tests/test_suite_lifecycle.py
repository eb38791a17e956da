"""Suite and run life cycle (issue 14, part 3): failed members make the suite exit non-zero and are retried on
the next call; a suite's --out holds one suite and one writer; a run that died before its first checkpoint
can be started again in place."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.experiments.suite_dir import SuiteDir

TINY = """title = "tiny"
members = [
  { label = "a", model = "resnet20", small = { depth = 8 } },
  { label = "b", model = "plain20", small = { depth = 8 } },
]
"""


def _suite(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _run(suite: Path, out: Path, *extra: str) -> int:
    return main(["experiment", str(suite), "--scale", "small", "--data", "synthetic:16", "--iters", "2",
                 "--out", str(out), *extra])


def test_failed_members_exit_non_zero_and_are_retried(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A bad --set failed every member and exited 0; the members' error.txt then made every retry fail.
    A --set the config refuses is now refused before any work (issue 30), as `train` refuses it; one that
    fails only in the training (a pad larger than the images) still fails each member, exit 1."""
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert _run(suite, out, "--set", "optim.lr=nan") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "member 'a'" in err and "optim.lr" in err
    assert not out.exists()  # refused before the --out was claimed
    assert _run(suite, out, "--set", "data.pad=100") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 member run(s) failed: a seed 0 (" in err and "b seed 0" in err
    assert (out / "a" / "seed0" / "error.txt").exists() and (out / "results.md").exists()
    assert _run(suite, out) == 0  # the input fixed (no training was kept): both retried from the start
    for member in ("a", "b"):
        summary = json.loads((out / member / "seed0" / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 2
        assert not (out / member / "seed0" / "error.txt").exists()
    assert "failed before, retrying from the start" in capsys.readouterr().out


def test_an_out_holds_one_suite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two suites on one --out wrote into each other's members and results."""
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert _run(suite, out, "--only", "a") == 0
    assert json.loads((out / "suite.json").read_text())["suite"] == "tiny"
    other = tmp_path / "other.toml"
    other.write_text(TINY.replace('"tiny"', '"other"'))
    capsys.readouterr()
    assert _run(other, out) == 2
    assert "holds suite 'tiny', not 'other'" in capsys.readouterr().err
    assert _run(suite, out, "--iters", "3") == 2  # the same suite at another budget mixes budgets: refused
    assert "with iters 2, not 3" in capsys.readouterr().err
    assert not (out / "b").exists()


def test_one_writer_per_suite_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite, out = _suite(tmp_path), tmp_path / "out"
    holder = SuiteDir(out)
    legacy = {"suite": "tiny", "scale": "small", "data": "synthetic:16", "recipe": "cifar", "epochs": None,
              "iters": 2}  # a suite.json as calls before issue 30 wrote it
    holder.claim(legacy, shared=False)
    try:
        assert _run(suite, out) == 2
        assert "another resnetlab experiment is writing into it" in capsys.readouterr().err
        assert not (out / "a").exists()
    finally:
        holder.release()
    # calls that only train (--no-results, side by side on disjoint members) share the directory
    first = SuiteDir(out)
    first.claim(legacy, shared=True)
    try:
        assert _run(suite, out, "--only", "b", "--no-results") == 0
    finally:
        first.release()
    assert _run(suite, out) == 0


def test_a_run_that_died_before_its_first_checkpoint_restarts_in_place(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A crash in the first step left config, log and lock but no checkpoint: a new train to that --out
    was refused. It now takes its place; a run with a checkpoint, or one a process holds, is still refused."""
    run = tmp_path / "run"
    base = ["train", "--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:16", "--out", str(run)]
    assert main(base + ["--iters", "2"]) == 0
    (run / "summary.json").unlink()
    for ckpt in (run / "checkpoints").iterdir():
        ckpt.unlink()
    assert main(base + ["--iters", "3"]) == 0  # replaced, not refused
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    capsys.readouterr()
    assert main(base + ["--iters", "2"]) == 2  # a finished run with checkpoints: refused as before
    assert "exists and is not empty" in capsys.readouterr().err
    for p in [run / "summary.json", *(run / "checkpoints").iterdir()]:
        p.unlink()
    fd = os.open(run / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a process still running it
    try:
        assert main(base + ["--iters", "2"]) == 2
        assert "exists and is not empty" in capsys.readouterr().err
    finally:
        os.close(fd)


@pytest.mark.parametrize("out", [".", "./", "..", "HERE", "", " "])
def test_out_naming_the_current_directory_or_nothing_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture, out: str) -> None:
    """`--out .` and `--out ''` were tracebacks ('has an empty name'); an empty suite --out silently meant the
    default. A run directory is created whole by one rename, so it cannot be the directory the user stands in."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    out = str(here) if out == "HERE" else out
    argv = ["train", "--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:16", "--iters", "1"]
    try:
        rc = main([*argv, "--out", out])
    except SystemExit as exc:  # argparse's one-line error
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert ("an empty path" in err) if not out.strip() else ("cannot become a run directory" in err)
    assert list(here.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["here"]
    if not out.strip():
        with pytest.raises(SystemExit) as exc:
            main(["experiment", str(_suite(tmp_path)), "--scale", "small", "--data", "synthetic:16", "--out", out])
        assert exc.value.code == 2 and "--out: an empty path" in capsys.readouterr().err
        assert not (here / "experiments").exists()


def test_results_are_replaced_whole_or_left_as_they_were(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """results.md / .csv / .json go through the one atomic writer: a disk that fills while the table is
    written leaves the previous table, no temporary file, and one line."""
    import resnetlab.files.atomic

    suite, out = _suite(tmp_path), tmp_path / "out"
    assert _run(suite, out) == 0
    before = {name: (out / name).read_bytes() for name in ("results.md", "results.csv", "results.json")}
    real = resnetlab.files.atomic._fsync

    def disk_full(path: Path) -> None:
        if ".results.md.tmp-" in Path(path).name:
            raise OSError(28, "No space left on device")
        real(path)

    monkeypatch.setattr(resnetlab.files.atomic, "_fsync", disk_full)
    (out / "a" / "seed0" / "summary.json").unlink()  # so the second call has something to train and tabulate
    capsys.readouterr()
    assert _run(suite, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.md: cannot write (No space left on device)" in err
    assert (out / "results.md").read_bytes() == before["results.md"]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize(("text", "message"), [
    ("members = 5", "members must be a non-empty array of tables, got int 5"),
    ("members = []", "members must be a non-empty array of tables"),
    ("members = [5]", "member 1: expected a table, got int 5"),
    ('members = [{ label = 5, model = "resnet20" }]', "member 1: label must be a non-empty string, got int 5"),
    ('members = [{ label = "a", model = [] }]', "member 1: model must be a non-empty string, got list"),
    ('members = [{ label = "a", model = "resnet20", set = "x" }]', "member 1 ('a'): set must be a table"),
    ('members = [{ label = "a", model = "resnet20", set = { "optim.lr" = "x" } }]', "optim.lr: expected float"),
    ('members = [{ label = "a", model = "resnet20", set = { "optim.lrr" = 0.1 } }]', "did you mean optim.lr"),
    ('members = [{ label = "a", model = "resnet20", override = 1e400 }]', "override must be a table, got float"),
    ('members = [{ label = "a", model = "resnet20", small = [5] }]', "small must be a table, got list"),
    ('members = [{ label = "a", model = "resnet20", small = { model = 5 } }]', "small.model must be a registry"),
    ('members = [{ label = "a", model = "resnet20", paper = nan }]', "paper must be an error in percent"),
    ('members = [{ label = "a", model = "resnet20", paper = true }]', "paper must be an error in percent"),
    ('members = [{ label = "a", model = "resnet20", lable = "b" }]', "unknown key 'lable' (did you mean 'label'?)"),
    ('members = [{ label = "!!", model = "resnet20" }]', "label needs a letter or digit"),
    ('title = 5\nmembers = [{ label = "a", model = "resnet20" }]', "title must be a string, got int 5"),
    ('recipe = "nope"\nmembers = [{ label = "a", model = "resnet20" }]', "recipe 'nope': not found"),
    ('titel = "x"\nmembers = [{ label = "a", model = "resnet20" }]', "unknown key 'titel' (did you mean 'title'?)"),
])
def test_a_suite_file_of_another_shape_is_named_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  text: str, message: str) -> None:
    """Wrong types in a suite TOML were tracebacks (`members = 5`, `label = 5`, `set = "x"`; issue 14 and the
    fuzz campaign): now one line naming the file and the field, exit 2, and no suite directory."""
    suite, out = tmp_path / "s.toml", tmp_path / "out"
    suite.write_text(text + "\n")
    assert _run(suite, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"resnetlab: error: suite {suite}") and message in err, err
    assert not out.exists()


def test_two_workers_done_at_once_still_write_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # each asks whether it is the last while the other still holds the directory (`_alone` False for both, as
    # when they finish at the same instant); the one that lets go last must still write the results
    call = {"suite": "tiny", "seeds": 1, "trainings": {}}
    first, second = SuiteDir(tmp_path), SuiteDir(tmp_path)
    first.claim(call, shared=True)
    second.claim(call, shared=True)
    monkeypatch.setattr(SuiteDir, "_alone", lambda self: False)
    written: list[str] = []
    first.write_when_last(lambda: written.append("first"), lambda _line: None)
    assert written == []  # the second still holds it: left to the second
    second.write_when_last(lambda: written.append("second"), lambda _line: None)
    assert written == ["second"]


def test_a_claim_that_loses_the_race_to_create_suite_json_keeps_add_seeds(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # another worker's call with fewer seeds writes suite.json between this claim's look and its create
    import resnetlab.experiments.suite_dir as suite_dir

    before = {"suite": "tiny", "seeds": 1, "trainings": {"a/seed0": "k0"}}
    call = {"suite": "tiny", "seeds": 2, "trainings": {"a/seed0": "k0", "a/seed1": "k1"}}
    create = suite_dir.create_text_atomic

    def theirs_first(path: Path, text: str) -> bool:
        create(path, json.dumps(before))
        return False

    monkeypatch.setattr(suite_dir, "create_text_atomic", theirs_first)
    (tmp_path / "a" / "seed0").mkdir(parents=True)
    (tmp_path / "a" / "seed0" / "config.json").write_text("{}")  # their training began: not taken over
    claimer = SuiteDir(tmp_path)
    claimer.claim(call, shared=True, add_seeds=True)
    claimer.release()
    assert json.loads((tmp_path / "suite.json").read_text())["seeds"] == 2

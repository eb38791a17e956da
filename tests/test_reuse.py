"""Reused work is the same work (issue 30): a training is known by what determines its computation, with its
file inputs by content; an --out keeps the call that made it and refuses another; the index links a training
only while its run directory still holds it. Each test here failed on the code before issue 30."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.settings.config import build_config
from resnetlab.training.identity import differences, identity, key_of_run, training_key

TINY = """title = "tiny"
members = [
  { label = "a", model = "resnet20", small = { depth = 8 } },
]
"""
SMALL = ["--scale", "small", "--data", "digits", "--iters", "2", "--set", "run.threads=1",
         "--set", "run.progress=false"]


def _suite(tmp_path: Path, name: str = "tiny", text: str = TINY) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace('"tiny"', f'"{name}"'))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two checkpoints of resnet20 depth 8 on digits, one training step from two seeds: two weights files."""
    root = tmp_path_factory.mktemp("weights")
    for seed in (0, 1):
        assert main(["train", "--model", "resnet20", "--data", "digits", "--iters", "1", "--set", "model.depth=8",
                     "--set", f"run.seed={seed}", "--set", "run.progress=false", "--out", str(root / str(seed))]) == 0
    return [next((root / str(seed) / "checkpoints").glob("step-*.pt")) for seed in (0, 1)]


def _weights(path: Path, checkpoints: list[Path], which: int) -> Path:
    shutil.copy(checkpoints[which], path)
    return path


def _key(**overrides: object) -> str:
    return training_key(build_config(model="resnet20", data="digits", overrides=overrides).to_dict())


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


# ---- identity from content ----------------------------------------------------------------------------
def test_an_init_file_is_known_by_its_content_not_its_path(tmp_path: Path, checkpoints: list[Path]) -> None:
    w = _weights(tmp_path / "w.pt", checkpoints, 0)
    before = _key(**{"run.init": str(w)})
    shutil.copy(w, tmp_path / "copy.pt")
    assert _key(**{"run.init": str(tmp_path / "copy.pt")}) == before  # the same weights elsewhere
    _weights(w, checkpoints, 1)  # other weights behind the same path
    assert _key(**{"run.init": str(w)}) != before
    # a run's config keeps the SHA-256 it started from: its identity is what it trained on, whatever the file is now
    recorded = build_config(model="resnet20", data="digits", overrides={"run.init": str(w)}).to_dict()
    recorded["resolved"] = {"init": {"sha256": "0" * 64}}
    assert identity(recorded)["run"]["init"] == "sha256:" + "0" * 64


def test_a_data_folder_is_known_by_its_files(tmp_path: Path, make_folder: Callable[..., Path]) -> None:
    folder = make_folder()
    cache = tmp_path / "cache"

    def key(path: Path) -> str:
        return training_key(build_config(model="resnet20", data=f"folder:{path}",
                                         overrides={"data.cache_dir": str(cache)}).to_dict())

    before = key(folder)
    assert key(folder) == before  # the second time from the digests kept in the cache
    assert list((cache / "digests").glob("*.json"))
    copy = shutil.copytree(folder, tmp_path / "elsewhere")
    assert key(copy) == before  # the same images under another name are the same data
    image = folder / "train" / "cat" / "000.png"
    stat = image.stat()
    image.write_bytes((folder / "train" / "dog" / "000.png").read_bytes()[: stat.st_size].ljust(stat.st_size, b"\0"))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: the ctime still tells
    assert key(folder) != before
    (copy / "train" / "cat" / "extra.png").write_bytes(b"x")
    assert key(copy) != before  # a file more is other data
    tar = shutil.make_archive(str(tmp_path / "pets"), "gztar", copy)
    assert key(Path(tar)) == key(Path(shutil.copy(tar, tmp_path / "again.tar.gz")))


def test_differences_name_the_fields() -> None:
    a = identity(build_config(model="resnet20", data="digits").to_dict())
    b = identity(build_config(model="resnet20", data="digits", overrides={"optim.lr": 0.05}).to_dict())
    assert differences(a, b) == ["optim.lr: 0.1 -> 0.05"]


def test_a_replaced_init_file_is_trained_anew_not_linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         checkpoints: list[Path]) -> None:
    """Two suites sharing an index, both with --set run.init=w.pt (relative) from two folders holding other
    weights: the second linked the first's training (the key kept the relative path)."""
    suite, other = _suite(tmp_path), _suite(tmp_path, "other")
    outs = tmp_path / "experiments"
    for name, seed in (("one", 0), ("two", 1)):
        (tmp_path / name).mkdir()
        _weights(tmp_path / name / "w.pt", checkpoints, seed)
    monkeypatch.chdir(tmp_path / "one")
    assert main(["experiment", str(suite), *SMALL, "--set", "run.init=w.pt", "--out", str(outs / "a")]) == 0
    monkeypatch.chdir(tmp_path / "two")
    assert main(["experiment", str(other), *SMALL, "--set", "run.init=w.pt", "--out", str(outs / "b")]) == 0
    run = outs / "b" / "a" / "seed0"
    assert not run.is_symlink()
    assert _config(run)["run"]["init"] == str(tmp_path / "two" / "w.pt")  # absolute, as train --init keeps it
    first, second = (_config(outs / o / "a" / "seed0")["resolved"]["init"]["sha256"] for o in "ab")
    assert first != second


# ---- the index --------------------------------------------------------------------------------------------
def test_a_deleted_and_reused_out_is_not_linked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The index trusted its record while the folder existed: an --out deleted and reused with another setting
    put another training at the recorded path, and a later suite linked to it."""
    suite, other = _suite(tmp_path), _suite(tmp_path, "other")
    outs = tmp_path / "experiments"
    assert main(["experiment", str(suite), *SMALL, "--out", str(outs / "a")]) == 0
    key = key_of_run(outs / "a" / "a" / "seed0")
    shutil.rmtree(outs / "a")
    assert main(["experiment", str(suite), *SMALL, "--set", "optim.lr=0.05", "--out", str(outs / "a")]) == 0
    capsys.readouterr()
    assert main(["experiment", str(other), *SMALL, "--out", str(outs / "b")]) == 0
    run = outs / "b" / "a" / "seed0"
    assert not run.is_symlink() and "the same training as" not in capsys.readouterr().out
    assert _config(run)["optim"]["lr"] == 0.1 and key_of_run(run) == key


# ---- an --out knows its call ---------------------------------------------------------------------------
def test_an_out_refuses_a_call_with_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    results = (out / "results.md").read_text()
    capsys.readouterr()
    assert main(["experiment", str(suite), *SMALL, "--set", "optim.lr=0.05", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "made with other settings (optim.lr: unset -> 0.05)" in err
    assert "give another --out" in err
    assert (out / "results.md").read_text() == results
    assert main(["experiment", str(suite), *SMALL, "--seeds", "2", "--out", str(out)]) == 2
    assert "with seeds 1, not 2" in capsys.readouterr().err
    recorded = json.loads((out / "suite.json").read_text())
    assert recorded["seeds"] == 1 and recorded["trainings"] == {"a/seed0": key_of_run(out / "a" / "seed0")}
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0  # the same call: done, kept
    assert "already done, skipped" in capsys.readouterr().out


def test_an_out_refuses_data_whose_files_changed(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  make_folder: Callable[..., Path]) -> None:
    folder = make_folder(size=(8, 8))
    suite, out = _suite(tmp_path), tmp_path / "out"
    call = ["experiment", str(suite), "--scale", "small", "--data", f"folder:{folder}", "--iters", "1",
            "--set", "run.progress=false", "--set", "data.pad=0", "--out", str(out)]
    assert main(call) == 0
    shutil.copy(folder / "train" / "dog" / "000.png", folder / "train" / "cat" / "000.png")
    capsys.readouterr()
    assert main(call) == 2
    assert "other contents of data" in capsys.readouterr().err


def test_results_count_this_calls_seeds_only(tmp_path: Path) -> None:
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    shutil.copytree(out / "a" / "seed0", out / "a" / "seed7")  # a folder this call did not make
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["rows"][0]["runs"] == 1
    assert "seed0..seed0 of each member, this call's" in (out / "results.md").read_text()


def test_an_out_made_before_calls_were_kept_whole(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A suite.json of the old form (suite, scale, data, recipe, budget) is taken up by the same call after its
    runs are checked, and refused, naming the field, when its runs are another call's."""
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    new = json.loads((out / "suite.json").read_text())
    old = {k: new[k] for k in ("suite", "scale", "data", "recipe", "epochs", "iters")}
    (out / "suite.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert main(["experiment", str(suite), *SMALL, "--set", "optim.lr=0.05", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "a/seed0" in err and "optim.lr: 0.1 -> 0.05" in err
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    assert json.loads((out / "suite.json").read_text()) == new


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_bad_jobs_are_refused_before_any_work(tmp_path: Path, jobs: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["experiment", str(_suite(tmp_path)), *SMALL, "--jobs", jobs, "--out", str(out)]) == 2
    assert "--jobs" in capsys.readouterr().err and not out.exists()


def test_seeds_are_added_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["experiment", str(suite), *SMALL, "--seeds", "2", "--out", str(out)]) == 2
    assert "--add-seeds trains more seeds into it" in capsys.readouterr().err
    assert main(["experiment", str(suite), *SMALL, "--seeds", "2", "--add-seeds", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "a seed 0: already done, skipped" in printed and (out / "a" / "seed1" / "summary.json").exists()
    assert json.loads((out / "results.json").read_text())["rows"][0]["runs"] == 2
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 2  # now fewer than it holds
    assert main(["experiment", str(suite), *SMALL, "--seeds", "2", "--set", "optim.lr=0.05", "--add-seeds",
                 "--out", str(out)]) == 2  # more seeds, but another call
    assert "optim.lr: unset -> 0.05" in capsys.readouterr().err


def test_an_old_out_holding_more_seeds_is_not_narrowed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--seeds", "2", "--out", str(out)]) == 0
    new = json.loads((out / "suite.json").read_text())
    (out / "suite.json").write_text(json.dumps({k: new[k] for k in ("suite", "scale", "data", "recipe", "epochs",
                                                                     "iters")}))
    capsys.readouterr()
    assert main(["experiment", str(suite), *SMALL, "--collect", "--out", str(out)]) == 2
    assert "holds a/seed1, more seeds than this call's 1 (give --seeds 2)" in capsys.readouterr().err
    assert main(["experiment", str(suite), *SMALL, "--seeds", "2", "--collect", "--out", str(out)]) == 0


def test_a_member_left_out_by_only_may_not_build(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--set model.depth=8 cannot build a bottleneck net (9n+2): a call that trains only the members it fits
    runs them; a call that asks for the other is refused before any work."""
    suite = _suite(tmp_path, "mixed", TINY.replace(
        ']\n', '  { label = "b", model = "resnet164", small = { depth = 11 } },\n]\n'))
    out = tmp_path / "out"
    fits = ["experiment", str(suite), *SMALL, "--set", "model.depth=8", "--out", str(out)]
    assert main([*fits, "--only", "a"]) == 0
    assert json.loads((out / "suite.json").read_text())["trainings"]["b/seed0"].startswith("does not build")
    capsys.readouterr()
    assert main(fits) == 2 and "member 'b'" in capsys.readouterr().err


def test_a_member_folder_holding_another_training_is_not_reported(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A run directory put in an --out by hand (another call's, lr 0.05) was taken as this call's finished
    member and its numbers reported ("already done, skipped"): the member's folder is checked by its key."""
    suite, other = _suite(tmp_path), _suite(tmp_path, "other")
    out = tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    assert main(["experiment", str(other), *SMALL, "--set", "optim.lr=0.05", "--out", str(tmp_path / "b")]) == 0
    shutil.rmtree(out / "a" / "seed0")
    shutil.copytree(tmp_path / "b" / "a" / "seed0", out / "a" / "seed0")
    capsys.readouterr()
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds another training" in err
    assert main(["experiment", str(suite), *SMALL, "--collect", "--out", str(out)]) == 0  # results: not counted
    assert json.loads((out / "results.json").read_text())["rows"][0]["runs"] == 0


@pytest.mark.parametrize("field", ["contents", "trainings", "settings", "seeds", "data", "suite"])
@pytest.mark.parametrize("value", [5, [1, "x"], "text", None, {"data": 7}])
def test_a_damaged_suite_json_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, field: str,
                                                      value: object) -> None:
    """Any field of suite.json edited to another shape: the next call is refused in one line, naming --out, or
    (the field as the call records it) taken up; never a traceback, and the runs stay as they were."""
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    recorded = json.loads((out / "suite.json").read_text())
    (out / "suite.json").write_text(json.dumps(recorded | {field: value}))
    key = key_of_run(out / "a" / "seed0")
    capsys.readouterr()
    code = main(["experiment", str(suite), *SMALL, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), err
    if code == 2:
        assert len(err.splitlines()) == 1 and str(out) in err, err
    assert key_of_run(out / "a" / "seed0") == key


@pytest.mark.parametrize("change", ["schedule_lost", "lr_edited", "data_changed", "none"])
def test_a_run_resumes_only_the_training_it_started(tmp_path: Path, capsys: pytest.CaptureFixture, change: str,
                                                    make_folder: Callable[..., Path]) -> None:
    """`train --resume` continues the training the run recorded at its start (`resolved.key`): a config.json
    that lost a section (read back as the defaults: 64k iterations), an edited setting or data files changed
    behind the same path is refused in one line, and nothing is trained or rewritten."""
    folder = make_folder(size=(8, 8))
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--set", "model.depth=8", "--data", f"folder:{folder}", "--iters",
                 "2", "--set", "run.progress=false", "--set", "data.pad=0", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    if change == "schedule_lost":
        (run / "config.json").write_text(json.dumps(config | {"schedule": None}))
    elif change == "lr_edited":
        config["optim"]["lr"] = 0.2
        (run / "config.json").write_text(json.dumps(config))
    elif change == "data_changed":
        shutil.copy(folder / "train" / "dog" / "000.png", folder / "train" / "cat" / "000.png")
    before = {p.name: p.read_bytes() for p in sorted((run / "checkpoints").iterdir())}
    metrics = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    code = main(["train", "--resume", str(run)])
    captured = capsys.readouterr()
    if change == "none":
        assert code == 0 and "already finished" in captured.out
    else:
        assert code == 2
        assert captured.err.count("\n") == 1 and "no longer give the training it started" in captured.err
    assert {p.name: p.read_bytes() for p in sorted((run / "checkpoints").iterdir())} == before
    assert (run / "metrics.jsonl").read_bytes() == metrics


@pytest.mark.parametrize("final", [None, {"test_error": "x"}, {"test_error": True}, {"test_error": [1]},
                                   {"test_error": 1e308}, {"test_error": -0.5}])
def test_a_members_summary_of_another_shape_is_one_line_or_no_result(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    final: object) -> None:
    """A member's summary.json whose `final` is null (read as none: the member has no result) or whose error is
    not a number, or not one in [0, 1] (one line naming the file): the suite's results and its rerun never end in
    a traceback (1e308 raised in the suite's figure, found by tools/record_sweep.py)."""
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    path = out / "a" / "seed0" / "summary.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"final": final}))
    capsys.readouterr()
    for call in (["--collect"], []):
        code = main(["experiment", str(suite), *SMALL, "--out", str(out), *call])
        err = capsys.readouterr().err.strip()
        if final is None:
            assert code == 0 and json.loads((out / "results.json").read_text())["rows"][0]["runs"] == 0
        else:
            assert code == 2 and err.count("\n") == 0 and "final.test_error': expected a" in err, err


@pytest.mark.parametrize("step", [1e308, -1, 2.5])
def test_a_members_metrics_row_whose_step_is_not_a_whole_number_is_skipped(tmp_path: Path, step: float) -> None:
    """A member's metrics.jsonl row whose step is not a whole number >= 0 is a row of another shape: the
    suite's results and figures skip it (1e308 raised in the figure's axis, found by tools/record_sweep.py)."""
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--out", str(out)]) == 0
    path = out / "a" / "seed0" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r | {"step": step}) + "\n" for r in rows))
    for call in (["--collect"], []):
        assert main(["experiment", str(suite), *SMALL, "--out", str(out), *call]) == 0
    assert (out / "curves.png").stat().st_size > 0

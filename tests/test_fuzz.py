"""The hostile-input fuzzer in CI (issues 14 and 22): a few hundred generated cases through `resnetlab.cli.main`
(and hubconf's entry points), each ending with exit 0 or one line of error, within the time bound, without
half-written output, with its inputs unchanged, clean stdout, and the right weights where they are known.
The test package tests/fuzz holds the families (tests.fuzz.families) and the judge (tests.fuzz.judge); the
campaigns of thousands of cases (tools/fuzz_campaign.py) are in docs/reliability.md."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.core import Case, Outcome
from tests.fuzz.families import FAMILIES
from tests.fuzz.running import run_case

CASES = {"args": 50, "set": 30, "config": 30, "summary": 30, "checkpoint": 30, "suite": 30, "images": 30, "cifar": 20,
         "weights": 30,
         # issue 22's surfaces (tests/fuzz/surfaces.py)
         "export": 40, "predict": 40, "hub": 30, "safetensors": 40, "rundir": 30, "env": 15,
         # issue 25's services (tests/fuzz/fetch.py, tracker.py)
         "fetch": 25, "tracker": 20,
         # issue 30: a tracked run killed and resumed (tests/fuzz/killtrack.py; child processes, seconds a case)
         "killtrack": 6,
         # issue 30: reused work must be the same work (tests/fuzz/reuse.py; two calls and a reference a case)
         "reuse": 15}


def _judge(case: Case) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="resnetlab-fuzz-") as tmp:
        outcome = run_case(case, Path(tmp))
    assert outcome.problem is None, (f"{outcome.problem}: argv={outcome.argv} files={case.files!r:.300} "
                                     f"steps={case.steps!r:.300}")
    return outcome


@pytest.mark.parametrize("family", sorted(CASES))
def test_generated_hostile_input_ends_in_one_line(family: str) -> None:
    @settings(max_examples=CASES[family], deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(FAMILIES[family].strategy())
    def check(case: Case) -> None:
        _judge(case)

    check()


def test_the_judge_catches_what_it_should(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge is not a pass-through: a traceback, a second error line and a left temporary file count."""
    ok = run_case(Case("args", ["info", "resnet20", "--override", "units=5"]), tmp_path / "a")
    assert ok.problem is None and ok.rc == 2
    (tmp_path / "b").mkdir()
    bad = run_case(Case("args", ["info", "resnet20", "--override", "depth=20", "--input-size", "{missing}"]),
                   tmp_path / "b")
    assert bad.problem is None and bad.rc == 2  # argparse: "invalid int value", one line
    import resnetlab.cli

    def half(argv: list[str]) -> int:  # runs in the case's directory
        Path(".x.json.tmp-1").write_text("half")
        return 0

    monkeypatch.setattr(resnetlab.cli, "main", half)
    left = run_case(Case("args", ["models", "--filter", "resnet20"]), tmp_path / "c")
    assert left.rc == 0 and left.problem == "half-written output left: .x.json.tmp-1"
    # a temporary file the case itself made (a killed trainer's, in the rundir family) is an input, not output
    made = run_case(Case("args", ["models"], {".y.json.tmp-2": b"half"}), tmp_path / "c2")
    assert made.problem == "half-written output left: .x.json.tmp-1" and (tmp_path / "c2" / ".y.json.tmp-2").exists()
    monkeypatch.setattr(resnetlab.cli, "main", lambda argv: 0)
    assert run_case(Case("args", ["models"], {".y.json.tmp-2": b"half"}), tmp_path / "c3").problem is None

    def crash(argv: list[str]) -> int:
        raise ValueError("boom")

    monkeypatch.setattr(resnetlab.cli, "main", crash)
    assert run_case(Case("args", ["models"]), tmp_path / "d").problem == "exception: ValueError: boom"

    def warns(argv: list[str]) -> int:
        import warnings

        warnings.warn("Image size (144000000 pixels) exceeds limit", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(resnetlab.cli, "main", warns)
    assert run_case(Case("args", ["models"]), tmp_path / "e").problem.startswith("warning on stderr: UserWarning")

    def deprecated(argv: list[str]) -> int:  # hidden by Python's default filters: the user never sees it
        import warnings

        warnings.warn("`torch.jit.script_method` is deprecated", DeprecationWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(resnetlab.cli, "main", deprecated)
    assert run_case(Case("args", ["models"]), tmp_path / "g").problem is None

    def two_lines(argv: list[str]) -> int:
        print("resnetlab: error: one\nand another line", file=sys.stderr)
        return 2

    monkeypatch.setattr(resnetlab.cli, "main", two_lines)
    assert run_case(Case("args", ["models"]), tmp_path / "f").problem == "more than one line on stderr"


def test_the_judge_catches_lost_inputs_and_bad_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks of issue 22: a replaced or removed input, control characters and NaN on stdout, JSON that is
    not strict, an invalid input accepted; a declared output may change; the environment comes back."""
    import os

    import resnetlab.cli

    def overwrite(argv: list[str]) -> int:
        Path(argv[1]).write_text("replaced")
        return 0

    monkeypatch.setattr(resnetlab.cli, "main", overwrite)
    files = {"a.json": {"x": 1}}
    assert run_case(Case("args", ["x", "{root}/a.json"], files, writable=()), tmp_path / "a").problem \
        == "input replaced: a.json"
    assert run_case(Case("args", ["x", "{root}/a.json"], files, writable=("a.json",)), tmp_path / "b").problem is None
    # the older families declare nothing: their -o/--out/--resume targets are their outputs
    assert run_case(Case("args", ["x", "{root}/a.json", "-o", "{root}/a.json"], files), tmp_path / "c").problem is None

    def printing(text: str) -> object:
        def main(argv: list[str]) -> int:
            print(text)
            return 0

        return main

    for text, problem in (("a.png: cat 50.0%", None), ("\x1b[31mred.png: cat 50.0%", "control character '\\x1b'"),
                          ("a.png: cat nan%", "non-finite number"), ("a.png: cat\rdog", "control character '\\r'"),
                          ('[{"top": NaN}]', "non-finite number")):
        monkeypatch.setattr(resnetlab.cli, "main", printing(text))
        got = run_case(Case("args", ["x"]), tmp_path / f"p{len(text)}").problem
        assert (got is None) if problem is None else (got or "").startswith(problem), (text, got)
    monkeypatch.setattr(resnetlab.cli, "main", printing("[{\"top\": 1}"))
    assert "not strict JSON" in run_case(Case("args", ["predict", "--json"]), tmp_path / "j").problem
    monkeypatch.setattr(resnetlab.cli, "main", printing("ok"))
    assert run_case(Case("args", ["x"], invalid="a PNG missing rows"), tmp_path / "i").problem \
        == "accepted invalid input (a PNG missing rows)"

    seen = {}

    def env(argv: list[str]) -> int:
        seen.update(cache=os.environ.get("RESNETLAB_CACHE"), home=os.environ.get("HOME"))
        return 0

    monkeypatch.setattr(resnetlab.cli, "main", env)
    monkeypatch.setenv("HOME", "/somewhere")
    run_case(Case("env", ["x"], env={"RESNETLAB_CACHE": "{root}/c", "HOME": None}), tmp_path / "e")
    assert seen == {"cache": str(tmp_path / "e" / "c"), "home": None}
    assert os.environ["HOME"] == "/somewhere" and "RESNETLAB_CACHE" not in os.environ


def test_hub_cases_are_judged_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hubconf's entry points: a resnetlab error is one line; another exception type is a finding."""
    ok = run_case(Case("hub", ["hub", "resnet20", "depth=-1"]), tmp_path / "a")
    assert ok.problem is None and ok.rc == 2 and ok.err.startswith("resnetlab: error: depth")
    assert run_case(Case("hub", ["hub", "resnet20", "depth=8"]), tmp_path / "b").rc == 0
    import hubconf

    def crash(**kwargs: object) -> None:
        raise KeyError("spec")

    monkeypatch.setattr(hubconf, "resnet20", crash)
    assert run_case(Case("hub", ["hub", "resnet20"]), tmp_path / "c").problem == "exception: KeyError: 'spec'"


def test_the_reuse_judge_sees_work_reused_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reuse family's judge is not a pass-through: with a training known by its data's path again (as
    before issue 30), an image replaced behind the same path links the old training, and the judge says so."""
    import resnetlab.training.identity as identity

    case = Case("reuse", ["experiment", "{root}/reused.toml", "--scale", "small", "--data", "folder:{root}/pets",
                          "--iters", "1", "--set", "run.threads=1", "--set", "run.progress=false", "--set",
                          "run.tensorboard=false", "--out", "{root}/experiments/two", "--set", "data.pad=0"],
                env={"RESNETLAB_CACHE": "{root}/cache"}, writable=("experiments", "one", "two", "pets", "cache"),
                steps=(("reuse", {"kind": "data_changed", "field": None, "same_out": False, "iters": 1,
                                  "data": "folder", "init": False}),))
    assert run_case(case, tmp_path / "fixed").problem is None
    monkeypatch.setattr(identity, "source_digest", lambda source, cache: None)  # the path, not what is behind it
    assert run_case(case, tmp_path / "by-path").problem == "reused another training (data_changed , new --out)"


def test_the_record_walk_reaches_every_depth(tmp_path: Path) -> None:
    """The config and summary families' walk changes one field of the real record at the depth it stops at: a
    whole section, a nested field, a row of metrics.jsonl; or takes it out. A config.json whose `schedule`
    section is null is a case it draws; resumed, it is refused in one line (before 0e9f02c it read back as the
    defaults and the run trained on towards 64,000 iterations, past the judge's time bound)."""
    import json

    from tests.fuzz.args import DELETE, _patch
    from tests.fuzz.common import template_run

    doc = tmp_path / "doc.json"
    for walk, value, want in (((1,), None, {"a": 1, "b": None, "d": [3, 4]}),
                              ((1, 0), "x", {"a": 1, "b": {"c": "x"}, "d": [3, 4]}),
                              ((2, 1, 7), 5, {"a": 1, "b": {"c": 2}, "d": [3, 5]}),  # stops at a leaf
                              ((66,), DELETE, {"b": {"c": 2}, "d": [3, 4]})):  # 66 % 3 == 0
        doc.write_text(json.dumps({"a": 1, "b": {"c": 2}, "d": [3, 4]}))
        _patch(doc, walk, value)
        assert json.loads(doc.read_text()) == want, walk
    rows = tmp_path / "m.jsonl"
    rows.write_text('{"step": 1}\n{"step": 2, "lr": 0.1}\n')
    _patch(rows, (1, 1), None)
    assert rows.read_text() == '{"step": 1}\n{"step": 2, "lr": null}\n'

    section = list(json.loads((template_run() / "config.json").read_text())).index("schedule")
    case = Case("config", ["train", "--resume", "{root}/run"], steps=(("patch", "config.json", (section,), None),))
    outcome = _judge(case)
    assert outcome.rc == 2 and "no longer give the training it started" in outcome.err, outcome.err


def test_every_top_level_field_of_a_suites_records_reads_back_in_one_line() -> None:
    """tools/record_sweep.py in small: each top-level field of a finished suite's `suite.json` and of its
    member's `summary.json` null or a number, under the rerun, `--collect` and `report`; and each section of a
    run's `config.json` so under `--resume`. On 551b6a4 this finds `"contents": 5` and `"final": null` (a
    TypeError and an AttributeError) and the resumed run that trains on past the time bound."""
    from tools.record_sweep import cases

    chosen = [c for c in cases(["suite/suite.json", "suite/a/seed0/summary.json", "config.json"], depth=1)
              if c.steps[0][3] in (None, 5) and (c.family == "suite" or c.argv[:2] == ["train", "--resume"])]
    assert len(chosen) == (10 + 19) * 2 * 3 + 8 * 2  # suite.json 10 fields, summary.json 19, config.json 8
    for case in chosen:
        _judge(case)

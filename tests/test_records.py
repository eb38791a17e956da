"""What a run directory's records hold (`runs/records.py`): metrics rows round-trip with their keys in order,
divergence rows and other lines, the best and final errors, and summaries of older versions (moved from
test_monitor.py, issue 32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.runs.records import DivergenceRow, MetricsRow, Summary, best_of, evaluation_rows, row_from_dict

ROW = {"epoch": 1, "step": 44, "lr": 0.1, "train_loss": 0.5, "train_error": 0.1, "test_loss": 0.4,
       "test_error": 0.08, "test_top5_error": 0.0, "images_per_s": 100.0, "eval_images_per_s": 900.0,
       "epoch_time_s": 1.5, "wall_time_s": 2.0}
VAL = {"val_loss": 0.45, "val_error": 0.09, "val_top5_error": 0.01}


def test_metrics_rows_round_trip_with_the_same_keys_in_the_same_order() -> None:
    with_val = {**{k: ROW[k] for k in list(ROW)[:8]}, **VAL, **{k: ROW[k] for k in list(ROW)[8:]}}
    for data in (ROW, with_val):
        row = row_from_dict(json.loads(json.dumps(data)))
        assert isinstance(row, MetricsRow)
        assert json.dumps(row.to_dict()) == json.dumps(data)


def test_divergence_rows_and_other_lines() -> None:
    data = {"epoch": 1, "step": 12, "diverged": True, "diverged_at_step": 11, "lr": 0.1}
    row = row_from_dict(data)
    assert isinstance(row, DivergenceRow) and json.dumps(row.to_dict()) == json.dumps(data)
    assert row_from_dict({"note": 1}) is None and row_from_dict({"test_error": 0.1}) is None
    assert evaluation_rows([ROW, data, {"x": 1}]) == [MetricsRow(**ROW)]


def test_best_and_final_are_selected_as_before() -> None:
    row = MetricsRow(**ROW)
    assert best_of(row) == {"epoch": 1, "step": 44, "test_error": 0.08, "test_top5_error": 0.0,
                            "selected_on": "test"}
    assert list(row.final()) == ["test_error", "test_top5_error", "test_loss", "train_error", "train_loss"]
    held = MetricsRow(**ROW, **VAL)
    assert best_of(held)["selected_on"] == "val" and held.final()["val_error"] == 0.09


def test_old_summaries_read_and_unknown_keys_are_ignored() -> None:
    old = {"model": "resnet20", "status": "finished", "final": {"test_error": 0.1}, "extra": 1}
    summary = Summary.from_dict(old)
    assert summary.status == "finished" and summary.final == {"test_error": 0.1} and summary.params is None
    assert list(Summary().to_dict())[:4] == ["model", "data", "recipe", "status"]


@pytest.mark.parametrize(("key", "value"), [("step", "x"), ("step", None), ("step", [1]), ("train_error", None),
                                            ("test_error", None), ("lr", None)])
def test_a_metrics_row_of_another_shape_is_skipped_by_resume_and_report(tmp_path: Path, key: str,
                                                                         value: object) -> None:
    """A row of metrics.jsonl with a step that is not a number, or null where a number is due, is skipped like a
    line a crash cut: the resumed run rewrites its summary and figure, and the report is written."""
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--set", "model.depth=8", "--iters", "8", "--set",
                 "optim.batch_size=512", "--set", "run.progress=false", "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[0][key] = value
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").unlink()  # as killed before its summary: the resume writes it from metrics.jsonl
    assert row_from_dict(rows[0]) is None or key == "step"
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0


@pytest.mark.parametrize(("key", "value"), [("test_error", 1e308), ("train_error", -1), ("test_top5_error", 1.5),
                                            ("test_error", float("nan"))])
def test_an_error_that_is_not_a_fraction_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture, key: str,
                                                     value: float) -> None:
    """An error in metrics.jsonl outside [0, 1] (or NaN) is a row of another shape: skipped, not reported. Its
    run's final row with test_error 1e308 made a resume print "test error inf%" and write it to summary.json
    (found by tools/record_sweep.py)."""
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--set", "model.depth=8", "--iters", "2", "--set",
                 "run.progress=false", "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[-1][key] = value
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").unlink()  # as killed before its summary: the resume writes it from metrics.jsonl
    assert row_from_dict(rows[-1]) is None
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    final = json.loads((run / "summary.json").read_text())["final"]
    assert "inf" not in out and "nan" not in out and key not in final, (out, final)

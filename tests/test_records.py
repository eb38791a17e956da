"""What a run directory's records hold (`runs/records.py`): metrics rows round-trip with their keys in order,
divergence rows and other lines, the best and final errors, and summaries of older versions (moved from
test_monitor.py, issue 32)."""

from __future__ import annotations

import json

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

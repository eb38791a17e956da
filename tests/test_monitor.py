"""The loop's parts on their own, in-process: the divergence monitor, the stop reasons, the records,
the progress bookkeeping and the linear-scaling schedule."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from resnetlab.errors import ConfigError
from resnetlab.runs.records import DivergenceRow, MetricsRow, Summary, best_of, evaluation_rows, row_from_dict
from resnetlab.settings.config import build_config
from resnetlab.training.distributed import World
from resnetlab.training.monitor import DivergenceMonitor, StopFlag, StopReason
from resnetlab.training.progress import Progress
from resnetlab.training.schedule import build_schedule

FINITE, NAN = torch.tensor(True), torch.tensor(False)


def flags_with_nan_at(k: int, n: int) -> list[torch.Tensor]:
    """The finite flags of steps 1..n, the k-th (counting from 1) not finite."""
    return [NAN if step == k else FINITE for step in range(1, n + 1)]


def run_monitor(monitor: DivergenceMonitor, flags: list[torch.Tensor], stop: StopFlag | None = None) -> int | None:
    """Feed the flags as the loop does (after each step, then the epoch's end); the step it reports."""
    stop = stop or StopFlag()
    for step, finite in enumerate(flags, start=1):
        at = monitor.after_step(finite, step, stop)
        if at is not None:
            return at
    return monitor.drain()


@pytest.mark.parametrize("lag", [0, 1])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_nan_at_step_k_is_reported_at_k_with_either_lag(lag: int, k: int) -> None:
    assert run_monitor(DivergenceMonitor(lag, World()), flags_with_nan_at(k, 5)) == k


def test_lag_one_reads_a_flag_one_step_late() -> None:
    monitor, stop = DivergenceMonitor(1, World()), StopFlag()
    assert monitor.after_step(NAN, 1, stop) is None  # not read yet: no host sync on the step itself
    assert monitor.after_step(FINITE, 2, stop) == 1
    eager = DivergenceMonitor(0, World())
    assert eager.after_step(NAN, 1, stop) == 1


def test_the_epoch_end_reads_the_flags_left_over() -> None:
    monitor, stop = DivergenceMonitor(1, World()), StopFlag()
    assert monitor.after_step(NAN, 7, stop) is None
    assert monitor.drain() == 7
    assert monitor.drain() is None  # forgotten: the next epoch starts clean


def test_finite_steps_never_diverge() -> None:
    for lag in (0, 1):
        assert run_monitor(DivergenceMonitor(lag, World()), [FINITE] * 6) is None


def test_device_picks_the_lag() -> None:
    assert DivergenceMonitor.for_device(torch.device("cpu"), World()).lag == 0
    assert DivergenceMonitor.for_device(torch.device("cuda"), World()).lag == 1
    assert DivergenceMonitor.for_device(torch.device("cuda"), World(size=2)).lag == 0  # the all-reduce syncs


class FakeRanks:
    """An all-reduce (max) over this rank's flags and those the other ranks are said to send."""

    def __init__(self, others: list[list[float]]) -> None:
        self.others, self.calls = others, 0

    def __call__(self, flags: torch.Tensor, world: World) -> torch.Tensor:
        theirs = torch.tensor(self.others[self.calls], dtype=flags.dtype)
        self.calls += 1
        return torch.maximum(flags, theirs)


def test_ranks_agree_on_a_divergence_another_rank_saw() -> None:
    other = [[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]  # [signal, not finite] of the other rank, steps 1..3
    monitor = DivergenceMonitor(1, World(size=2), reduce=FakeRanks(other))
    assert run_monitor(monitor, [FINITE] * 5) == 3  # this rank's losses were all finite


def test_ranks_agree_on_a_signal_another_rank_received() -> None:
    monitor, stop = DivergenceMonitor(0, World(size=2), reduce=FakeRanks([[0.0, 0.0], [1.0, 0.0]])), StopFlag()
    assert monitor.after_step(FINITE, 1, stop) is None and stop.signal is None
    assert monitor.after_step(FINITE, 2, stop) is None
    assert stop.signal == signal.SIGTERM  # this rank stops at the same step as the one signalled


def test_a_divergence_outranks_a_signal_at_the_same_step() -> None:
    monitor, stop = DivergenceMonitor(0, World(size=2), reduce=FakeRanks([[1.0, 1.0]])), StopFlag()
    assert monitor.after_step(FINITE, 4, stop) == 4
    assert stop.signal is None


def test_stop_reasons_keep_the_summary_status_strings() -> None:
    assert [r.status for r in StopReason] == ["finished", "finished", "stopped", "diverged"]
    assert StopReason.RUNNING.status == "finished"  # a loop that ran out of steps finished its schedule


def test_stop_flag_catches_sigterm_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


# ---- records ---------------------------------------------------------------------------------------------
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


# ---- progress and schedule ---------------------------------------------------------------------------------
def test_progress_checkpoints_only_its_fields() -> None:
    p = Progress(step=5, seen=10)
    p.start_session()
    p.tick()
    assert set(p.to_dict()) == {"step", "warmup_end", "loss_sum", "wrong", "seen", "train_time", "elapsed", "best"}
    assert Progress(**p.to_dict()) == p
    p.loss_sum, p.wrong = 1.0, 3
    p.reset_epoch()
    assert (p.loss_sum, p.wrong, p.seen, p.train_time) == (0.0, 0, 0, 0.0)
    assert Progress(step=88).epoch_label(44) == 2 and Progress(step=60).epoch_label(44) == 1.364


def test_linear_scaling_is_part_of_the_schedule() -> None:
    cfg = build_config(overrides={"optim.linear_scaling": True})
    one, four = build_schedule(cfg, 10, 20), build_schedule(cfg, 10, 20, world_size=4)
    assert four.base_lr == 4 * one.base_lr and four.warmup_lr == 4 * one.warmup_lr
    plain = build_config()
    assert build_schedule(plain, 10, 20, world_size=4).base_lr == plain.optim.lr


def test_bad_model_settings_fail_when_the_config_is_built() -> None:
    with pytest.raises(ConfigError, match="shortcut"):
        build_config(overrides={"model.shortcut": "sideways"})
    with pytest.raises(ConfigError, match="unknown model"):
        build_config(model="resnet21x")
    with pytest.raises(ConfigError, match=r"^data\.normalize: 'zca' is not one of"):
        build_config(overrides={"data.normalize": "zca"})

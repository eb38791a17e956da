"""The training loop's watchers on their own, in-process: the divergence monitor (which step a NaN is reported
at, with either lag, and across ranks) and the stop reasons and flag (issue 32: the records, progress,
schedule and config tests that shared this file went to files of their own)."""

from __future__ import annotations

import signal

import pytest
import torch

from resnetlab.training.distributed import World
from resnetlab.training.progress import DivergenceMonitor, StopFlag, StopReason

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

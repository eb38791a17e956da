"""The child side of the `killtrack` family: a fork server (`python -m tests.fuzz.killtrack_session`) that imports
torch, MLflow, W&B and resnetlab once, and forks sessions, each a `resnetlab` command that SIGKILLs itself at one
moment. It imports nothing of the fuzz package."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after(owners: list[Any], name: str, n: int, before: bool = False) -> None:
    """`name` of each of `owners` SIGKILLs the process at the `n`th call (counted over all of them), before or
    after the call itself."""
    calls = [0]

    def wrap(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if before and calls[0] == n:
                _die()
            out = original(*args, **kwargs)
            if not before and calls[0] == n:
                _die()
            return out

        return wrapper

    for owner in owners:
        setattr(owner, name, wrap(getattr(owner, name)))


def _fake_tensorboard() -> None:
    """torch.utils.tensorboard with a SummaryWriter that writes every call at once to an event file of its own."""
    import types

    import resnetlab.settings.trackers as settings

    class SummaryWriter:
        def __init__(self, logdir: str, purge_step: int | None = None) -> None:
            Path(logdir).mkdir(parents=True, exist_ok=True)
            self.file = Path(logdir) / f"events.out.tfevents.{time.time_ns()}.fake"
            self._write({"open": purge_step})

        def _write(self, entry: dict[str, Any]) -> None:
            with open(self.file, "a") as f:
                f.write(json.dumps(entry) + "\n")

        def add_scalar(self, key: str, value: float, step: int) -> None:
            self._write({"key": key, "value": value, "step": step})

        def close(self) -> None:
            pass

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
    sys.modules["torch.utils.tensorboard"] = module
    real = settings.installed
    settings.installed = lambda name: name == "tensorboard" or real(name)


def child(point: str, n: int, argv: list[str]) -> int:
    """One session: `resnetlab ARGV`, SIGKILLed at the `n`th `point` (`point` "none": never)."""
    from resnetlab.cli import main
    from resnetlab.runs.directory import RunDir
    from resnetlab.training import tracker_kinds, trackers
    from resnetlab.training.trainer import Trainer

    _fake_tensorboard()
    # the kill points (killtrack.POINTS): a metrics row written (before_row, row), a checkpoint saved, a row sent
    # to a tracker (counted over the trackers), the run's end sent to the trackers (before it)
    where = {"before_row": ([RunDir], "append_metrics"), "row": ([RunDir], "append_metrics"),
             "checkpoint": ([Trainer], "save"), "send": (list(tracker_kinds.KINDS.values()), "metrics"),
             "end": ([trackers.Trackers], "end")}
    if point in where:
        _kill_after(*where[point], 1 if point == "end" else n, before=point in ("before_row", "end"))
    return main(argv)


PRELOAD = ("torch", "mlflow", "wandb", "resnetlab.cli", "resnetlab.training.trainer")


def serve() -> None:
    """The fork server (`--server`): imports torch, MLflow, W&B and resnetlab once (a fresh interpreter spends
    seconds on them every session), then per request line (JSON: point, n, argv, root, env, output) forks a
    session and answers its pid, then its exit code (-9: killed). It runs no torch operation itself, so each
    fork starts with fresh thread pools."""
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for line in sys.stdin:
        ask = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _forked(**ask)
        print(json.dumps({"pid": pid}), flush=True)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)


def _forked(point: str, n: int, argv: list[str], root: str, env: dict[str, str], output: str) -> None:
    """A forked session: the case's folder and environment, its output to a file; never returns."""
    rc = 1
    try:
        os.chdir(root)
        os.environ.clear()
        os.environ.update(env)
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdin.close()
        rc = child(point, n, argv)
    except BaseException:  # noqa: BLE001 - a traceback in the session's output, exit 1
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


if __name__ == "__main__":
    serve()

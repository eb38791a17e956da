"""Experiment trackers: a run's config, metrics, summary, figure and final weights sent to TensorBoard, MLflow
or Weights & Biases (`run.tracker`, a list), besides the run directory, which stays the record.

- `run.tracker = ["mlflow", "wandb"]` (`--set run.tracker=mlflow,wandb`); TensorBoard is also on as before
  when `run.tensorboard` is true, or "auto" with tensorboard installed (then a missing package is no error).
- Where runs go is each tracker's own settings: MLflow's `MLFLOW_TRACKING_URI` and `MLFLOW_EXPERIMENT_NAME`
  (or `MLFLOW_EXPERIMENT_ID`); W&B's `WANDB_PROJECT`, `WANDB_ENTITY`, `WANDB_MODE`, `WANDB_DIR` and its
  login. Without an experiment or project name both use "resnetlab"; W&B writes under the run directory
  unless `WANDB_DIR` says otherwise. MLflow's HTTP retries are bounded (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`
  2, `MLFLOW_HTTP_REQUEST_TIMEOUT` 30 s, unless set), so a server that has gone stalls a run once, briefly.
- `run.tracker_tags = ["team=vision", ...]` (KEY=VALUE) tag the tracker runs; a suite adds its own
  (`suite`, `member`, `seed`, `scale`), and W&B groups a suite's runs (group = suite, job type = member).
- The tracker run ids are kept in the run directory (`trackers.json`): a resumed run continues the same
  tracker runs, with the same tracking URI / project, rather than starting new ones. W&B's folder is recorded
  relative to the run directory, so a run directory moved or copied elsewhere keeps writing inside itself. A
  trackers.json that is not a regular file (a FIFO would block), not JSON or nested too deeply is no record.
- An MLflow SQLite store (`sqlite:///PATH`) that SQLite cannot open (PATH a folder or a FIFO, below a file, in
  a folder that cannot be written) fails the tracker's start at once, rather than after MLflow's ten
  attempts to open it (about 100 s of sleeps and warnings).

An unknown tracker name, a malformed tag or a tracker whose package is missing is a one-line ConfigError when
the config is built, before anything runs. Once training has started a tracker can only cost a warning: the
first call of a tracker that raises (a server gone, a full disk, an expired login) is logged in one line,
that tracker gets nothing more from the run, and training carries on unchanged: trackers only read what the
run has written, and nothing they do reaches the model, the data or the random state.
"""

from __future__ import annotations

import atexit
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resnetlab.errors import ResnetlabError
from resnetlab.files.atomic import write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.files.reading import read_file
from resnetlab.settings import trackers as settings
from resnetlab.training.tracker_kinds import KINDS, Tracker, numbers
from resnetlab.weights.export import export, load_pretrained

Log = Callable[[str], None]

STATE_FILE = "trackers.json"



def with_suite_tags(given: Any, suite: str, member: str, seed: int, scale: str) -> list[str]:
    """A suite member's `run.tracker_tags`: the user's (a list, or one string) and the suite's own."""
    own = {"suite": suite, "member": member, "seed": str(seed), "scale": scale}
    if given is not None and not isinstance(given, str | list):
        return given  # not a list: the config's check says so, in one line
    mine = [given] if isinstance(given, str) else list(given or [])
    keys = {str(t).partition("=")[0].strip() for t in mine}
    return mine + [f"{k}={v}" for k, v in own.items() if k not in keys]


class Trackers:
    """The trackers of one run session, each dropped with one log line on its first failure.

    `names` None: a process that reports nothing (a worker rank of a multi-process run)."""

    def __init__(self, names: Sequence[str] | None, tensorboard: bool | str, log: Log) -> None:
        self.log = log
        self.wanted: list[str] = []
        self.active: list[Tracker] = []
        self.started = self.tb_missing = False
        if names is None:
            return
        settings.require(names)
        self.wanted = [n for n in settings.TRACKERS if n in names]
        if "tensorboard" not in self.wanted and tensorboard is not False:
            if settings.installed("tensorboard"):
                self.wanted.insert(0, "tensorboard")
            else:
                self.tb_missing = tensorboard is True

    def start(self, run_dir: Path) -> None:
        """Open every tracker on the run in `run_dir` (its config.json read for parameters and tags)."""
        if self.tb_missing:
            self.log("tensorboard is not installed: no events written")
        if self.started or not self.wanted:
            return
        self.started = True
        config = _read_json(run_dir / "config.json") or {}
        run_section = config.get("run") if isinstance(config.get("run"), dict) else {}
        tags = settings.tags_of(run_section.get("tracker_tags") or [])
        state_file = run_dir / STATE_FILE
        saved = _read_json(state_file) or {}
        name = (f"{tags['suite']}/{tags['member']}/seed{tags.get('seed', '')}" if "suite" in tags and "member" in tags
                else run_dir.resolve().name)
        states: dict[str, Any] = dict(saved)
        for kind in self.wanted:
            tracker = KINDS[kind]()
            earlier = saved.get(kind) if isinstance(saved.get(kind), dict) else None
            try:
                states[kind] = tracker.start(run_dir, name, config, tags, earlier)
            except Exception as exc:  # any failure of a tracker costs a warning, nothing more
                self._warn(kind, "start", exc)
                continue
            self.active.append(tracker)
        if any(states.get(t.name) for t in self.active) and states != saved:
            try:
                write_text_atomic(state_file, json.dumps(states, indent=2) + "\n")
            except Exception as exc:
                self.log(f"trackers: cannot record the tracker runs in {state_file} ({_line(exc)}); a resumed "
                         "run will start new ones")
        if self.active:
            atexit.register(self._abandon)

    def metrics(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row, at its step."""
        step = int(row.get("step", 0))
        values = {k: v for k, v in numbers(row).items() if k != "step"}
        self._each("metrics", lambda t: t.metrics(values, step))

    def end(self, summary: dict[str, Any], run_dir: Path, files: Sequence[Path], status: str) -> None:
        """The summary, the files and (a finished run) its final weights; then each tracker's run is closed."""
        if not self.active:
            return
        step = int(summary.get("steps") or 0)
        self._each("summary", lambda t: t.summary(summary, step))
        present = [p for p in files if p.is_file()]
        with tempfile.TemporaryDirectory(prefix="resnetlab-weights-") as tmp:
            weights = None
            if status == "finished" and any(t.takes_files for t in self.active):
                weights = self._weights(run_dir, Path(tmp), summary.get("model") or "model")
            self._each("files", lambda t: t.files(present, weights) if t.takes_files else None)
        self._each("finish", lambda t: t.finish(status))
        self.active = []
        atexit.unregister(self._abandon)

    def _weights(self, run_dir: Path, tmp: Path, model: str) -> Path | None:
        """The run's newest checkpoint as a .safetensors file (the `export` format), or None with a line."""
        import torch

        out = tmp / f"{model}.safetensors"
        try:
            with torch.random.fork_rng(devices=[]):  # building the net draws initial weights: not the run's RNG
                export(load_pretrained(run_dir), "safetensors", out)
        except Exception as exc:  # e.g. safetensors not installed
            self.log(f"trackers: the final weights are not sent ({_line(exc)})")
            return None
        return out

    def _abandon(self) -> None:  # the process is exiting without the run's end (a crash)
        self._each("finish", lambda t: t.finish("crashed"))
        self.active = []

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.active):
            try:
                call(tracker)
            except Exception as exc:  # a tracker never stops the run
                self.active.remove(tracker)
                self._warn(tracker.name, what, exc)

    def _warn(self, name: str, what: str, exc: BaseException) -> None:
        self.log(f"tracker {name} failed ({what}: {_line(exc)}); it gets nothing more from this run, whose run "
                 "directory is complete")


# ---- helpers ------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`; None for anything else: no file, not a regular file (a FIFO would block the
    read), not JSON, nested too deeply, not an object."""
    try:
        data = parse_json(read_file(path, "JSON"), str(path))
    except (OSError, ValueError, ResnetlabError):
        return None
    return data if isinstance(data, dict) else None


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

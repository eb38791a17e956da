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
- Each step reaches each tracker once, whatever kills the run and when: a metrics row is sent only
  after the checkpoint that keeps it is written (a run killed before it computes the row again and sends it
  then), and a resumed run first sends each tracker the rows of metrics.jsonl its tracker run lacks, so the
  tracker's history equals the run directory's. What a tracker holds is asked of the tracker: MLflow's metric
  history; for W&B offline, the transaction logs of the run's earlier sessions (a SIGKILLed process's log holds
  only what W&B had flushed, often nothing); TensorBoard's event files hold only what was flushed, so a later
  session opens its writer with `purge_step=0` (TensorBoard hides the earlier events) and sends every row
  again. W&B online is not asked (its server is not queried): there trackers.json's `acked` (per tracker, the
  last step held when a session of it last ended cleanly, written atomically) decides, so the rows a killed
  online session had already uploaded after that step may come twice.
- An MLflow SQLite store (`sqlite:///PATH`) that SQLite cannot open (PATH a folder or a FIFO, below a file, in
  a folder that cannot be written) fails the tracker's start at once, rather than after MLflow's ten
  attempts to open it (about 100 s of sleeps and warnings).

An unknown tracker name, a malformed tag or a tracker whose package is missing is a one-line ConfigError when
the config is built, before anything runs. Once training has started a tracker can only cost a warning: the
first call of a tracker that raises (a server gone, a full disk, an expired login) is logged in one line,
that tracker gets nothing more from this session (a resumed run sends it the rows it lacks), and training
carries on unchanged: trackers only read what the run has written, and nothing they do reaches the model, the
data or the random state.
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
from resnetlab.runs.directory import RunDir
from resnetlab.settings import trackers as settings
from resnetlab.training.tracker_kinds import KINDS, Tracker, numbers
from resnetlab.weights.export import export
from resnetlab.weights.pretrained import load_pretrained

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
        self.started = self.tb_missing = self.record_failed = False
        self.states: dict[str, Any] = {}  # trackers.json as it should be, and as it was last read or written
        self.recorded: dict[str, Any] = {}
        self.held: dict[str, set[int]] = {}  # the steps each tracker's run holds
        self.state_file = Path(STATE_FILE)
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
        """Open every tracker on the run in `run_dir` (its config.json read for parameters and tags), then send
        each the rows of the run's metrics.jsonl its tracker run lacks (`_catch_up`)."""
        if self.tb_missing:
            self.log("tensorboard is not installed: no events written")
        if self.started or not self.wanted:
            return
        self.started = True
        config = _read_json(run_dir / "config.json") or {}
        run_section = config.get("run") if isinstance(config.get("run"), dict) else {}
        tags = settings.tags_of(run_section.get("tracker_tags") or [])
        self.state_file = run_dir / STATE_FILE
        saved = _read_json(self.state_file) or {}
        name = (f"{tags['suite']}/{tags['member']}/seed{tags.get('seed', '')}" if "suite" in tags and "member" in tags
                else run_dir.resolve().name)
        self.states, self.recorded = dict(saved), dict(saved)
        for kind in self.wanted:
            tracker = KINDS[kind]()
            earlier = saved.get(kind) if isinstance(saved.get(kind), dict) else None
            try:
                self.states[kind] = tracker.start(run_dir, name, config, tags, earlier)
            except Exception as exc:  # any failure of a tracker costs a warning, nothing more
                self._warn(kind, "start", exc)
                continue
            self.active.append(tracker)
        self._record()
        if self.active:
            atexit.register(self._abandon)
            self._catch_up(run_dir, saved)

    def _catch_up(self, run_dir: Path, saved: dict[str, Any]) -> None:
        """Each tracker gets the rows of metrics.jsonl (as the resumed run has cut it back to its checkpoint) that
        its run does not hold: what the tracker says it holds (`Tracker.held`), or where it cannot tell, the rows
        up to the step recorded as acknowledged when a session of it last ended (`acked` in trackers.json)."""
        rows = [r for r in RunDir(run_dir).read_metrics() if _step(r) is not None]
        for tracker in list(self.active):
            found: list[set[int] | None] = []
            if not self._try(tracker, "held", lambda t, found=found: found.append(t.held())):
                continue
            held = found[0]
            if held is None:
                entry = saved.get(tracker.name)
                acked = entry.get("acked") if isinstance(entry, dict) else None
                acked = acked if isinstance(acked, int) and not isinstance(acked, bool) else None
                held = {s for r in rows if acked is not None and (s := _step(r)) is not None and s <= acked}
            self.held[tracker.name] = held
            missing = [r for r in rows if _step(r) not in held]
            if missing:
                self.log(f"trackers: {tracker.name} is sent the {len(missing)} row(s) of metrics.jsonl it lacks "
                         f"(steps {_step(missing[0])}-{_step(missing[-1])})")
            for row in missing:
                if not self._try(tracker, "metrics", lambda t, row=row: self._send(t, row)):
                    break

    def metrics(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row, at its step, to each tracker whose run does not hold that step yet. The trainer
        calls it once the checkpoint that keeps the row is written, so a resumed run never computes it again."""
        if _step(row) is not None:
            self._each("metrics", lambda t: self._send(t, row))

    def _send(self, tracker: Tracker, row: dict[str, Any]) -> None:
        step = _step(row)
        held = self.held.setdefault(tracker.name, set())
        if step is None or step in held:
            return
        tracker.metrics({k: v for k, v in numbers(row).items() if k != "step"}, step)
        held.add(step)

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
        self._acknowledge()
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
        self._acknowledge()
        self.active = []

    def _acknowledge(self) -> None:
        """After a clean finish, each tracker run with a record holds every step sent to it: its `acked`."""
        for tracker in self.active:
            entry, held = self.states.get(tracker.name), self.held.get(tracker.name)
            if isinstance(entry, dict) and entry and held:
                self.states[tracker.name] = entry | {"acked": max(held)}
        self._record()

    def _record(self) -> None:
        """trackers.json (atomically) when what it should say has changed: the tracker runs to reopen and the
        steps each acknowledged. A record that cannot be written is one line, once."""
        if self.record_failed or self.states == self.recorded or not any(self.states.get(t.name)
                                                                          for t in self.active):
            return
        try:
            write_text_atomic(self.state_file, json.dumps(self.states, indent=2) + "\n")
        except Exception as exc:
            self.record_failed = True
            self.log(f"trackers: cannot record the tracker runs in {self.state_file} ({_line(exc)}); a resumed "
                     "run will start new ones")
            return
        self.recorded = dict(self.states)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.active):
            self._try(tracker, what, call)

    def _try(self, tracker: Tracker, what: str, call: Callable[[Tracker], None]) -> bool:
        """`call(tracker)`; False (the tracker dropped, one line) if it raised."""
        try:
            call(tracker)
        except Exception as exc:  # a tracker never stops the run
            self.active.remove(tracker)
            self._warn(tracker.name, what, exc)
            return False
        return True

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


def _step(row: dict[str, Any]) -> int | None:
    """A metrics row's step (None: a row without a whole-number step, which no tracker is sent)."""
    step = row.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

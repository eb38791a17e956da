"""Experiment trackers (`run.tracker`): a run's config, metrics, summary, figure and final weights sent to
TensorBoard, MLflow or Weights & Biases besides the run directory, which stays the record (README: "Sending runs
to MLflow or Weights & Biases"). A tracker only reads what the run has written: one that fails costs one log line
and gets nothing more from the session, and the training carries on unchanged."""

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
from resnetlab.training.tracker_kinds import KINDS, Tracker, numbers, whole
from resnetlab.weights.export import export
from resnetlab.weights.pretrained import load_pretrained

STATE_FILE = "trackers.json"  # the tracker runs a resumed run reopens, and the last step each acknowledged


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

    def __init__(self, names: Sequence[str] | None, tensorboard: bool | str, log: Callable[[str], None]) -> None:
        self.log = log
        self.wanted: list[str] = []
        self.active: dict[str, Tracker] = {}
        self.tb_missing = self.record_failed = False
        self.states: dict[str, Any] = {}  # trackers.json as it should be, and as it was last read or written
        self.recorded: dict[str, Any] = {}
        self.held: dict[str, set[int]] = {}  # the steps each tracker's run holds
        if names is None:
            return
        settings.require(names)
        board = tensorboard is not False and settings.installed("tensorboard")  # TensorBoard as before trackers
        self.wanted = [n for n in settings.TRACKERS if n in names or (n == "tensorboard" and board)]
        self.tb_missing = tensorboard is True and "tensorboard" not in self.wanted

    def start(self, run_dir: Path) -> None:
        """Open every tracker on the run in `run_dir` (its config.json read for parameters and tags), then send
        each the rows of the run's metrics.jsonl its tracker run lacks (`_catch_up`)."""
        if self.tb_missing:
            self.log("tensorboard is not installed: no events written")
        if not self.wanted:
            return
        config = _read_json(run_dir / "config.json") or {}
        run_section = config.get("run") if isinstance(config.get("run"), dict) else {}
        tags = settings.tags_of(run_section.get("tracker_tags") or [])
        self.state_file = run_dir / STATE_FILE
        saved = _read_json(self.state_file) or {}
        earlier = {kind: entry for kind, entry in saved.items() if isinstance(entry, dict) and entry}
        name = (f"{tags['suite']}/{tags['member']}/seed{tags.get('seed', '')}" if "suite" in tags and "member" in tags
                else run_dir.resolve().name)
        self.states, self.recorded = dict(saved), dict(saved)
        for kind in self.wanted:
            tracker = KINDS[kind]()
            try:
                self.states[kind] = tracker.start(run_dir, name, config, tags, earlier.get(kind))
            except Exception as exc:  # any failure of a tracker costs a warning, nothing more
                self._warn(kind, "start", exc)
            else:
                self.active[kind] = tracker
        self._record()
        if self.active:
            atexit.register(self._finish)
            self._catch_up(run_dir, earlier)

    def _catch_up(self, run_dir: Path, earlier: dict[str, dict[str, Any]]) -> None:
        """Each step reaches each tracker once, whatever kills the run and when: a row is sent only after the
        checkpoint that keeps it (`metrics`), and on each start a tracker is sent the rows of metrics.jsonl (as
        the resumed run has cut it back) that its reopened run lacks. What it holds is asked of the tracker
        (`Tracker.held`); where it cannot tell (W&B online), it holds the rows up to its `acked` step, the last
        it held when a session of it last ended cleanly (so rows a killed online session had sent may come twice)."""
        rows = [r for r in RunDir(run_dir).read_metrics() if whole(r.get("step")) is not None]

        def ask(kind: str, tracker: Tracker) -> None:
            held = tracker.held() if kind in earlier else set()
            if held is None:
                acked = whole(earlier[kind].get("acked"))
                held = {r["step"] for r in rows if acked is not None and r["step"] <= acked}
            self.held[kind] = held
            missing = [r["step"] for r in rows if r["step"] not in held]
            if missing:
                self.log(f"trackers: {kind} is sent the {len(missing)} row(s) of metrics.jsonl it lacks "
                         f"(steps {missing[0]}-{missing[-1]})")

        self._each("held", ask)
        for row in rows:
            self.metrics(row)

    def metrics(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row, at its step, to each tracker whose run does not hold that step yet. The trainer
        calls it once the checkpoint that keeps the row is written, so a resumed run never computes it again."""
        step = whole(row.get("step"))
        values = {k: v for k, v in numbers(row).items() if k != "step"}

        def send(kind: str, tracker: Tracker) -> None:
            if step is not None and step not in self.held[kind]:
                tracker.metrics(values, step)
                self.held[kind].add(step)

        self._each("metrics", send)

    def end(self, summary: dict[str, Any], run_dir: Path, files: Sequence[Path], status: str) -> None:
        """The summary, the files and (a finished run) its final weights; then each tracker's run is closed."""
        if not self.active:
            return
        step = int(summary.get("steps") or 0)
        self._each("summary", lambda _, t: t.summary(summary, step))
        present = [p for p in files if p.is_file()]
        with tempfile.TemporaryDirectory(prefix="resnetlab-weights-") as tmp:
            weights = None
            if status == "finished" and any(t.takes_files for t in self.active.values()):
                weights = self._weights(run_dir, Path(tmp) / f"{summary.get('model') or 'model'}.safetensors")
            self._each("files", lambda _, t: t.files(present, weights))
        self._finish(status)
        atexit.unregister(self._finish)

    def _weights(self, run_dir: Path, out: Path) -> Path | None:
        """The run's newest checkpoint as a .safetensors file (the `export` format), or None with a line."""
        import torch

        try:
            with torch.random.fork_rng(devices=[]):  # building the net draws initial weights: not the run's RNG
                export(load_pretrained(run_dir), "safetensors", out)
        except Exception as exc:  # e.g. safetensors not installed
            self.log(f"trackers: the final weights are not sent ({_line(exc)})")
            return None
        return out

    def _finish(self, status: str = "crashed") -> None:
        """Each tracker's run closed (at exit without the run's end: crashed), and then recorded as holding
        every step sent to it (its `acked`)."""
        self._each("finish", lambda _, t: t.finish(status))
        for kind in self.active:
            entry, held = self.states.get(kind), self.held.get(kind)
            if isinstance(entry, dict) and entry and held:
                self.states[kind] = entry | {"acked": max(held)}
        self._record()
        self.active = {}

    def _record(self) -> None:
        """trackers.json (atomically) when what it should say has changed. A record that cannot be written is one
        line, once."""
        if self.record_failed or self.states == self.recorded or not any(self.states.get(k) for k in self.active):
            return
        try:
            write_text_atomic(self.state_file, json.dumps(self.states, indent=2) + "\n")
        except Exception as exc:
            self.record_failed = True
            self.log(f"trackers: cannot record the tracker runs in {self.state_file} ({_line(exc)}); a resumed "
                     "run will start new ones")
        else:
            self.recorded = dict(self.states)

    def _each(self, what: str, call: Callable[[str, Tracker], None]) -> None:
        """`call(kind, tracker)` for each tracker; one that raises is dropped, with one line."""
        for kind, tracker in list(self.active.items()):
            try:
                call(kind, tracker)
            except Exception as exc:  # a tracker never stops the run
                del self.active[kind]
                self._warn(kind, what, exc)

    def _warn(self, kind: str, what: str, exc: BaseException) -> None:
        self.log(f"tracker {kind} failed ({what}: {_line(exc)}); it gets nothing more from this run, whose run "
                 "directory is complete")


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

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
import importlib.util
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

Log = Callable[[str], None]

TRACKERS = ("tensorboard", "mlflow", "wandb")
STATE_FILE = "trackers.json"
DEFAULT_PROJECT = "resnetlab"  # MLflow experiment / W&B project when the environment names none
_INSTALL = {"tensorboard": "pip install tensorboard", "mlflow": "pip install 'resnetlab[mlflow]'",
            "wandb": "pip install 'resnetlab[wandb]'"}
_TB_KEYS = ("train_loss", "train_error", "test_loss", "test_error", "val_error", "lr")  # as before trackers
_MAX_PARAM = 500  # characters of an MLflow parameter value (the limit of older servers)
_MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FINISHED", "stopped": "KILLED"}


# ---- the settings, checked when the config is built -----------------------------------------------------------
def check_settings(run: Any) -> None:
    """`run.tracker`, `run.tracker_tags` and `run.tensorboard` make sense together (no imports: this also
    checks configs read back for evaluation)."""
    for name in run.tracker:
        if name not in TRACKERS:
            raise ConfigError(f"run.tracker: {name!r} is not one of {', '.join(TRACKERS)}")
    if len(set(run.tracker)) != len(run.tracker):
        raise ConfigError(f"run.tracker: {', '.join(run.tracker)} names a tracker twice")
    if "tensorboard" in run.tracker and run.tensorboard is False:
        raise ConfigError("run.tracker: tensorboard is asked for, and run.tensorboard is false; drop one")
    tags_of(run.tracker_tags)


def require_installed(run: Any) -> None:
    """A one-line ConfigError naming the package of the first asked-for tracker that is not installed."""
    _require(run.tracker)


def _require(names: Iterable[str]) -> None:
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"run.tracker: {name!r} is not one of {', '.join(TRACKERS)}")
        if not installed(name):
            raise ConfigError(f"run.tracker: {name} is not installed ({_INSTALL[name]})")


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def tags_of(items: Iterable[str]) -> dict[str, str]:
    """`["k=v", ...]` as a dict; a one-line ConfigError for an item without a key or with a key twice."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or len(key) > 250 or len(value) > 5000:
            raise ConfigError(f"run.tracker_tags: {item[:60]!r} is not KEY=VALUE (a key of 1-250 characters)")
        if key in tags:
            raise ConfigError(f"run.tracker_tags: the key {key!r} is given twice")
        tags[key] = value.strip()
    return tags


def with_suite_tags(given: Any, suite: str, member: str, seed: int, scale: str) -> list[str]:
    """A suite member's `run.tracker_tags`: the user's (a list, or one string) and the suite's own."""
    own = {"suite": suite, "member": member, "seed": str(seed), "scale": scale}
    if given is not None and not isinstance(given, str | list):
        return given  # not a list: the config's check says so, in one line
    mine = [given] if isinstance(given, str) else list(given or [])
    keys = {str(t).partition("=")[0].strip() for t in mine}
    return mine + [f"{k}={v}" for k, v in own.items() if k not in keys]


# ---- one tracker ------------------------------------------------------------------------------------------------
class Tracker:
    """What every tracker takes; each method may raise (the caller drops a tracker on its first failure)."""

    name = ""
    takes_files = False

    def start(self, run_dir: Path, name: str, config: dict[str, Any], tags: dict[str, str],
              state: dict[str, Any] | None) -> dict[str, Any]:
        """Open (or with `state`, reopen) this tracker's run; what a later session needs to reopen it."""
        return {}

    def metrics(self, values: dict[str, float], step: int) -> None: ...

    def summary(self, values: dict[str, Any], step: int) -> None: ...

    def files(self, paths: Sequence[Path], weights: Path | None) -> None: ...

    def finish(self, status: str) -> None: ...


class TensorBoard(Tracker):
    """Events in RUN/tensorboard: the scalars TensorBoard always had (losses, errors, lr)."""

    name = "tensorboard"

    def start(self, run_dir: Path, name: str, config: dict[str, Any], tags: dict[str, str],
              state: dict[str, Any] | None) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        return {}

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key in _TB_KEYS:
            if key in values:
                self.writer.add_scalar(key, values[key], step)

    def finish(self, status: str) -> None:
        self.writer.close()


class MLflow(Tracker):
    """An MLflow run: parameters (the flattened config), metrics by step, the summary as `summary.*` metrics
    and tags, config.json, summary.json, the figure and the weights as artifacts."""

    name = "mlflow"
    takes_files = True

    def start(self, run_dir: Path, name: str, config: dict[str, Any], tags: dict[str, str],
              state: dict[str, Any] | None) -> dict[str, Any]:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        import mlflow
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if state:
            _check_sqlite(state["tracking_uri"])
            self.client = MlflowClient(state["tracking_uri"])
            self.run_id = state["run_id"]
            self.client.get_run(self.run_id)  # there still: else this tracker stops here, with a warning
            self.client.update_run(self.run_id, status="RUNNING")
            return dict(state)
        uri = mlflow.get_tracking_uri()
        _check_sqlite(uri)
        self.client = MlflowClient(uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if not experiment:
            title = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
            found = self.client.get_experiment_by_name(title)
            experiment = found.experiment_id if found is not None else self.client.create_experiment(title)
        run = self.client.create_run(experiment, run_name=name,
                                     tags=tags | {"resnetlab.run_dir": str(run_dir.resolve())})
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # a request carries at most 100
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        if (run_dir / "config.json").is_file():
            self.client.log_artifact(self.run_id, str(run_dir / "config.json"))
        return {"run_id": self.run_id, "tracking_uri": uri, "experiment_id": experiment}

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def summary(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        flat, numbers = flatten(values, limit=None), _numbers(values)
        self.client.log_batch(
            self.run_id, metrics=[Metric(f"summary.{k}", v, now, step) for k, v in numbers.items()],
            tags=[RunTag(f"summary.{k}", str(v)[:_MAX_PARAM]) for k, v in flat.items()
                  if k not in numbers and v is not None])

    def files(self, paths: Sequence[Path], weights: Path | None) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))
        if weights is not None:
            self.client.log_artifact(self.run_id, str(weights), "weights")

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, _MLFLOW_STATUS.get(status, "FAILED"))


class WandB(Tracker):
    """A W&B run: the config, metrics against `step`, the summary, the figure and summary.json as files,
    the weights as a model artifact."""

    name = "wandb"
    takes_files = True

    def start(self, run_dir: Path, name: str, config: dict[str, Any], tags: dict[str, str],
              state: dict[str, Any] | None) -> dict[str, Any]:
        import wandb

        where = {"project": None if os.environ.get("WANDB_PROJECT") else DEFAULT_PROJECT,
                 "dir": None if os.environ.get("WANDB_DIR") else str(run_dir)}
        if state:
            # a recorded folder is the run directory ("."; older records: its path where it was then): the run
            # directory where it is now, so a moved or copied run never writes to its old place
            where = {"project": state.get("project"), "entity": state.get("entity") or None,
                     "dir": str(run_dir) if state.get("dir") else where["dir"]}
            self.run = wandb.init(id=state["id"], resume="allow", **where)
        else:
            self.run = wandb.init(name=name, config=config, tags=[f"{k}={v}"[:64] for k, v in tags.items()],
                                  group=tags.get("suite"), job_type=tags.get("member"), **where)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        return {"id": self.run.id, "project": self.run.project, "entity": getattr(self.run, "entity", None),
                "dir": "." if where.get("dir") else None}  # relative to the run directory

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values | {"step": step})

    def summary(self, values: dict[str, Any], step: int) -> None:
        self.run.summary.update({f"summary.{k}": v for k, v in flatten(values, limit=None).items()})

    def files(self, paths: Sequence[Path], weights: Path | None) -> None:
        import wandb

        for path in paths:
            self.run.save(str(path), base_path=str(path.parent), policy="now")
        if weights is not None:
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model")
            artifact.add_file(str(weights))
            self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in ("finished", "diverged") else 1)


KINDS: dict[str, type[Tracker]] = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


# ---- the trackers of one run --------------------------------------------------------------------------------------
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
        _require(names)
        self.wanted = [n for n in TRACKERS if n in names]
        if "tensorboard" not in self.wanted and tensorboard is not False:
            if installed("tensorboard"):
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
        tags = tags_of(run_section.get("tracker_tags") or [])
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
                from .atomic import write_text_atomic

                write_text_atomic(state_file, json.dumps(states, indent=2) + "\n")
            except Exception as exc:
                self.log(f"trackers: cannot record the tracker runs in {state_file} ({_line(exc)}); a resumed "
                         "run will start new ones")
        if self.active:
            atexit.register(self._abandon)

    def metrics(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row, at its step."""
        step = int(row.get("step", 0))
        values = {k: v for k, v in _numbers(row).items() if k != "step"}
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
            from .export import export, load_pretrained

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
def flatten(data: dict[str, Any], prefix: str = "", limit: int | None = _MAX_PARAM) -> dict[str, Any]:
    """Nested dicts as `a.b.c` keys; other values as text of at most `limit` characters (None: as they are)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}.", limit))
        elif limit is None:
            out[name] = value
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:limit]
    return out


def _numbers(data: dict[str, Any]) -> dict[str, float]:
    """The finite numbers (not booleans) of a flattened dict."""
    return {k: float(v) for k, v in flatten(data, limit=None).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`; None for anything else: no file, not a regular file (a FIFO would block the
    read), not JSON, nested too deeply, not an object."""
    from .checkpoint import read_file
    from .errors import ResnetlabError
    from .jsondoc import parse_json

    try:
        data = parse_json(read_file(path, "JSON"), str(path))
    except (OSError, ValueError, ResnetlabError):
        return None
    return data if isinstance(data, dict) else None


_SQLITE = re.compile(r"sqlite(\+\w+)?:///")


def _check_sqlite(uri: object) -> None:
    """A ConfigError for an MLflow SQLite store (`sqlite:///PATH`) that SQLite cannot open: PATH a folder or
    not a regular file, below something that is not a folder, in a folder that cannot be written. MLflow would
    try to open it ten times, sleeping between (about 100 s, a warning each time). A missing folder is fine:
    MLflow creates it."""
    if not isinstance(uri, str) or not _SQLITE.match(uri):
        return
    try:
        from sqlalchemy.engine import make_url

        database = make_url(uri).database  # the path SQLAlchemy (and so MLflow) opens
    except Exception:  # a URI SQLAlchemy cannot read: MLflow says so, at once
        return
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    target = Path(os.path.abspath(database))
    problem = None
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:  # below a file, a link loop, no permission
        info, problem = None, f"cannot be reached ({exc.strerror or exc})"
    if info is not None:
        from .checkpoint import file_kind

        kind = file_kind(info.st_mode)
        if kind is not None:
            problem = f"is {kind}, not an SQLite database file"
        elif not os.access(target, os.R_OK | os.W_OK):
            problem = "cannot be read and written"
    if problem is None:
        folder = target.parent
        while not os.path.lexists(folder) and folder != folder.parent:  # MLflow creates the missing folders
            folder = folder.parent
        if not folder.is_dir():
            problem = f"is below {folder}, which is not a folder"
        elif not os.access(folder, os.W_OK | os.X_OK):
            problem = f"is in a folder that cannot be written ({folder})"
    if problem is not None:
        raise ConfigError(f"the MLflow store {target} {problem}")


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

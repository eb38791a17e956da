"""The trackers a run can report to, one class each (`KINDS`): TensorBoard, MLflow and Weights & Biases. Each
says which steps its run already holds (`held`), so that a resumed run sends it exactly the rows of metrics.jsonl
it lacks; `trackers.Trackers` starts them on a run, feeds them and drops one that fails."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnetlab.errors import ConfigError
from resnetlab.files.reading import file_kind
from resnetlab.settings.trackers import TRACKERS

DEFAULT_PROJECT = "resnetlab"  # MLflow experiment / W&B project when the environment names none
_TB_KEYS = ("train_loss", "train_error", "test_loss", "test_error", "val_error", "lr")  # as before trackers
_MAX_PARAM = 500  # characters of an MLflow parameter value (the limit of older servers)
_MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FINISHED", "stopped": "KILLED"}


class Tracker:
    """What every tracker takes; each method may raise (the caller drops a tracker on its first failure)."""

    takes_files = False

    def start(self, run_dir: Path, name: str, config: dict[str, Any], tags: dict[str, str],
              state: dict[str, Any] | None) -> dict[str, Any]:
        """Open (or with `state`, reopen) this tracker's run; what a later session needs to reopen it."""
        return {}

    def held(self) -> set[int] | None:
        """The steps of metrics rows a reopened run holds, asked of the tracker; None: it cannot tell."""
        return set()

    def metrics(self, values: dict[str, float], step: int) -> None: ...

    def summary(self, values: dict[str, Any], step: int) -> None: ...

    def files(self, paths: Sequence[Path], weights: Path | None) -> None: ...

    def finish(self, status: str) -> None: ...


class TensorBoard(Tracker):
    """Events in RUN/tensorboard: the scalars TensorBoard always had (losses, errors, lr). An event file holds only
    what was flushed when its process ended, so a later session opens its writer with `purge_step=0` (TensorBoard
    then hides every earlier event) and sends every row again."""

    def start(self, run_dir: Path, name: str, config: dict[str, Any], tags: dict[str, str],
              state: dict[str, Any] | None) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        folder = run_dir / "tensorboard"
        self.writer = SummaryWriter(str(folder), purge_step=0 if any(folder.glob("*tfevents*")) else None)
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

    takes_files = True

    def start(self, run_dir: Path, name: str, config: dict[str, Any], tags: dict[str, str],
              state: dict[str, Any] | None) -> dict[str, Any]:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        import mlflow
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = state["tracking_uri"] if state else mlflow.get_tracking_uri()
        _check_sqlite(uri)
        self.client = MlflowClient(uri)
        if state:
            self.run_id = state["run_id"]
            self.client.get_run(self.run_id)  # there still: else this tracker stops here, with a warning
            self.client.update_run(self.run_id, status="RUNNING")
            return dict(state)
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

    def held(self) -> set[int] | None:
        """The steps in the run's metric history (the `summary.*` metrics aside)."""
        keys = [k for k in self.client.get_run(self.run_id).data.metrics if not k.startswith("summary.")]
        return {m.step for k in keys for m in self.client.get_metric_history(self.run_id, k)}

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def summary(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric, RunTag

        now, finite = int(time.time() * 1000), numbers(values)
        tags = [RunTag(f"summary.{k}", str(v)[:_MAX_PARAM]) for k, v in flatten(values, limit=None).items()
                if k not in finite and v is not None]
        self.client.log_batch(self.run_id, metrics=[Metric(f"summary.{k}", v, now, step) for k, v in finite.items()],
                              tags=tags)

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

    def held(self) -> set[int] | None:
        """Offline: the steps in the transaction logs of this run's earlier sessions (what `wandb sync` would
        send; a SIGKILLed session's log holds what W&B had flushed, from nothing to most of it). Online the
        server is not asked: None."""
        settings = self.run.settings
        if settings.mode not in ("offline", "dryrun"):
            return None
        mine = Path(settings.sync_file).resolve()
        logs = Path(settings.wandb_dir).glob(f"offline-run-*/run-{self.run.id}.wandb")
        return {step for log in logs if log.resolve() != mine for row in wandb_history(log)
                if (step := whole(row.get("step"))) is not None}

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


# each tracker's class, by the name `run.tracker` gives it (the names are declared once, in settings.trackers)
KINDS: dict[str, type[Tracker]] = dict(zip(TRACKERS, (TensorBoard, MLflow, WandB), strict=True))


# ---- what a W&B transaction log holds ----------------------------------------------------------------------------
_BLOCK = 32768  # W&B's log is LevelDB's log format: blocks of 32 KiB, records of a 7-byte header and a payload


def wandb_history(path: Path) -> list[dict[str, Any]]:
    """The history records (`run.log` rows, keys to values) of a W&B transaction log, read up to its first
    damaged or missing record: the part a killed process left is read as far as it is whole."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows: list[dict[str, Any]] = []
    for chunk in _log_records(path.read_bytes()):
        record = pb.Record()
        try:
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
                             for item in record.history.item})
        except Exception:  # a payload that is no record: the rest is not trusted either
            break
    return rows


def _log_records(data: bytes) -> list[bytes]:
    """The whole records of a LevelDB-format log after W&B's 7-byte header (`:W&B`, magic, version); each
    fragment's CRC-32 (of its type byte and payload) checked."""
    if data[:4] != b":W&B":
        return []
    out: list[bytes] = []
    pos, pending = 7, None
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        crc, size, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if room < 7 or (size == 0 and kind == 0):  # a block's padding
            pos += room
            continue
        chunk = data[pos + 7:pos + 7 + size]
        if len(chunk) < size or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            break  # cut short or torn: what follows was never written whole
        pos += 7 + size
        if kind == 1:  # a full record
            out.append(chunk)
        elif kind == 2:  # its first fragment
            pending = chunk
        elif kind == 3 and pending is not None:  # a middle one
            pending += chunk
        elif kind == 4 and pending is not None:  # the last
            out.append(pending + chunk)
            pending = None
    return out


# ---- values -------------------------------------------------------------------------------------------------------
def whole(value: Any) -> int | None:
    """`value` if it is a whole number (not a boolean): a metrics row's step, trackers.json's `acked`."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
            out[name] = (value if isinstance(value, str) else json.dumps(value))[:limit]
    return out


def numbers(data: dict[str, Any]) -> dict[str, float]:
    """The finite numbers (not booleans) of a flattened dict."""
    return {k: float(v) for k, v in flatten(data, limit=None).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


_SQLITE = re.compile(r"sqlite(\+\w+)?:///")


def _check_sqlite(uri: object) -> None:
    """A ConfigError for an MLflow SQLite store (`sqlite:///PATH`) that SQLite cannot open, where MLflow would
    try ten times with sleeps (about 100 s, a warning each time). A missing folder is fine: MLflow creates it."""
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
    folder = target.parent
    while not os.path.lexists(folder) and folder != folder.parent:  # MLflow creates the missing folders
        folder = folder.parent
    problem = None
    try:
        kind = file_kind(os.stat(target).st_mode)
        if kind is not None:
            problem = f"is {kind}, not an SQLite database file"
        elif not os.access(target, os.R_OK | os.W_OK):
            problem = "cannot be read and written"
    except FileNotFoundError:
        pass
    except OSError as exc:  # below a file, a link loop, no permission
        problem = f"cannot be reached ({exc.strerror or exc})"
    if problem is None and not folder.is_dir():
        problem = f"is below {folder}, which is not a folder"
    elif problem is None and not os.access(folder, os.W_OK | os.X_OK):
        problem = f"is in a folder that cannot be written ({folder})"
    if problem is not None:
        raise ConfigError(f"the MLflow store {target} {problem}")

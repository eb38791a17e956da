"""Experiment trackers (training/trackers.py, tracker_kinds.py): MLflow against a real local store (SQLite in
tmp), W&B in offline mode (its files read back), TensorBoard through a stand-in SummaryWriter; resume continuing
the same tracker run; a tracker failing mid-run warned once, with the training unchanged; bad settings as one line.

Each MLflow / W&B test skips when its package is absent; `make setup` installs both (the `mlflow`, `wandb`
extras)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import deadline
from resnetlab.cli import main
from resnetlab.errors import ConfigError
from resnetlab.settings import trackers as tracker_settings
from resnetlab.settings.config import build_config
from resnetlab.training import trackers as tracking
from resnetlab.training.trainer import Trainer
from resnetlab.weights.checkpoint import load_checkpoint

TINY = ["train", "--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:8", "--set",
        "run.progress=false", "--set", "run.deterministic=true", "--set", "run.threads=1"]
TIMING = ("images_per_s", "eval_images_per_s", "epoch_time_s", "wall_time_s")


def train(out: Path, *extra: str, iters: int = 2) -> int:
    return main([*TINY, "--iters", str(iters), "--out", str(out), *extra])


def rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def untimed(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(run)]


def newest_weights(run: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    return load_checkpoint(newest)["model"]


def state(run: Path) -> dict[str, Any]:
    return json.loads((run / tracking.STATE_FILE).read_text())


def warnings_in(run: Path, name: str) -> list[str]:
    return [line for line in (run / "log.txt").read_text().splitlines() if line.startswith(f"tracker {name} failed")]


def stop_after(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """SIGTERM to this process once `step` steps are done, as `kill` would send it."""
    original = Trainer.train_step

    def step_then_signal(self: Trainer, *args: Any) -> Any:
        out = original(self, *args)
        if self.progress.step == step:
            signal.raise_signal(signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)


# ---- MLflow ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real MLflow store: SQLite in tmp, its artifacts beside it; created once (its migrations take seconds)."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)  # MLflow's default artifact root, ./mlruns, is taken from the cwd when the store opens
        MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def mlflow_store(mlflow_uri: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The store, with an experiment of this test's own (MLFLOW_EXPERIMENT_NAME = the test's name)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    return MlflowClient(mlflow_uri)


def runs_of(client: Any, request: pytest.FixtureRequest) -> list[Any]:
    experiment = client.get_experiment_by_name(request.node.name)
    return client.search_runs([experiment.experiment_id])


def test_mlflow_gets_params_metrics_summary_and_artifacts(mlflow_store: Any, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    out = tmp_path / "run"
    assert train(out, "--set", "run.tracker=mlflow", "--set", "run.tracker_tags=team=vision") == 0
    run_id = state(out)["mlflow"]["run_id"]
    run = mlflow_store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["model.depth"] == "8" and params["optim.lr"] == "0.1" and params["data.source"] == "synthetic:8"
    assert params["run.tracker"] == '["mlflow"]' and params["resolved.spec.depth"] == "8"
    assert run.data.tags["team"] == "vision" and run.data.tags["summary.status"] == "finished"
    written = rows(out)
    for key in ("test_error", "train_loss", "lr"):
        history = mlflow_store.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["step"], r[key]) for r in written]
    assert run.data.metrics["summary.final.test_error"] == written[-1]["test_error"]
    top = {a.path for a in mlflow_store.list_artifacts(run_id)}
    assert {"config.json", "curves.png", "summary.json", "weights"} <= top
    assert [a.path for a in mlflow_store.list_artifacts(run_id, "weights")] == ["weights/resnet20.safetensors"]
    local = mlflow_store.download_artifacts(run_id, "weights/resnet20.safetensors", str(tmp_path / "dl"))
    from safetensors.torch import load_file

    sent, kept = load_file(local), newest_weights(out)
    assert all(torch.equal(sent[k], kept[k]) for k in kept)  # the final weights, as the run keeps them
    assert len(runs_of(mlflow_store, request)) == 1


def test_mlflow_resume_continues_the_same_run(mlflow_store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              request: pytest.FixtureRequest) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        assert train(out, "--set", "run.tracker=mlflow", iters=4) == 3  # stopped by the signal
    run_id = state(out)["mlflow"]["run_id"]
    assert mlflow_store.get_run(run_id).info.status == "KILLED"
    before = [m.step for m in mlflow_store.get_metric_history(run_id, "test_error")]
    assert main(["train", "--resume", str(out)]) == 0
    assert state(out)["mlflow"]["run_id"] == run_id
    after = mlflow_store.get_metric_history(run_id, "test_error")
    assert [m.step for m in after] == [r["step"] for r in rows(out)] and [m.step for m in after][:len(before)] == before
    assert after[-1].step == 4 and mlflow_store.get_run(run_id).info.status == "FINISHED"
    assert len(runs_of(mlflow_store, request)) == 1  # no second tracker run


def test_mlflow_failing_mid_run_is_warned_once_and_changes_nothing(mlflow_store: Any, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    reference = tmp_path / "reference"
    assert train(reference, iters=3) == 0
    calls = {"n": 0}
    original = MlflowClient.log_batch

    def flaky(self: Any, *args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] >= 3:  # the parameters and the first row went through; then the server is gone
            raise ConnectionError("API request to http://tracker/api/2.0/mlflow/runs/log-batch failed")
        return original(self, *args, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    out = tmp_path / "run"
    assert train(out, "--set", "run.tracker=mlflow", iters=3) == 0
    warned = warnings_in(out, "mlflow")
    assert len(warned) == 1 and "ConnectionError" in warned[0] and calls["n"] == 3
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert untimed(out) == untimed(reference)
    ref, got = newest_weights(reference), newest_weights(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_an_unreachable_mlflow_server_is_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = tmp_path / "run"
    assert train(out, "--set", "run.tracker=mlflow") == 0
    assert len(warnings_in(out, "mlflow")) == 1 and "start" in warnings_in(out, "mlflow")[0]
    assert not (out / tracking.STATE_FILE).exists()


@pytest.mark.parametrize("var, value, name", [("MLFLOW_TRACKING_URI", "nope://nowhere", "mlflow"),
                                             ("WANDB_MODE", "sometimes", "wandb")])
def test_a_tracker_that_cannot_start_is_one_warning(var: str, value: str, name: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    request: pytest.FixtureRequest) -> None:
    pytest.importorskip(name)
    if name == "wandb":
        request.getfixturevalue("wandb_fresh")
    monkeypatch.setenv(var, value)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert train(out, "--set", f"run.tracker={name}") == 0
    assert len(warnings_in(out, name)) == 1 and "(start:" in warnings_in(out, name)[0]
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_a_suite_tags_its_members(mlflow_store: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "suite"
    assert main(["experiment", "degradation", "--scale", "small", "--data", "synthetic:8", "--iters", "1",
                 "--only", "resnet20", "--no-results", "--out", str(out), "--set", "run.tracker=mlflow",
                 "--set", "model.depth=8", "--set", "run.progress=false"]) == 0, capsys.readouterr().err
    run_id = state(out / "resnet20" / "seed0")["mlflow"]["run_id"]
    run = mlflow_store.get_run(run_id)
    assert {k: run.data.tags[k] for k in ("suite", "member", "seed", "scale")} == {
        "suite": "degradation", "member": "resnet20", "seed": "0", "scale": "small"}
    assert run.info.run_name == "degradation/resnet20/seed0"


# ---- W&B, offline ------------------------------------------------------------------------------------------------
@pytest.fixture
def wandb_fresh() -> Iterator[None]:
    """W&B's process-wide settings (read at its first init) reset before and after: each test its own."""
    wandb = pytest.importorskip("wandb")
    wandb.teardown()
    yield
    wandb.teardown()


@pytest.fixture
def wandb_offline(wandb_fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_PROJECT", "issue25")
    for var in ("WANDB_DIR", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))


def wandb_records(offline_dir: Path) -> list[tuple[str, Any]]:
    """The records of an offline run's `run-ID.wandb` file, once its `exit` record is written (W&B's core
    process writes it after `finish()` returns)."""
    until = time.time() + 60
    while True:
        records = _wandb_file(next(offline_dir.glob("run-*.wandb")))
        if (records and records[-1][0] == "exit") or time.time() > until:
            return records
        time.sleep(0.1)


def _wandb_file(path: Path) -> list[tuple[str, Any]]:
    """W&B's transaction log: LevelDB log blocks of 32 KiB, each record a 7-byte header and a protobuf
    `Record`, read as W&B writes it."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    chunks, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, size, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if size == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7:pos + 7 + size], pos + 7 + size
        if kind == 1:  # full
            chunks.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            chunks.append(pending + chunk)
    out = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        out.append((kind, getattr(record, kind)))
    return out


def history(records: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [{item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json) for item in h.item}
            for kind, h in records if kind == "history"]


def offline_runs(run: Path) -> list[Path]:
    return sorted((run / "wandb").glob("offline-run-*"))


def test_wandb_offline_gets_config_metrics_summary_and_files(wandb_offline: None, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out, "--set", "run.tracker=wandb", "--set", "run.tracker_tags=team=vision") == 0
    run_id = state(out)["wandb"]["id"]
    (offline,) = offline_runs(out)  # under the run directory (no WANDB_DIR)
    assert offline.name.endswith(run_id)
    records = wandb_records(offline)
    start = next(r for kind, r in records if kind == "run")
    assert start.run_id == run_id and start.project == "issue25" and list(start.tags) == ["team=vision"]
    config = {u.key: json.loads(u.value_json) for u in start.config.update}
    assert config["optim"]["lr"] == 0.1 and config["model"]["depth"] == 8 and config["run"]["tracker"] == ["wandb"]
    logged = [h for h in history(records) if "test_error" in h]
    assert [(h["step"], h["test_error"]) for h in logged] == [(r["step"], r["test_error"]) for r in rows(out)]
    summary = {}
    for kind, record in records:
        if kind == "summary":
            for u in record.update:
                summary[".".join(u.nested_key) or u.key] = json.loads(u.value_json)
    assert summary["summary.status"] == "finished"
    assert summary["summary.final.test_error"] == rows(out)[-1]["test_error"]
    files = {f.path for kind, r in records if kind == "files" for f in r.files}
    assert {"curves.png", "summary.json"} <= files
    artifact = next(r for kind, r in records if kind == "artifact")
    assert artifact.type == "model" and [c.path for c in artifact.manifest.contents] == ["resnet20.safetensors"]


def stopped_wandb_run(out: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A W&B-tracked run stopped by a signal after 2 of its 4 steps (exit 3); its W&B run id."""
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        assert train(out, "--set", "run.tracker=wandb", iters=4) == 3
    return str(state(out)["wandb"]["id"])


def assert_two_sessions_of(run_dir: Path, run_id: str) -> list[Path]:
    """The run directory holds two offline W&B sessions (start and resume), both of the one run `run_id`."""
    sessions = offline_runs(run_dir)
    assert len(sessions) == 2
    assert [next(r for kind, r in wandb_records(s) if kind == "run").run_id for s in sessions] == [run_id] * 2
    return sessions


def test_wandb_resume_continues_the_same_run(wandb_offline: None, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    run_id = stopped_wandb_run(out, monkeypatch)
    assert main(["train", "--resume", str(out)]) == 0
    assert state(out)["wandb"]["id"] == run_id
    sessions = assert_two_sessions_of(out, run_id)
    steps = [[h["step"] for h in history(wandb_records(s)) if "test_error" in h] for s in sessions]
    assert steps[0] + steps[1] == [r["step"] for r in rows(out)] and steps[1][-1] == 4


def test_wandb_failing_mid_run_is_warned_once(wandb_offline: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              request: pytest.FixtureRequest) -> None:
    from wandb.sdk.wandb_run import Run

    def gone(self: Any, *args: Any, **kw: Any) -> None:
        raise RuntimeError("wandb-core exited")

    monkeypatch.setattr(Run, "log", gone)
    both = tracker_settings.installed("mlflow") and tracker_settings.installed("sqlalchemy")
    if both:  # the other tracker carries on
        client = request.getfixturevalue("mlflow_store")
    out = tmp_path / "run"
    assert train(out, "--set", "run.tracker=wandb,mlflow" if both else "run.tracker=wandb", iters=3) == 0
    assert len(warnings_in(out, "wandb")) == 1 and "wandb-core exited" in warnings_in(out, "wandb")[0]
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    if both:
        history = client.get_metric_history(state(out)["mlflow"]["run_id"], "test_error")
        assert [m.step for m in history] == [r["step"] for r in rows(out)] and not warnings_in(out, "mlflow")


# ---- TensorBoard, through the same interface -----------------------------------------------------------------------
@pytest.fixture
def fake_tensorboard(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """torch.utils.tensorboard with a SummaryWriter that records its calls (tensorboard is not installed here)."""
    calls: list[tuple[Any, ...]] = []

    class SummaryWriter:
        def __init__(self, logdir: str, purge_step: int | None = None) -> None:
            calls.append(("open", logdir) if purge_step is None else ("open", logdir, purge_step))

        def add_scalar(self, key: str, value: float, step: int) -> None:
            calls.append(("scalar", key, value, step))

        def close(self) -> None:
            calls.append(("close",))

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    real = tracker_settings.installed
    monkeypatch.setattr(tracker_settings, "installed", lambda name: name == "tensorboard" or real(name))
    return calls


@pytest.mark.parametrize("how", [["--set", "run.tracker=tensorboard"], []])  # asked for, or run.tensorboard=auto
def test_tensorboard_is_one_of_the_trackers(fake_tensorboard: list[tuple[Any, ...]], tmp_path: Path,
                                            how: list[str]) -> None:
    out = tmp_path / "run"
    assert train(out, *how) == 0
    assert fake_tensorboard[0] == ("open", str(out / "tensorboard")) and fake_tensorboard[-1] == ("close",)
    scalars = {(c[1], c[3]): c[2] for c in fake_tensorboard if c[0] == "scalar"}
    for row in rows(out):
        assert scalars[("test_error", row["step"])] == row["test_error"] and ("lr", row["step"]) in scalars
    assert not (out / tracking.STATE_FILE).exists()  # nothing to reopen


def test_without_tensorboard_auto_is_silent_and_true_says_so(tmp_path: Path) -> None:
    if tracker_settings.installed("tensorboard"):
        pytest.skip("tensorboard is installed")
    assert train(tmp_path / "a") == 0 and train(tmp_path / "b", "--set", "run.tensorboard=true") == 0
    assert "tensorboard" not in (tmp_path / "a" / "log.txt").read_text()
    assert "tensorboard is not installed" in (tmp_path / "b" / "log.txt").read_text()


# ---- bad settings: one line, before anything runs ------------------------------------------------------------------
@pytest.mark.parametrize("settings, needle", [
    (["run.tracker=nope"], "run.tracker: 'nope' is not one of tensorboard, mlflow, wandb"),
    (["run.tracker=mlflow,mlflow"], "names a tracker twice"),
    (["run.tracker=5"], "run.tracker: expected a list of strings"),
    (["run.tracker=[1,2]"], "run.tracker: expected a list of strings"),
    (["run.tracker_tags=novalue"], "is not KEY=VALUE"),
    (["run.tracker_tags==x"], "is not KEY=VALUE"),
    (["run.tracker_tags=a=1,a=2"], "the key 'a' is given twice"),
    (["run.tracker=tensorboard", "run.tensorboard=false"], "run.tensorboard is false"),
])
def test_bad_tracker_settings_are_one_line(settings: list[str], needle: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert train(out, *[a for s in settings for a in ("--set", s)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("name", ["mlflow", "wandb", "tensorboard"])
def test_a_missing_tracker_package_is_one_line_before_training(name: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(tracker_settings, "installed", lambda _name: False)
    out = tmp_path / "run"
    assert train(out, "--set", f"run.tracker={name}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run.tracker: {name} is not installed (pip install" in err, err
    assert not out.exists()


def test_none_and_a_single_name_are_lists() -> None:
    assert build_config(overrides={"run.tracker": None}).run.tracker == []
    asked = "mlflow" if tracker_settings.installed("mlflow") else []
    assert build_config(overrides={"run.tracker": asked}).run.tracker in (["mlflow"], [])
    with pytest.raises(ConfigError, match="not one of"):
        build_config(overrides={"run.tracker": "MLflow"})


def test_a_config_read_back_is_not_asked_for_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """eval of a run trained with a tracker, on a machine without it: the config still reads."""
    from resnetlab.settings.config import config_from_dict

    saved = build_config(overrides={"run.tracker": []}).to_dict()
    saved["run"]["tracker"] = ["mlflow"]
    monkeypatch.setattr(tracker_settings, "installed", lambda _name: False)
    assert config_from_dict(saved).run.tracker == ["mlflow"]
    saved["run"]["tracker"] = ["nope"]
    with pytest.raises(ConfigError, match="'nope' is not one of"):
        config_from_dict(saved, where="config.json")


def test_a_corrupt_tracker_record_starts_a_new_tracker_run(mlflow_store: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_after(patch, 1)
        assert train(out, "--set", "run.tracker=mlflow", iters=2) == 3
    first = state(out)["mlflow"]["run_id"]
    (out / tracking.STATE_FILE).write_text("{not json")
    assert main(["train", "--resume", str(out)]) == 0
    assert state(out)["mlflow"]["run_id"] != first  # recorded anew; the run itself resumed as ever


def test_suite_tags_keep_the_users() -> None:
    assert tracking.with_suite_tags(["member=mine", "team=x"], "s", "m", 3, "small") == [
        "member=mine", "team=x", "suite=s", "seed=3", "scale=small"]
    assert tracking.with_suite_tags("team=x", "s", "m", 0, "paper")[0] == "team=x"
    assert tracking.with_suite_tags(5, "s", "m", 0, "paper") == 5  # left to the config check


# ---- the findings of the fuzz campaign (docs/reliability.md, "Services (issue 25)") -------------------------------
@pytest.mark.parametrize("damage", ["nested deeply", "a FIFO"])
def test_a_tracker_record_nested_deeply_or_a_fifo_is_no_record(damage: str, mlflow_store: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Was a RecursionError out of `train --resume`, or the resume blocked forever reading the FIFO."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_after(patch, 1)
        assert train(out, "--set", "run.tracker=mlflow", iters=2) == 3
    first = state(out)["mlflow"]["run_id"]
    record = out / tracking.STATE_FILE
    record.unlink()
    if damage == "a FIFO":
        os.mkfifo(record)
    else:
        record.write_text('{"mlflow": ' * 50_000 + "1" + "}" * 50_000)
    with deadline(120):
        assert main(["train", "--resume", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert not warnings_in(out, "mlflow")  # a new tracker run, started as if there were no record
    if damage != "a FIFO":  # a FIFO is never replaced (files.atomic): the new run is not recorded
        assert state(out)["mlflow"]["run_id"] != first


def test_an_mlflow_sqlite_store_that_cannot_open_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """A folder at the database's path: MLflow tried to open it ten times, with sleeps (about 100 s)."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    (tmp_path / "adir").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'adir'}")
    out = tmp_path / "run"
    start = time.perf_counter()
    assert train(out, "--set", "run.tracker=mlflow") == 0
    assert time.perf_counter() - start < 30
    (warned,) = warnings_in(out, "mlflow")
    assert "(start:" in warned and "is a directory, not an SQLite database file" in warned
    assert "retried" not in capsys.readouterr().err  # none of MLflow's warnings of its attempts
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_wandb_resume_of_a_moved_run_directory_writes_inside_it(wandb_offline: None, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B's folder was recorded as the run directory's path at the start: a moved run wrote to the old place."""
    out = tmp_path / "run"
    run_id = stopped_wandb_run(out, monkeypatch)
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(out, moved)
    assert main(["train", "--resume", str(moved)]) == 0
    assert not out.exists()  # nothing at the old place
    assert_two_sessions_of(moved, run_id)


# ---- kills: a step reaches each tracker exactly once (issue 30) ---------------------------------------------------
# A training in a child process that SIGKILLs itself inside its Nth checkpoint write (KILL_AT_SAVE=N: after the
# Nth metrics row is in metrics.jsonl, before its checkpoint), as `kill -9` would at that moment; FAKE_TENSORBOARD
# gives it a SummaryWriter that writes each call at once (every event flushed: the most a kill can leave) to an
# event file of its own.
CHILD = r"""
import json, os, signal, sys, time, types
from pathlib import Path

if os.environ.get("KILL_AT_SAVE"):
    from resnetlab.training.trainer import Trainer

    original, calls = Trainer.save, []

    def save(self, best=False):
        calls.append(1)
        if len(calls) == int(os.environ["KILL_AT_SAVE"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, best)

    Trainer.save = save
if os.environ.get("FAKE_TENSORBOARD"):
    class SummaryWriter:
        def __init__(self, logdir, purge_step=None):
            Path(logdir).mkdir(parents=True, exist_ok=True)
            self.file = Path(logdir) / f"events.out.tfevents.{time.time_ns()}.fake"
            self.write({"open": purge_step})

        def write(self, entry):
            with open(self.file, "a") as f:
                f.write(json.dumps(entry) + "\n")

        def add_scalar(self, key, value, step):
            self.write({"key": key, "value": value, "step": step})

        def close(self):
            pass

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = SummaryWriter
    sys.modules["torch.utils.tensorboard"] = module
    import resnetlab.settings.trackers as settings

    real = settings.installed
    settings.installed = lambda name: name == "tensorboard" or real(name)
from resnetlab.cli import main

sys.exit(main(sys.argv[1:]))
"""


def child_train(argv: list[str], kill_at_save: int | None = None, fake_tensorboard: bool = False) -> int:
    """`resnetlab ARGV` in a child process (KILL_AT_SAVE, FAKE_TENSORBOARD: see CHILD), in the folder above the
    run's (MLflow's default artifact root, ./mlruns, is taken from the cwd); its exit code."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT_SAVE": str(kill_at_save or ""),
           "FAKE_TENSORBOARD": "1" if fake_tensorboard else ""}
    where = Path(argv[argv.index("--out") + 1] if "--out" in argv else argv[-1]).parent
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, timeout=300,
                          cwd=where)
    assert done.returncode in (0, -signal.SIGKILL), done.stderr[-2000:]
    return done.returncode


def killed_and_resumed(out: Path, tracker: str, kill_at_save: int, fake_tensorboard: bool = False) -> None:
    """A 4-step run (a metrics row and a checkpoint at every step) SIGKILLed in its checkpoint write after
    row `kill_at_save`, then resumed to its end."""
    argv = [*TINY, "--iters", "4", "--set", f"run.tracker={tracker}", "--out", str(out)]
    assert child_train(argv, kill_at_save, fake_tensorboard) == -signal.SIGKILL
    assert [r["step"] for r in rows(out)] == list(range(1, kill_at_save + 1))  # the row is written, its checkpoint not
    assert child_train(["train", "--resume", str(out)], fake_tensorboard=fake_tensorboard) == 0
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]


def sent(run: Path, keys: Any = None) -> list[tuple[int, str, float]]:
    """What the trackers should hold: every finite number of every metrics row (but its step), at its step."""
    return sorted((r["step"], k, float(v)) for r in rows(run) for k, v in r.items()
                  if k != "step" and (keys is None or k in keys) and isinstance(v, int | float) and v == v)


def test_mlflow_holds_each_step_once_after_a_kill_between_the_row_and_its_checkpoint(
        mlflow_store: Any, tmp_path: Path) -> None:
    """Was: the row went to MLflow before its checkpoint was written, so the resumed run, which computes that
    step again, sent it a second time (step 2 twice in every metric's history)."""
    out = tmp_path / "run"
    killed_and_resumed(out, "mlflow", kill_at_save=2)
    run_id = state(out)["mlflow"]["run_id"]
    keys = [k for k in mlflow_store.get_run(run_id).data.metrics if not k.startswith("summary.")]
    held = sorted((m.step, k, m.value) for k in keys for m in mlflow_store.get_metric_history(run_id, k))
    assert held == sent(out)  # the values too, timings included: each row as metrics.jsonl keeps it
    assert state(out)["mlflow"]["acked"] == 4 and mlflow_store.get_run(run_id).info.status == "FINISHED"


def wandb_history(run: Path) -> list[tuple[int, str, float]]:
    """Every (step, metric, value) in every offline session of the run's W&B run (what `wandb sync` sends)."""
    out, sessions = [], offline_runs(run)
    for session in sessions:  # the earlier ones ended (or were killed) long ago; the last is read once it ends
        records = wandb_records(session) if session == sessions[-1] else _wandb_file(next(session.glob("run-*.wandb")))
        out += [(h["step"], k, float(v)) for h in history(records) for k, v in h.items()
                if k != "step" and not k.startswith("_")]
    return sorted(out)


def test_wandb_history_equals_metrics_after_a_sigkill(wandb_offline: None, tmp_path: Path) -> None:
    """Was: a SIGKILLed process's offline W&B log is empty (W&B's core stops without writing what it holds),
    and the resumed run sent only the steps after its checkpoint: steps 1 and 2 were missing for good."""
    out = tmp_path / "run"
    killed_and_resumed(out, "wandb", kill_at_save=3)
    assert len(offline_runs(out)) == 2  # the killed session's log holds what W&B had flushed (here: nothing)
    assert wandb_history(out) == sent(out)


def test_wandb_resume_sends_what_a_cut_log_lacks(wandb_offline: None, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A longer run killed holds what W&B had flushed: a prefix of its rows. Here a stopped session's log cut
    at the record of step 2 (a whole-record prefix, as a kill leaves it): the resumed run sends step 2 again,
    and not step 1."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_after(patch, 3)  # rows 1 and 2 written and sent; stopped in step 3
        assert train(out, "--set", "run.tracker=wandb", iters=4) == 3
    (first,) = offline_runs(out)
    log = next(first.glob("run-*.wandb"))
    records = wandb_records(first)
    data, cut = log.read_bytes(), None
    pos = 7
    for _kind, record in records:  # all records of so small a log are whole ("full") records of one block
        size = struct.unpack("<H", data[pos + 4:pos + 6])[0]
        if _kind == "history" and history([(_kind, record)])[0].get("step") == 2:
            cut = pos
            break
        pos += 7 + size
    assert cut is not None
    log.write_bytes(data[:cut])
    assert [h["step"] for h in history(_wandb_file(log)) if "test_error" in h] == [1]
    assert main(["train", "--resume", str(out)]) == 0
    assert wandb_history(out) == sent(out)


def test_tensorboard_shows_each_step_once_after_a_kill(tmp_path: Path) -> None:
    """Was: a resumed run appended to what the killed one had flushed (here, all of it: step 3 twice). Now a
    later session opens its writer with purge_step=0 (TensorBoard hides every earlier event) and sends every
    row of metrics.jsonl again."""
    out = tmp_path / "run"
    killed_and_resumed(out, "tensorboard", kill_at_save=3, fake_tensorboard=True)
    files = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2
    shown: list[tuple[int, str, float]] = []
    for path in files:  # as TensorBoard reads them: a session's purge_step hides the earlier events at or after it
        for entry in map(json.loads, path.read_text().splitlines()):
            if "open" in entry and entry["open"] is not None:
                shown = [s for s in shown if s[0] < entry["open"]]
            elif "key" in entry:
                shown.append((entry["step"], entry["key"], entry["value"]))
    keys = ("train_loss", "train_error", "test_loss", "test_error", "val_error", "lr")
    assert sorted(shown) == sent(out, keys)

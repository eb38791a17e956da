"""A run from start to end: `train` makes a new run directory and trains in it, `resume` continues one from its
newest good checkpoint. Both build their trainer with `build.build_trainer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnetlab.errors import CheckpointError, RunDirError
from resnetlab.networks.counting import count_params
from resnetlab.runs.directory import RunDir
from resnetlab.runs.records import Summary, WorkerResult
from resnetlab.settings.config import Config, config_from_dict
from resnetlab.training.build import build_trainer
from resnetlab.training.distributed import barrier, init_from_env, shutdown
from resnetlab.training.identity import training_key
from resnetlab.training.reporting import Log, tee
from resnetlab.training.trainer import Trainer
from resnetlab.weights.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.weights.resolve import resolve, start_from


def train(cfg: Config, out: str | Path | None = None, log: Log = print) -> tuple[RunDir, Summary | WorkerResult]:
    """Start a new run: everything is validated and loaded before the run directory is created."""
    world = init_from_env(cfg.run.device)
    try:
        trainer = build_trainer(cfg, out, world=world, log=log)
        run, log = trainer.run, trainer.reporter.log
        init = _start_from(trainer, cfg)
        barrier(world)  # every rank has checked its input before rank 0 creates anything
        if world.main:
            key = training_key(cfg.to_dict() | {"resolved": init})  # what it trains on, kept as it is now
            run.create(cfg.to_dict() | {"resolved": trainer.resolved() | init | {"key": key}})
            trainer.reporter.log = log = tee(log, run.log)
        try:
            trainer.reporter.started(trainer.spec.name, count_params(trainer.model), trainer.source, trainer.device,
                                     world.size)
            log(trainer.compile.reason)
            if init:
                log("initial weights: " + ", ".join(f"{name} {value}" for name, value in init["init"].items()))
            return run, trainer.fit()
        finally:
            run.unlock()
    finally:
        shutdown(world)


def resume(path: str | Path, model: str | None = None, device: str | None = None,
           log: Log = print) -> tuple[RunDir, Summary | WorkerResult]:
    """Continue a run from its newest good checkpoint, with the run's config (`device` only says where this
    session runs). The step counts global batches, so a run may resume on a different number of processes."""
    run = RunDir(path)
    saved = run.read_config()
    cfg = config_from_dict(saved, where=str(run.config))
    if model is not None and model != cfg.model.name:
        raise RunDirError(f"{run.path}: this run trains {cfg.model.name}, not {model}")
    fresh = _check_resumable(run)
    world = init_from_env(device or cfg.run.device)
    try:
        if world.main:
            run.lock()
            run.sweep_temporaries()
        trainer = build_trainer(cfg, run, world=world, device=device, log=tee(log, run.log))
        _check_same_training(run, saved, cfg)
        log = trainer.reporter.log
        log(trainer.compile.reason)
        if fresh:  # killed before its first checkpoint: start again
            _start_from(trainer, cfg, (saved.get("resolved") or {}).get("init", {}).get("sha256"))
            if world.main:
                run.truncate_metrics(0)
            log(f"{run.path}: no checkpoint yet, starting from the beginning")
            return run, trainer.fit()
        weights = resolve(run.path)  # what the run directory means to every command: its newest good checkpoint
        payload = weights.payload
        assert payload is not None  # a run directory's checkpoints are ours: read_weights keeps their payload
        for problem in weights.skipped:
            log(f"skipping bad checkpoint: {problem}")
        trainer.restore(payload)
        trainer.source.load_norm_state(payload["norm"])
        barrier(world)  # all ranks have read the checkpoint before rank 0 rewrites metrics
        if world.main:
            run.truncate_metrics(trainer.progress.step)
            _repair_best(run, payload, log)
            run.prune(cfg.run.keep_checkpoints)
        if trainer.progress.step >= trainer.schedule.total:
            log(f"{run.path}: already finished at step {trainer.progress.step}")
        else:
            log(f"resuming {run.path} from {weights.path.name} (step {trainer.progress.step})")
        return run, trainer.fit()
    finally:
        run.unlock()
        shutdown(world)


def _check_resumable(run: RunDir) -> bool:
    """True when `run` died before its first checkpoint (it starts again). A run whose checkpoints are gone
    is refused before anything is built: it would be trained again from scratch, replacing its records."""
    if not run.checkpoints.is_dir():
        raise RunDirError(f"{run.path}: its checkpoints/ folder is gone: nothing to resume from, nowhere to write")
    if run.step_checkpoints():
        return False
    if run.summary.exists():
        raise RunDirError(f"{run.path}: ended (it has a summary.json) but its checkpoints are gone: nothing to "
                          "resume from; start a new run (--init can take its weights from a checkpoint)")
    if run.best.exists():
        raise RunDirError(f"{run.path}: its step checkpoints are gone (only best.pt is left): nothing to resume "
                          "from; evaluate it with --best, or start a new run")
    return True


def _check_same_training(run: RunDir, saved: dict[str, Any], cfg: Config) -> None:
    """A run resumes the training it started: its config as read back (a section lost from config.json reads
    as the defaults) and the files it names must still give the key it recorded at its start (`resolved.key`;
    a run from before keys has none to check). Checked once its data has loaded, so a moved data set fails
    with the data's own message."""
    resolved = saved.get("resolved") if isinstance(saved.get("resolved"), dict) else {}
    recorded = resolved.get("key")
    if not isinstance(recorded, str):
        return
    now = training_key(cfg.to_dict() | {"resolved": resolved})
    if now != recorded:
        raise RunDirError(f"{run.path}: its config.json, or the files it names, no longer give the training it "
                          f"started (key {recorded}, now {now}): resuming would continue another training; "
                          "restore them, or start a new run (--init can take its weights)")


def _start_from(trainer: Trainer, cfg: Config, sha256: str | None = None) -> dict[str, Any]:
    """`run.init`: the weights file the run starts from, loaded with its input normalisation (`start_from`)."""
    if cfg.run.init is None:
        return {}
    return {"init": start_from(trainer.model, trainer.source, cfg.run.init, sha256)}


def _repair_best(run: RunDir, payload: dict[str, Any], log: Log) -> None:
    """A kill between the step checkpoint and best.pt: the step checkpoint is the best, so copy it."""
    best_step = payload["progress"].get("best", {}).get("step")
    if best_step != payload["progress"]["step"]:
        return
    try:
        have = load_checkpoint(run.best)["progress"]["step"] if run.best.exists() else None
    except (CheckpointError, KeyError, TypeError):
        have = None
    if have != best_step:
        save_checkpoint(run.best, payload)
        log(f"best.pt rewritten from the step-{best_step} checkpoint (it was missing or stale)")

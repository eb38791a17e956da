"""A training's identity: everything that determines what it computes, each file input by its content. Work is
reused (a suite member linked to another suite's training, a finished member skipped) only when the identities
are equal, so it changes whenever the computation could, and stays the same when only where or how it runs does."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from resnetlab.data.base import DataOptions
from resnetlab.data.cache import cache_dir
from resnetlab.data.digest import content_digest, source_digest
from resnetlab.errors import ResnetlabError
from resnetlab.files.jsondoc import parse_json
from resnetlab.files.reading import read_file
from resnetlab.networks.registry import get_spec
from resnetlab.weights.resolve import resolve

__all__ = ["SESSION_FIELDS", "contents", "differences", "identity", "key_of_run", "training_key"]

# config fields that do not change what a run computes, only where and how it runs and what it reports
SESSION_FIELDS = {"run": ("device", "threads", "progress", "tensorboard", "tracker", "tracker_tags",
                          "keep_checkpoints", "checkpoint_every"),
                  "data": ("workers", "cache_dir")}
# settings added after trainings were first keyed: at these values a training is the one it was before they existed
ADDED_LATER = {"data": {"split_seed": 0}}


def identity(config: dict[str, Any], seen: dict[str, str] | None = None) -> dict[str, Any]:
    """What determines a training, as plain data: the config as `config.json` holds it, without `resolved` and
    the `SESSION_FIELDS`; the model as the fields of the spec it builds (`resnet110` with depth 56 is
    `resnet56`), less the recomputation (memory only); a data set given by path as the SHA-256 of its files
    (`data.digest`); `run.init` as the SHA-256 of the weights it resolves to, or the one a run recorded when it
    started (`resolved.init`). `seen`: the contents already read in this call, by path (a suite keys many
    configs on one data set; pass one dict for them all)."""
    kept = copy.deepcopy({k: v for k, v in config.items() if k != "resolved"})
    seen = {} if seen is None else seen
    given = config["data"].get("cache_dir") if isinstance(config.get("data"), dict) else None
    cache = cache_dir(DataOptions(cache_dir=given if isinstance(given, str) else None))
    for section, fields in SESSION_FIELDS.items():
        for name in fields:
            if isinstance(kept.get(section), dict):
                kept[section].pop(name, None)
    for section, defaults in ADDED_LATER.items():
        for name, default in defaults.items():
            if isinstance(kept.get(section), dict) and kept[section].get(name, default) == default:
                kept[section].pop(name, None)
    kept["model"] = _network(kept.get("model"))
    data = kept.get("data")
    if isinstance(data, dict) and isinstance(data.get("source"), str):
        source = data["source"]
        if source not in seen:  # its path replaced by what the path holds (as it is where there is no path)
            digest = source_digest(source, cache)
            seen[source] = source if digest is None else f"{source.partition(':')[0]}:{digest}"
        data["source"] = seen[source]
    run, resolved = kept.get("run"), config.get("resolved")
    if isinstance(run, dict) and isinstance(run.get("init"), str):
        init = run["init"]
        recorded = resolved.get("init") if isinstance(resolved, dict) else None
        if isinstance(recorded, dict) and isinstance(recorded.get("sha256"), str):  # as the run recorded it
            run["init"] = "sha256:" + recorded["sha256"]
        else:
            run["init"] = seen[init] if init in seen else seen.setdefault(init, _init(init))
    return kept


def training_key(config: dict[str, Any], seen: dict[str, str] | None = None) -> str:
    """The identity's digest, which a run records when it starts (`resolved.key` in its config.json)."""
    text = json.dumps(identity(config, seen), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def contents(config: dict[str, Any], seen: dict[str, str] | None = None) -> dict[str, str]:
    """The config's file inputs by content, where it has any: {"data": ..., "run.init": ...}."""
    kept = identity(config, seen)
    found = {"data": (kept.get("data") or {}).get("source"), "run.init": (kept.get("run") or {}).get("init")}
    return {k: v for k, v in found.items() if isinstance(v, str) and "sha256:" in v}


def key_of_run(run: Path) -> str | None:
    """The key of the training in a run directory: the one it recorded when it started, else (a run made
    before keys were recorded) its config's key now; None where it holds no readable config."""
    try:
        config = parse_json(read_file(Path(run) / "config.json"), str(Path(run) / "config.json"))
    except (OSError, ValueError, ResnetlabError):
        return None
    if not isinstance(config, dict):
        return None
    recorded = config["resolved"].get("key") if isinstance(config.get("resolved"), dict) else None
    if isinstance(recorded, str):
        return recorded
    try:
        return training_key(config)
    except (ResnetlabError, TypeError, ValueError, AttributeError):
        return None


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Where two identities differ, as "field: A -> B" lines (the first few fields, dotted)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            found += differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return found
    return [] if a == b else [f"{prefix.rstrip('.')}: {_short(a)} -> {_short(b)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _init(path: str) -> str:
    """`run.init` as the SHA-256 of the weights it means, read now."""
    where = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        return "sha256:" + resolve(where).sha256
    except ResnetlabError:  # the training fails on it with its own message; keyed by what it holds
        try:
            return "sha256:" + content_digest(where) if where.is_file() else str(where)
        except ResnetlabError:
            return str(where)


def _network(model: Any) -> Any:
    """The model section as the fields of the spec it builds, less its name and the recomputation (memory
    only); as it is where it does not build (the training then fails with the config's own message)."""
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return model
    try:
        spec = get_spec(model["name"], **{k: v for k, v in model.items() if k != "name"}).to_dict()
    except (ResnetlabError, TypeError, ValueError):
        return model
    return {k: v for k, v in spec.items() if k not in ("name", "recompute")}

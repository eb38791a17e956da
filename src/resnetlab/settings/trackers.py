"""The `run.tracker` settings, checked when a config is built: which trackers exist, the sense of `run.tracker`,
`run.tracker_tags` and `run.tensorboard` together, whether a tracker's package is installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

from resnetlab.errors import ConfigError

TRACKERS = ("tensorboard", "mlflow", "wandb")
_INSTALL = {"tensorboard": "pip install tensorboard", "mlflow": "pip install 'resnetlab[mlflow]'",
            "wandb": "pip install 'resnetlab[wandb]'"}


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


def require(names: Iterable[str]) -> None:
    """A one-line ConfigError naming the package of the first tracker in `names` (checked by `check_settings`)
    that is not installed."""
    for name in names:
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

"""The data a trained net is evaluated on (`evaluation_source`), resolved here for `eval` and `analyze` so that each
fails with the same one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnetlab.data import DataOptions, DataSource, load_data
from resnetlab.errors import CheckpointError, ResnetlabError
from resnetlab.networks.spec import ResNetSpec
from resnetlab.settings.config import config_from_dict


def evaluation_source(spec: ResNetSpec, config: dict[str, Any] | None, norm: Any, data: str | None,
                      where: Path, classes: Any = None) -> DataSource:
    """The data a trained net is evaluated on: `data` or the run's own, loaded with the run's options, checked
    against the net (and its `classes`, where its checkpoint keeps them), normalised with the run's statistics."""
    cfg = config_from_dict(config, where=f"{where} (its config)") if config is not None else None
    data = data or (cfg.data.source if cfg is not None else None)
    if data is None:
        raise ResnetlabError(f"{where}: names no data set; give --data")
    source = load_data(data, cfg.data.options() if cfg is not None else DataOptions(normalize="none"))
    if (spec.in_channels, spec.num_classes) != (source.channels, source.num_classes):
        raise CheckpointError(
            f"{where}: {spec.name or 'the model'} takes {spec.in_channels} channel(s) and {spec.num_classes} "
            f"classes; data {source.name!r} has {source.channels} and {source.num_classes}")
    if isinstance(classes, list) and list(source.classes) != [str(c) for c in classes]:
        ours, theirs = ", ".join(map(str, classes[:4])), ", ".join(map(str, list(source.classes)[:4]))
        raise CheckpointError(f"{where}: trained on classes {ours}, ...; data {source.name!r} has {theirs}, ...: "
                              "its errors would not mean anything")
    source.load_norm_state(norm)
    return source

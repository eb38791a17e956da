"""torch.hub entry points: every registry model of resnetlab, optionally with a weights file.

    model = torch.hub.load("/path/to/resnetlab", "resnet110", source="local")
    model = torch.hub.load("/path/to/resnetlab", "preact_resnet164", source="local", num_classes=100)
    model = torch.hub.load("/path/to/resnetlab", "resnet20", source="local", weights="resnet20.safetensors")
    torch.hub.list("/path/to/resnetlab", source="local")  # the names

With `weights` (a run directory, a checkpoint, an exported .safetensors or a foreign file that `resnetlab eval
--weights` reads) the model comes back in eval mode with those weights, and its `pretrained` attribute holds
the input normalisation, class names and image size they were trained with. Nothing is downloaded. Of a run
directory, `best=True` takes its `checkpoints/best.pt` and `best=False` (the default) its newest checkpoint
that verifies, as `resnetlab eval RUN [--best]` does. An empty `weights` is an error (leave it out for an
untrained net), as is any keyword that is neither a spec field nor one of these two.
"""

from __future__ import annotations

import os as _os
import sys as _sys
import typing as _typing

dependencies = ["torch"]

_sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src"))

from resnetlab.networks.registry import create_model as _create_model  # noqa: E402
from resnetlab.networks.registry import list_models as _list_models  # noqa: E402


def _entry(name: str) -> _typing.Any:
    def build(weights: str | None = None, best: bool | None = None, **overrides: _typing.Any) -> _typing.Any:
        from resnetlab.errors import ConfigError

        if best is not None and (weights is None or not isinstance(best, bool)):
            raise ConfigError(f"{name}: best= is True or False and picks a run's checkpoint: it needs weights=RUN"
                              if weights is None else f"{name}: best= is True or False, got {best!r}")
        if weights is None:
            return _create_model(name, **overrides)
        from resnetlab.weights.pretrained import load_pretrained

        if overrides:
            raise ValueError(f"{name}: spec overrides do not apply with weights (the file holds its net)")
        trained = load_pretrained(weights, model=name, best=bool(best))
        trained.module.pretrained = trained  # normalisation, classes, image size
        return trained.module

    build.__name__ = name
    build.__doc__ = (f"resnetlab's {name} (spec overrides as keywords, or weights=PATH for a trained one; "
                     "best=True for a run's best.pt).")
    return build


for _name in _list_models():
    globals()[_name] = _entry(_name)

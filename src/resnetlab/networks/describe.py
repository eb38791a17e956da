"""Tables that describe models: the zoo (`resnetlab models`) and one net unit by unit (`resnetlab info`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resnetlab.networks.counting import count_macs, count_params
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import create_model, get_entry, list_models
from resnetlab.networks.shortcuts import SHORTCUTS, PadShortcut, Projection
from resnetlab.networks.spec import ResNetSpec

# how `resnetlab info` names a shortcut's matching piece h, by its class (else "identity")
_MATCHES = ((PadShortcut, "A: zero-pad"), (Projection, "projection"), (nn.Conv2d, "1x1 conv"))


@dataclass(frozen=True)
class ModelRow:
    name: str
    depth: int
    block: str
    unit: str
    params: int
    macs: int
    input_size: int
    source: str


def zoo_rows(pattern: str = "", input_size: int | None = None) -> list[ModelRow]:
    """One row per registry model, with parameters and multiply-adds measured on the built model."""
    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        with torch.device("meta"):  # shapes only: the counts need no weights (60 s on CPU became ~1 s)
            model = create_model(name)
        size = input_size or entry.spec.input_size
        rows.append(ModelRow(name, entry.spec.depth, entry.spec.block, entry.spec.unit, count_params(model),
                             count_macs(model, size), size, entry.source))
    return rows


def _shortcut_text(unit: nn.Module, spec: ResNetSpec) -> str:
    shortcut = getattr(unit, "shortcut", None)
    if shortcut is None:
        return "none (plain)"
    base = next((text for kind, text in _MATCHES if isinstance(shortcut.match, kind)), "identity")
    return SHORTCUTS[spec.shortcut].text.format(base=base, **spec.shortcut_params)


def unit_rows(model: ResNet, input_size: int | None = None) -> list[dict[str, object]]:
    """Per unit: stage, channels in and out, output size, stride, shortcut, parameters."""
    spec = model.spec
    size = input_size or spec.input_size
    units, shapes = list(model.units()), []
    handles = [u.register_forward_hook(lambda m, i, o: shapes.append((i[0].shape, o.shape))) for u in units]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, spec.in_channels, size, size))
    for h in handles:
        h.remove()
    places = [(s, i) for s, n in enumerate(spec.units) for i in range(n)]
    rows = []
    for k, (unit, (s, i), ((_, cin, hin, _), (_, cout, hout, _))) in enumerate(zip(units, places, shapes, strict=True)):
        rows.append({"unit": k + 1, "stage": s + 1, "index": i + 1, "in": cin, "out": cout, "size": f"{hout}x{hout}",
                     "stride": hin // hout, "shortcut": _shortcut_text(unit, spec), "params": count_params(unit)})
    return rows


def format_table(rows: list[dict[str, object]] | list[list[object]], headers: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in (r.values() if isinstance(r, dict) else r)] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)

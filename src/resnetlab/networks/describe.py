"""Tables that describe models: the zoo (`resnetlab models`) and one net unit by unit (`resnetlab info`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resnetlab.networks.counting import count_macs, count_params
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import create_model, get_entry, list_models
from resnetlab.networks.shortcuts import describe_shortcut
from resnetlab.networks.spec import ResNetSpec


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
        spec = get_entry(name).spec
        with torch.device("meta"):  # shapes only: the counts need no weights (60 s on CPU became ~1 s)
            model = create_model(name)
        size = input_size or spec.input_size
        rows.append(ModelRow(name, spec.depth, spec.block, spec.unit, count_params(model),
                             count_macs(model, size), size, get_entry(name).source))
    return rows


def _shortcut_text(unit: nn.Module, spec: ResNetSpec) -> str:
    shortcut = getattr(unit, "shortcut", None)
    if shortcut is None:
        return "none (plain)"
    return describe_shortcut(shortcut, spec.shortcut, spec.shortcut_params)


def unit_rows(model: ResNet, input_size: int | None = None) -> list[dict[str, object]]:
    """Per unit: stage, channels in and out, output size, stride, shortcut, parameters."""
    spec = model.spec
    size = input_size or spec.input_size
    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    units = list(model.units())
    handles = [
        u.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, (tuple(i[0].shape), tuple(o.shape))))
        for k, u in enumerate(units)
    ]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, spec.in_channels, size, size))
    for h in handles:
        h.remove()
    rows, k = [], 0
    for s, n in enumerate(spec.units):
        for i in range(n):
            unit = units[k]
            (_, cin, hin, _), (_, cout, hout, _) = shapes[k]
            rows.append({"unit": k + 1, "stage": s + 1, "index": i + 1, "in": cin, "out": cout,
                         "size": f"{hout}x{hout}", "stride": hin // hout,
                         "shortcut": _shortcut_text(unit, spec), "params": count_params(unit)})
            k += 1
    return rows


def format_table(rows: list[dict[str, object]] | list[list[object]], headers: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in (r.values() if isinstance(r, dict) else r)] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)

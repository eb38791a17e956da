"""Signal and gradient propagation through the residual units of a network (v2 sec. 3, eq. 4-7). With identity
shortcuts any deeper unit L is the shallower unit l plus a sum of residual functions, and the gradient of the
loss E reaches every shallower unit directly; a constant scaling lambda_i on each shortcut makes the direct
term a product, which vanishes (lambda < 1) or explodes (lambda > 1) exponentially with depth:

    x_L = x_l + sum_{i=l}^{L-1} F(x_i, W_i)                                          (v2 eq. 4)
    dE/dx_l = dE/dx_L * (1 + d/dx_l sum_{i=l}^{L-1} F(x_i, W_i))                     (v2 eq. 5)
    x_L = (prod_{i=l}^{L-1} lambda_i) x_l + sum_i F^(x_i, W_i)                       (v2 eq. 6)
    dE/dx_l = dE/dx_L * (prod_{i=l}^{L-1} lambda_i + d/dx_l sum_i F^(x_i, W_i))      (v2 eq. 7)

`propagation` measures both sides on a real network and one batch (`docs/propagation.md`); `compare`,
`format_propagation` and `plot_propagation` put several models side by side.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import ConfigError, ResnetlabError
from resnetlab.networks.describe import format_table
from resnetlab.networks.net import ResNet
from resnetlab.runs.plots import save_figure

Row = dict[str, Any]
FIGURE_FORMATS = (".png", ".pdf", ".svg")


# ---- measurement ---------------------------------------------------------------------------------------
@contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BN running statistics, batch counts) and the train/eval mode of each module."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)
        for module, training in modes:
            module.training = training


def propagation(model: ResNet, x: Tensor, y: Tensor, *, eval_mode: bool = False) -> list[Row]:
    """Forward signal and loss gradient at each unit input x_1..x_L and at the last unit's output.

    Returns one row per measured tensor, in depth order: rows 1..L are the inputs of units 1..L, row L+1 is
    the output of unit L (the net's features before the head). Each row holds `index` (1..L+1), `stage`,
    `std` (of the whole batch tensor), `norm` (L2 norm per sample, averaged over the batch) and `grad_norm`
    (the L2 norm of dE/dx_l over the whole batch, E = mean cross-entropy of the batch).

    By default BN uses batch statistics, as at a training step (`eval_mode=True`: running statistics and no
    dropout). The model's parameters, their `.grad`, its buffers and its mode are unchanged afterwards and
    no hook is left behind.
    """
    units = list(model.units())
    if not units:
        raise ResnetlabError("propagation: the model has no residual units")
    stages = [s for s, stage in enumerate(model.stages, start=1) for _ in stage]  # 1-based, in units() order
    last = len(units) - 1
    captured: dict[int, Tensor] = {}

    def capture(k: int) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            # setdefault: a unit run again by activation recomputation (spec.recompute) keeps the first tensor
            captured.setdefault(k, inputs[0])
            if k == last:
                captured.setdefault(k + 1, output)
        return hook

    device = next(model.parameters()).device
    handles = []
    with _preserved(model):
        try:
            handles = [unit.register_forward_hook(capture(k)) for k, unit in enumerate(units)]
            model.train(not eval_mode)
            with torch.enable_grad():
                # A leaf that requires grad, so the unit inputs are in the graph even with frozen weights.
                inp = x.detach().to(device).requires_grad_(True)
                logits = model(inp)
                loss = F.cross_entropy(logits.float(), y.to(device))
                tensors = [captured[k] for k in range(len(units) + 1)]
                grads = torch.autograd.grad(loss, tensors)
        finally:
            for handle in handles:
                handle.remove()
    rows = []
    with torch.no_grad():
        for k, (t, g) in enumerate(zip(tensors, grads, strict=True)):
            t = t.detach().float()
            rows.append({"index": k + 1, "stage": stages[min(k, last)], "std": t.std().item(),
                         "norm": t.flatten(1).norm(dim=1).mean().item(), "grad_norm": g.float().norm().item()})
    return rows


def compare(models: dict[str, ResNet], x: Tensor, y: Tensor, *, eval_mode: bool = False) -> dict[str, list[Row]]:
    return {name: propagation(model, x, y, eval_mode=eval_mode) for name, model in models.items()}


def summarize(rows: list[Row]) -> dict[str, float]:
    """Depth ratios of one model's rows: first unit input x_1 against the last unit's output x_L.

    `grad_ratio` = ||dE/dx_1|| / ||dE/dx_L|| (1 for v2 eq. 5 with zero branches, lambda^units for eq. 7),
    `std_ratio` = std(x_L) / std(x_1), `grad_spread` = max / min of ||dE/dx_l|| over all rows.
    """
    first, final = rows[0], rows[-1]
    grads = [r["grad_norm"] for r in rows]
    return {"units": len(rows) - 1, "std_first": first["std"], "std_last": final["std"],
            "std_ratio": _ratio(final["std"], first["std"]), "grad_first": first["grad_norm"],
            "grad_last": final["grad_norm"], "grad_ratio": _ratio(first["grad_norm"], final["grad_norm"]),
            "grad_spread": _ratio(max(grads), min(grads))}


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a else math.nan
    return a / b


# ---- presentation --------------------------------------------------------------------------------------
SUMMARY_HEADERS = ["model", "units", "std x_1", "std x_L", "std x_L/x_1",
                   "|dE/dx_1|", "|dE/dx_L|", "grad x_1/x_L", "grad max/min"]


def format_propagation(results: dict[str, list[Row]]) -> str:
    """One line per model: forward std and gradient norm at x_1 and x_L, their ratios, the gradient spread."""
    table = []
    for name, rows in results.items():
        s = summarize(rows)
        table.append([name, s["units"], *(f"{s[k]:.3g}" for k in (
            "std_first", "std_last", "std_ratio", "grad_first", "grad_last", "grad_ratio", "grad_spread"))])
    return format_table(table, SUMMARY_HEADERS)


def plot_propagation(results: dict[str, list[Row]], path: Path | str, title: str = "") -> Path:
    """Two log-scale panels against depth: forward std of x_l, and ||dE/dx_l||; one colour per model.

    The x axis is the row index l (1..L: unit inputs; L+1: the last unit's output). Written atomically.
    """
    from matplotlib.figure import Figure  # no pyplot: a caller's backend (a notebook's) is left as it is

    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"{path}: figure must end with {', '.join(FIGURE_FORMATS)}")
    fig = Figure(figsize=(10, 4.2), dpi=110)
    ax_f, ax_b = fig.subplots(1, 2)
    for name, rows in results.items():
        index = [r["index"] for r in rows]
        (line,) = ax_f.plot(index, [r["std"] for r in rows], linewidth=1.4, label=name)
        ax_b.plot(index, [r["grad_norm"] for r in rows], linewidth=1.4, color=line.get_color(), label=name)
    ax_f.set_ylabel("std of x_l (forward signal)")
    ax_b.set_ylabel("||dE/dx_l|| (backward gradient)")
    for ax in (ax_f, ax_b):
        ax.set_yscale("log")
        ax.set_xlabel("l: input of unit l (last point: output of the last unit)")
        ax.grid(alpha=0.3, which="both")
    ax_b.legend(fontsize=8)
    fig.suptitle(title or "signal propagation at one batch (v2 eq. 4-7)", fontsize=10)
    try:
        return save_figure(fig, path)
    except OSError as exc:
        raise ResnetlabError(f"{path}: cannot write figure ({exc.strerror or exc})") from None

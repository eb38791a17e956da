"""Paper-style figures (v1 fig. 6): error against iterations, training dashed, test solid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from resnetlab.files.atomic import replace_with
from resnetlab.runs.records import MetricsRow


def plot_curves(runs: dict[str, list[MetricsRow]], path: Path, title: str = "") -> Path:
    """One line colour per run: training error dashed, test error solid."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: a caller's backend (a notebook's) is left as it is

    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.subplots()
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(runs.items()):
        rows = [r for r in rows if r.test_error is not None]
        if not rows:
            continue
        colour = colours[i % len(colours)]
        steps = [r.step for r in rows]
        marker = "o" if len(rows) < 4 else None  # a curve of one or two points still shows
        ax.plot(steps, [100 * r.train_error for r in rows], "--", color=colour, linewidth=1.2, marker=marker,
                markersize=3)
        ax.plot(steps, [100 * r.test_error for r in rows], "-", color=colour, linewidth=1.6, label=name,
                marker=marker, markersize=3)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_title(title or "error (training dashed, test solid)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


class ErrorBar(NamedTuple):
    """One member's bar: our median test error (None: no finished run), the paper's (a number, "fail" or
    None) and how many of its runs diverged."""

    label: str
    ours: float | None
    paper: float | str | None
    diverged: int


def plot_errors(bars: list[ErrorBar], path: Path, title: str = "") -> Path:
    """Final test error per member (median over seeds, bars) with the paper's value marked (x)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.45 * len(bars) + 1.5), dpi=110)
    ax = fig.subplots()
    ys = range(len(bars))
    ours = [b.ours if b.ours is not None else 0.0 for b in bars]
    ax.barh(list(ys), ours, color="#4c72b0", alpha=0.8, label="ours (median)")
    top = max(ours + [b.paper for b in bars if isinstance(b.paper, int | float)] + [20.0])
    for y, b in zip(ys, bars, strict=True):
        if isinstance(b.paper, int | float):
            ax.plot(b.paper, y, "x", color="#c44e52", markersize=8)
        elif b.paper == "fail":
            ax.text(top * 1.02, y, "paper: fail", va="center", fontsize=7, color="#c44e52")
        if b.ours is None:
            ax.text(0.5, y, "diverged" if b.diverged else "no result", va="center", fontsize=7)
    ax.plot([], [], "x", color="#c44e52", label="paper")
    ax.axvline(20.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(list(ys), [b.label for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel("test error (%)  (dotted: the papers' 20% 'fail' line)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    """The figure laid out and written whole (a temporary, then a rename); an OSError as it comes."""
    fig.tight_layout()
    replace_with(path, fig.savefig)  # the temporary keeps the suffix: savefig picks the format by it
    return path

"""Paper-style figures (v1 fig. 6): error against iterations, training dashed, test solid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: Path, title: str = "",
                paper: dict[str, float] | None = None) -> Path:
    """One line colour per run: training error dashed, test error solid; paper errors as dotted levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(runs.items()):
        rows = [r for r in rows if r.get("test_error") is not None]
        if not rows:
            continue
        colour = colours[i % len(colours)]
        steps = [r["step"] for r in rows]
        ax.plot(steps, [100 * r["train_error"] for r in rows], "--", color=colour, linewidth=1.2)
        ax.plot(steps, [100 * r["test_error"] for r in rows], "-", color=colour, linewidth=1.6, label=name)
        if paper and name in paper:
            ax.axhline(paper[name], color=colour, linestyle=":", linewidth=1)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_title(title or "error (training dashed, test solid)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path

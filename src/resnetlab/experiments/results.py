"""A suite's results: one row per member from its runs' summaries (median, spread, the paper's verdict and
rank), written as results.md / .csv / .json with the figures. `experiments.py` runs the suites."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.files.atomic import write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.runs.records import Summary, evaluation_rows

if TYPE_CHECKING:
    from resnetlab.experiments.suite import Suite

SMALL_NOTE = ("This is a small-scale run: shallower nets, a short budget and small data. It checks the "
              "mechanism of the experiment, not the paper's numbers.")
CPU_NOTE = ("This is a CPU-scale run: the papers' data (CIFAR-10) but shallower nets and a budget of a few "
            "epochs in place of 164, on one 2-core CPU. It tests the papers' orderings, not their numbers.")


def _summary(run_dir: Path) -> Summary | None:
    """The run's summary.json, or None where there is none (not finished, or unreadable); one of another
    shape is a one-line error naming it (`records.Summary.checked`)."""
    try:
        data = parse_json((run_dir / "summary.json").read_bytes(), str(run_dir / "summary.json"))
    except (OSError, ValueError):
        return None
    return Summary.checked(data, str(run_dir / "summary.json")) if data != {} else None


def collect(suite: Suite, out: Path, scale: str) -> list[dict[str, Any]]:
    """One row per member: our errors over seeds (median, mean, spread), the paper's, the verdicts."""
    rows = []
    for member in suite.members:
        runs = sorted((out / member.slug).glob("seed*")) if (out / member.slug).is_dir() else []
        summaries = [s for s in (_summary(r) for r in runs) if s is not None]
        errors = [100 * s.final["test_error"] for s in summaries
                  if s.status == "finished" and s.final.get("test_error") is not None]
        diverged = sum(1 for s in summaries if s.diverged)
        failed = sum(1 for r in runs if (r / "error.txt").exists() and not (r / "summary.json").exists())
        median = statistics.median(errors) if errors else None
        model, override = member.at(scale)
        shown = " ".join([model] + [f"{k}={v}" for k, v in override.items()])
        rows.append({
            "member": member.label, "model": shown, "override": override,
            "params": summaries[0].params if summaries else None,
            "runs": len(errors), "diverged": diverged, "errors": failed, "median": median,
            "mean": statistics.fmean(errors) if errors else None,
            "std": statistics.stdev(errors) if len(errors) > 1 else 0.0 if errors else None,
            "paper": member.paper,
            "fail": (median is None and (diverged > 0)) or (median is not None and median > 20.0) or (
                diverged > 0 and diverged >= len(errors)),
            "paper_fail": member.paper == "fail" or (isinstance(member.paper, int | float) and member.paper > 20),
            "wall_time_s": sum(s.wall_time_s or 0.0 for s in summaries),
        })
    _rank(rows, "median", "rank")
    _rank(rows, "paper", "paper_rank")
    return rows


def _rank(rows: list[dict[str, Any]], key: str, out: str) -> None:
    """Rank by error, best first; a fail or divergence ranks last; no number means no rank."""
    def value(row: dict[str, Any]) -> float | None:
        v = row[key]
        if key == "median" and v is None and row["diverged"]:
            return math.inf
        if v == "fail":
            return math.inf
        return float(v) if isinstance(v, int | float) else None

    ranked = sorted((r for r in rows if value(r) is not None), key=value)
    for r in rows:
        r[out] = None
    for i, r in enumerate(ranked, start=1):
        r[out] = i


def kendall_tau(rows: list[dict[str, Any]]) -> tuple[float | None, int]:
    """Agreement of our ranking with the paper's over members both rank (1 = same order)."""
    both = [r for r in rows if r["rank"] is not None and r["paper_rank"] is not None]
    pairs = concordant = discordant = 0
    for i in range(len(both)):
        for j in range(i + 1, len(both)):
            a = (both[i]["rank"] - both[j]["rank"]) * (both[i]["paper_rank"] - both[j]["paper_rank"])
            pairs += 1
            concordant += a > 0
            discordant += a < 0
    return ((concordant - discordant) / pairs if pairs else None), len(both)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_results(suite: Suite, out: Path, rows: list[dict[str, Any]], **meta: Any) -> None:
    headers = ["member", "model", "params", "runs", "median", "mean", "std", "diverged", "paper", "fail",
               "paper_fail", "rank", "paper_rank"]
    table = io.StringIO()
    writer = csv.writer(table)  # rows end in \r\n, as the csv module writes them
    writer.writerow(headers)
    for r in rows:
        writer.writerow([r[h] if not isinstance(r[h], float) else round(r[h], 4) for h in headers])
    write_text_atomic(out / "results.csv", table.getvalue())
    tau, n = kendall_tau(rows)
    lines = [f"# {suite.title}", "", f"Paper: {suite.source}. Scale: {meta['scale']}; data: {meta['data']}; "
             f"recipe: {meta['recipe']}; seeds: {meta['seeds']}; budget: "
             f"{_budget(meta)}. Errors are test errors in percent; 'fail' is the papers' verdict (above 20%).", ""]
    if meta["scale"] in ("small", "cpu"):
        lines += [f"**{SMALL_NOTE if meta['scale'] == 'small' else CPU_NOTE}**", ""]
    lines += ["| member | model | params | runs | median | mean ± std | diverged | paper | fail (ours / paper) "
              "| rank (ours / paper) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = f"{r['params'] / 1e6:.3f}M" if r["params"] else "-"
        spread = f"{_fmt(r['mean'])} ± {_fmt(r['std'])}" if r["mean"] is not None else "-"
        paper = r["paper"] if isinstance(r["paper"], str) else _fmt(r["paper"])
        lines.append(f"| {r['member']} | {r['model']} | {params} | {r['runs']} | {_fmt(r['median'])} | {spread} "
                     f"| {r['diverged']} | {paper} | {'yes' if r['fail'] else 'no'} / "
                     f"{'yes' if r['paper_fail'] else 'no'} | {_fmt(r['rank'])} / {_fmt(r['paper_rank'])} |")
    agreement = f"{tau:+.2f} over {n} members" if tau is not None else "not computable"
    lines += ["", f"Ranking agreement with the paper (Kendall tau, 1 = same order): {agreement}.", "",
              "![error curves](curves.png)", "", "![final errors](errors.png)", ""]
    write_text_atomic(out / "results.md", "\n".join(lines))
    write_text_atomic(out / "results.json", json.dumps({"suite": suite.name, "meta": meta, "rows": rows,
                                                        "kendall_tau": tau}, indent=2, default=str))
    _figures(suite, out, rows)


def _budget(meta: dict[str, Any]) -> str:
    if meta.get("epochs") is not None:
        return f"{meta['epochs']} epochs"
    if meta.get("iters") is not None:
        return f"{meta['iters']} iterations"
    return "the recipe's"


def _figures(suite: Suite, out: Path, rows: list[dict[str, Any]]) -> None:
    from resnetlab.runs.directory import RunDir
    from resnetlab.runs.plots import plot_curves, plot_errors

    curves = {}
    for member in suite.members:
        metrics = evaluation_rows(RunDir(out / member.slug / "seed0").read_metrics())
        if metrics:
            curves[member.label] = metrics
    if curves:
        plot_curves(curves, out / "curves.png", title=f"{suite.title} (seed 0)")
    plot_errors(rows, out / "errors.png", title=suite.title)

"""A suite's results: one row per member from its runs' summaries (median, spread, the paper's verdict and
rank), written as results.md / .csv / .json with the figures. `runner.py` runs the suites."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from resnetlab.experiments.suite import Member, Suite, SuiteRun
from resnetlab.files.atomic import write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.runs.directory import RunDir
from resnetlab.runs.plots import ErrorBar, plot_curves, plot_errors
from resnetlab.runs.records import Summary, evaluation_rows, known_fields
from resnetlab.training.identity import key_of_run

SMALL_NOTE = ("This is a small-scale run: shallower nets, a short budget and small data. It checks the "
              "mechanism of the experiment, not the paper's numbers.")
CPU_NOTE = ("This is a CPU-scale run: the papers' data (CIFAR-10) but shallower nets and a budget of a few "
            "epochs in place of 164, on one 2-core CPU. It tests the papers' orderings, not their numbers.")


def read_summary(run_dir: Path) -> Summary | None:
    """The run's summary.json, or None where there is none (not finished, or unreadable); one of another
    shape is a one-line error naming it (`records.Summary.checked`)."""
    try:
        data = parse_json((run_dir / "summary.json").read_bytes(), str(run_dir / "summary.json"))
    except (OSError, ValueError):
        return None
    return Summary.checked(data, str(run_dir / "summary.json")) if data != {} else None


@dataclass(frozen=True)
class MemberResult:
    """One member's row of a suite's results: our test errors over its seeds (percent), the paper's number
    or "fail", both verdicts and both ranks (1 = lowest error; a fail or divergence ranks last)."""

    member: str
    model: str = ""
    override: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    runs: int = 0  # finished runs with a test error
    diverged: int = 0
    errors: int = 0  # runs that failed (error.txt) without a summary
    median: float | None = None
    mean: float | None = None
    std: float | None = None
    paper: float | str | None = None
    fail: bool = False
    paper_fail: bool = False
    wall_time_s: float = 0.0
    rank: int | None = None
    paper_rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> MemberResult:
        """A row of a results.json as `to_dict` wrote it; a field it lacks takes its default, others are left."""
        return cls(**{"member": "", **known_fields(cls, row)})


def collect(suite: Suite, out: Path, scale: str, seeds: int, trainings: dict[str, str]) -> list[MemberResult]:
    """One row per member: our errors over the call's seeds 0..seeds-1 (median, mean, spread), the paper's,
    the verdicts. Other seed folders in `out` are not this call's and are not counted."""
    rows = [_member_result(member, out, scale, seeds, trainings) for member in suite.members]
    ranks = _ranks([_rank_value(r.median, r.diverged) for r in rows])
    paper_ranks = _ranks([_rank_value(r.paper, 0) for r in rows])
    return [replace(r, rank=a, paper_rank=b) for r, a, b in zip(rows, ranks, paper_ranks, strict=True)]


def _member_result(member: Member, out: Path, scale: str, seeds: int, trainings: dict[str, str]) -> MemberResult:
    runs = [r for s in range(seeds) if (r := out / member.slug / f"seed{s}").exists()
            and key_of_run(r) in (trainings.get(f"{member.slug}/seed{s}"), None)]  # this call's trainings only
    summaries = [s for s in (read_summary(r) for r in runs) if s is not None]
    errors = [100 * s.final["test_error"] for s in summaries
              if s.status == "finished" and s.final.get("test_error") is not None]
    diverged = sum(1 for s in summaries if s.diverged)
    failed = sum(1 for r in runs if (r / "error.txt").exists() and not (r / "summary.json").exists())
    median = statistics.median(errors) if errors else None
    model, override = member.at(scale)
    return MemberResult(
        member=member.label, model=" ".join([model] + [f"{k}={v}" for k, v in override.items()]),
        override=override, params=summaries[0].params if summaries else None, runs=len(errors),
        diverged=diverged, errors=failed, median=median, mean=statistics.fmean(errors) if errors else None,
        std=statistics.stdev(errors) if len(errors) > 1 else 0.0 if errors else None, paper=member.paper,
        fail=(median is not None and median > 20.0) or (diverged > 0 and diverged >= len(errors)),
        paper_fail=member.paper == "fail" or (isinstance(member.paper, int | float) and member.paper > 20),
        wall_time_s=sum(s.wall_time_s or 0.0 for s in summaries))


def _rank_value(error: Any, diverged: int) -> float | None:
    """What a rank sorts by: the error; a fail, or no median where a run diverged, ranks last; else none."""
    if error == "fail" or (error is None and diverged):
        return math.inf
    return float(error) if isinstance(error, int | float) else None


def _ranks(values: list[float | None]) -> list[int | None]:
    """Rank by value, lowest first (ties in member order); no value means no rank."""
    order = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: values[i] or 0.0)
    ranks: list[int | None] = [None] * len(values)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def kendall_tau(rows: list[MemberResult]) -> tuple[float | None, int]:
    """Agreement of our ranking with the paper's over members both rank (1 = same order)."""
    both = [(r.rank, r.paper_rank) for r in rows if r.rank is not None and r.paper_rank is not None]
    pairs = concordant = discordant = 0
    for i in range(len(both)):
        for j in range(i + 1, len(both)):
            a = (both[i][0] - both[j][0]) * (both[i][1] - both[j][1])
            pairs += 1
            concordant += a > 0
            discordant += a < 0
    return ((concordant - discordant) / pairs if pairs else None), len(both)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_results(run: SuiteRun, rows: list[MemberResult]) -> None:
    suite, out = run.suite, run.out
    meta = {"scale": run.scale, "data": run.data, "recipe": run.recipe, "seeds": run.seeds, "epochs": run.epochs,
            "iters": run.iters, "settings": run.settings}
    headers = ["member", "model", "params", "runs", "median", "mean", "std", "diverged", "paper", "fail",
               "paper_fail", "rank", "paper_rank"]
    table = io.StringIO()
    writer = csv.writer(table)  # rows end in \r\n, as the csv module writes them
    writer.writerow(headers)
    for r in rows:
        values = r.to_dict()
        writer.writerow([values[h] if not isinstance(values[h], float) else round(values[h], 4)
                         for h in headers])
    write_text_atomic(out / "results.csv", table.getvalue())
    tau, n = kendall_tau(rows)
    budget = f"{run.epochs} epochs" if run.epochs is not None else \
        f"{run.iters} iterations" if run.iters is not None else "the recipe's"
    lines = [f"# {suite.title}", "", f"Paper: {suite.source}. Scale: {run.scale}; data: {run.data}; "
             f"recipe: {run.recipe}; seeds: {run.seeds} (seed0..seed{run.seeds - 1} of each member, this "
             f"call's); budget: {budget}; --set: "
             f"{', '.join(f'{k}={v}' for k, v in run.settings.items()) or 'none'}. Errors are test errors in "
             "percent; 'fail' is the papers' verdict (above 20%).", ""]
    if run.scale in ("small", "cpu"):
        lines += [f"**{SMALL_NOTE if run.scale == 'small' else CPU_NOTE}**", ""]
    lines += ["| member | model | params | runs | median | mean ± std | diverged | paper | fail (ours / paper) "
              "| rank (ours / paper) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = f"{r.params / 1e6:.3f}M" if r.params else "-"
        spread = f"{fmt(r.mean)} ± {fmt(r.std)}" if r.mean is not None else "-"
        lines.append(f"| {r.member} | {r.model} | {params} | {r.runs} | {fmt(r.median)} | {spread} "
                     f"| {r.diverged} | {fmt(r.paper)} | {'yes' if r.fail else 'no'} / "
                     f"{'yes' if r.paper_fail else 'no'} | {fmt(r.rank)} / {fmt(r.paper_rank)} |")
    agreement = f"{tau:+.2f} over {n} members" if tau is not None else "not computable"
    lines += ["", f"Ranking agreement with the paper (Kendall tau, 1 = same order): {agreement}.", "",
              "![error curves](curves.png)", "", "![final errors](errors.png)", ""]
    write_text_atomic(out / "results.md", "\n".join(lines))
    document = {"suite": suite.name, "meta": meta, "rows": [r.to_dict() for r in rows], "kendall_tau": tau}
    write_text_atomic(out / "results.json", json.dumps(document, indent=2, default=str))
    _figures(suite, out, rows)


def _figures(suite: Suite, out: Path, rows: list[MemberResult]) -> None:
    curves = {}
    for member in suite.members:
        metrics = evaluation_rows(RunDir(out / member.slug / "seed0").read_metrics())
        if metrics:
            curves[member.label] = metrics
    if curves:
        plot_curves(curves, out / "curves.png", title=f"{suite.title} (seed 0)")
    plot_errors([ErrorBar(r.member, r.median, r.paper, r.diverged) for r in rows], out / "errors.png",
                title=suite.title)

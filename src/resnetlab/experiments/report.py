"""One self-contained HTML page from run and suite directories: tables beside the papers', curves, metadata.

Figures are embedded as base64 data URIs, so the page opens anywhere with no network and no other files.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

from resnetlab.errors import ResnetlabError
from resnetlab.experiments.results import MemberResult, fmt
from resnetlab.files.atomic import write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.runs.outputs import check_output
from resnetlab.runs.records import read_summary
from resnetlab.version import __version__

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.note { background: #fff6d6; padding: .5em .8em; border-left: 4px solid #e0b400; }
.meta td:first-child { color: #666; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="num">{fmt(value)}</td>'
    return f"<td>{html.escape(fmt(value))}</td>"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return parse_json(path.read_bytes(), str(path))
    except OSError as exc:
        raise ResnetlabError(f"{path}: unreadable ({exc.strerror or exc})") from None


def _run_section(path: Path) -> str:
    summary = read_summary(path / "summary.json")
    config = _read_json(path / "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("optim", {}), dict):
        raise ResnetlabError(f"{path / 'config.json'}: expected a JSON object with an 'optim' object")
    final, best = summary.final or {}, summary.best or {}
    meta = [
        ["model", summary.model], ["data", summary.data], ["recipe", summary.recipe],
        ["status", summary.status], ["steps", f"{summary.steps} / {summary.total_steps}"],
        ["final test error (%)", _pct(final.get("test_error"))],
        ["final top-5 error (%)", _pct(final.get("test_top5_error"))],
        ["best test error (%)", f"{_pct(best.get('test_error'))} (epoch {best.get('epoch')}, "
                                f"selected on {best.get('selected_on')})"],
        ["paper's verdict", "fail (above 20%)" if summary.fail else "no fail"],
        ["parameters", f"{summary.params or 0:,}"], ["device", summary.device],
        ["images/s (median epoch)", f"{summary.images_per_s or 0:.0f}"],
        ["wall time", f"{summary.wall_time_s or 0:.1f} s"],
        ["code", f"resnetlab {summary.resnetlab}, torch {summary.torch}"],
        ["optimizer", json.dumps(config.get("optim", {}))],
    ]
    parts = [f"<h2>Run: {html.escape(path.name)}</h2>", '<table class="meta">' + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in meta) + "</table>"]
    if (path / "curves.png").exists():
        parts.append(_img(path / "curves.png", f"{path.name} error curves"))
    return "\n".join(parts)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"  # a number: `Summary.checked` refused any other kind


def _suite_section(path: Path) -> str:
    where = path / "results.json"
    data = _read_json(where)
    if not isinstance(data, dict):
        raise ResnetlabError(f"{where}: expected a JSON object, got {type(data).__name__}")
    meta, rows = data.get("meta", {}), data.get("rows", [])
    if not isinstance(meta, dict):
        raise ResnetlabError(f"{where}: field 'meta': expected an object, got {type(meta).__name__}")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ResnetlabError(f"{where}: field 'rows': expected a list of objects")
    tau = data.get("kendall_tau")
    if tau is not None and not isinstance(tau, int | float):
        raise ResnetlabError(f"{where}: field 'kendall_tau': expected a number")
    headers = ["member", "model", "runs", "median", "mean", "std", "diverged", "paper", "fail (ours)",
               "fail (paper)", "rank", "paper rank"]
    table = [[r.member, r.model, r.runs, r.median, r.mean, r.std, r.diverged, r.paper, "yes" if r.fail else "no",
              "yes" if r.paper_fail else "no", r.rank, r.paper_rank] for r in map(MemberResult.from_row, rows)]
    parts = [f"<h2>Suite: {html.escape(str(data.get('suite')))} ({html.escape(path.name)})</h2>",
             f"<p>Scale {html.escape(str(meta.get('scale')))}, data {html.escape(str(meta.get('data')))}, "
             f"recipe {html.escape(str(meta.get('recipe')))}, seeds {meta.get('seeds')}. Test errors in percent "
             f"beside the paper's; ranking agreement (Kendall tau): "
             f"{'-' if tau is None else f'{tau:+.2f}'}.</p>"]
    if meta.get("scale") == "small":
        parts.append('<p class="note">A small-scale run checks the mechanism of the experiment, '
                     "not the paper's numbers.</p>")
    parts.append(_table(headers, table))
    for fig in ("curves.png", "errors.png"):
        if (path / fig).exists():
            parts.append(_img(path / fig, f"{path.name} {fig[:-4]}"))
    return "\n".join(parts)


def build_report(paths: list[str | Path], out: str | Path) -> Path:
    """Write the page; each path is a run directory (summary.json) or a suite directory (results.json)."""
    if not paths:
        raise ResnetlabError("report: give at least one run or suite directory")
    out = check_output(out, paths)  # before any work: never a file of a run or suite, never an input
    sections = []
    for raw in paths:
        path = Path(raw)
        if (path / "results.json").exists():
            sections.append(_suite_section(path))
        elif (path / "summary.json").exists():
            sections.append(_run_section(path))
        else:
            raise ResnetlabError(f"{path}: not a run directory (summary.json) or suite directory (results.json)")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>resnetlab report</title>"
            f"<style>{_STYLE}</style></head><body><h1>resnetlab report</h1>"
            f"<p>Generated {stamp} by resnetlab {__version__}. Papers: He et al., <i>Deep Residual Learning for "
            f"Image Recognition</i> (CVPR 2016) and <i>Identity Mappings in Deep Residual Networks</i> "
            f"(ECCV 2016).</p>{''.join(sections)}</body></html>")
    write_text_atomic(out, page)
    return out

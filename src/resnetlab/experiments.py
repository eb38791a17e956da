"""The papers' experiments as suites: each table or figure is a data file, run with one command.

`resnetlab experiment SUITE` trains every member with the same recipe and seeds, skips members already
finished (a rerun resumes the suite), carries on after a member fails or diverges, and writes
`results.md` / `results.csv` with our errors beside the paper's, and the figures.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .config import build_config, default_recipe, read_named_toml
from .errors import ConfigError, ResnetlabError
from .records import Summary, evaluation_rows
from .registry import get_spec

SUITE_DIR = Path(__file__).parent / "suites"
SCALES = ("paper", "cpu", "small")
SMALL_NOTE = ("This is a small-scale run: shallower nets, a short budget and small data. It checks the "
              "mechanism of the experiment, not the paper's numbers.")
# cpu scale: real images (CIFAR-10) on one 2-core CPU. The default budget was calibrated on that machine
# (docs/experiments.md): 2 epochs per run, the paper's schedule compressed (lr / 10 at 50% and 75%).
CPU_EPOCHS = 2.0
CPU_NOTE = ("This is a CPU-scale run: the papers' data (CIFAR-10) but shallower nets and a budget of a few "
            "epochs in place of 164, on one 2-core CPU. It tests the papers' orderings, not their numbers.")


@dataclass(frozen=True)
class Member:
    label: str
    model: str
    override: dict[str, Any] = field(default_factory=dict)  # spec fields
    settings: dict[str, Any] = field(default_factory=dict)  # config fields, e.g. {"optim.lr": 0.05}
    small: dict[str, Any] = field(default_factory=dict)  # small scale: "model" and/or spec fields
    paper: float | str | None = None  # error in percent, "fail", or not printed
    # cpu scale: a table like `small`; true (absent) = the small table's nets, which are CPU-sized;
    # false = the member is left out at cpu scale (the budget does not allow every member)
    cpu: dict[str, Any] | bool = True

    def at(self, scale: str) -> tuple[str, dict[str, Any]]:
        """(registry model, spec overrides) at a scale."""
        if scale == "paper":
            return self.model, dict(self.override)
        if scale == "cpu" and self.cpu is False:
            raise ConfigError(f"member {self.label!r} is not run at cpu scale (cpu = false)")
        table = dict(self.cpu if scale == "cpu" and isinstance(self.cpu, dict) else self.small)
        return table.pop("model", self.model), {**self.override, **table}

    def runs_at(self, scale: str) -> bool:
        return not (scale == "cpu" and self.cpu is False)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-").lower()


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    source: str
    recipe: str
    members: tuple[Member, ...]


class SuiteStopped(ResnetlabError):
    """A member was stopped by SIGTERM/SIGINT (checkpoint written): the suite stops too."""

    exit_code = 3


class SuiteFailed(ResnetlabError):
    """Some member runs failed (the others ran, and results were written): the suite exits non-zero, naming
    them; the next call of the same command retries them."""

    exit_code = 1


class SuiteDir:
    """A suite's output directory: which suite it holds, and who is writing into it.

    `suite.json` names the suite, scale, data, recipe and budget on the first call; a later call with another
    of these is refused, so two suites never write into each other's members or results. A lock (flock on
    `.suite.lock`, dropped by the OS when the process dies) is held for the call: exclusive for a normal
    call, shared for the `--no-results` calls that train disjoint members side by side (scripts/gpu_plan.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def claim(self, identity: dict[str, Any], shared: bool) -> None:
        import fcntl
        import os

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {self.path}: cannot create ({exc.strerror or exc})") from None
        if not self.path.is_dir():
            raise ConfigError(f"--out {self.path}: is not a directory")
        fd = os.open(self.path / ".suite.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"--out {self.path}: another resnetlab experiment is writing into it; wait for it "
                              "or give another --out") from None
        self._fd = fd
        try:
            held = self.path / "suite.json"
            if held.exists():
                try:
                    before = json.loads(held.read_text())
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"{held}: unreadable ({exc}); remove it to reuse this --out") from None
                if not isinstance(before, dict):
                    raise ConfigError(f"{held}: expected a JSON object, got {type(before).__name__}")
                differ = [k for k in identity if k in before and before[k] != identity[k]]
                if differ:
                    k = differ[0]
                    raise ConfigError(f"--out {self.path} holds {before.get('suite')!r} with {k} "
                                      f"{before[k]!r}, not {identity[k]!r}: give another --out")
            else:
                write_text_atomic(held, json.dumps(identity, indent=2) + "\n")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is not None:
            import os

            os.close(self._fd)
            self._fd = None


def select_members(suite: Suite, only: list[str] | None) -> tuple[Member, ...]:
    """The members named in `only` (label or slug), in suite order; all of them when `only` is empty."""
    if not only:
        return suite.members
    known = {m.label: m for m in suite.members} | {m.slug: m for m in suite.members}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ConfigError(f"suite {suite.name}: no member {unknown[0]!r}; members (slugs): "
                          f"{', '.join(m.slug for m in suite.members)}")
    wanted = {known[name].slug for name in only}
    return tuple(m for m in suite.members if m.slug in wanted)


def at_scale(suite: Suite, scale: str) -> Suite:
    """The suite as it runs at `scale`: at cpu scale, without the members marked `cpu = false`."""
    members = tuple(m for m in suite.members if m.runs_at(scale))
    if not members:
        raise ConfigError(f"suite {suite.name}: no member runs at {scale} scale")
    return replace(suite, members=members)


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.toml"))


def load_suite(name: str) -> Suite:
    """A named suite or a path to a suite TOML file; every member's spec is checked."""
    path, data = read_named_toml(name, SUITE_DIR, "suite")
    members = []
    for i, raw in enumerate(data.get("members", [])):
        try:
            member = Member(label=raw["label"], model=raw["model"], override=raw.get("override", {}),
                            settings=raw.get("set", {}), small=raw.get("small", {}), paper=raw.get("paper"),
                            cpu=raw.get("cpu", True))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"suite {path}: member {i + 1} lacks {exc}") from None
        if not isinstance(member.cpu, dict | bool):
            raise ConfigError(f"suite {path.stem}, member {member.label!r}: cpu must be a table or false")
        for scale in SCALES:
            if not member.runs_at(scale):
                continue
            model, override = member.at(scale)
            try:
                get_spec(model, **override)
            except ResnetlabError as exc:
                raise ConfigError(f"suite {path.stem}, member {member.label!r} ({scale}): {exc}") from None
        members.append(member)
    if not members:
        raise ConfigError(f"suite {path}: no members")
    if len({m.slug for m in members}) != len(members):
        raise ConfigError(f"suite {path}: member labels must be distinct")
    return Suite(path.stem, data.get("title", path.stem), data.get("source", ""), data.get("recipe", "cifar"),
                 tuple(members))


def run_suite(suite: Suite, out: Path, data: str | None = None, seeds: int = 1, epochs: float | None = None,
              iters: int | None = None, scale: str = "paper", device: str | None = None,
              settings: dict[str, Any] | None = None, only: list[str] | None = None, results: bool = True,
              log: Any = print) -> list[dict[str, Any]]:
    """Train every member x seed (skipping finished runs, resuming interrupted ones); write the results.

    `only` restricts the training to members given by label or slug (the results table still lists every
    member, with what its directory holds), so that several processes can train one suite's members side
    by side into the same directory; those pass `results=False` and one of them writes the results at the
    end. A member stopped by SIGTERM/SIGINT stops the suite: SuiteStopped.
    """
    if scale not in SCALES:
        raise ConfigError(f"--scale: {scale!r} is not one of {', '.join(SCALES)}")
    if seeds < 1:
        raise ConfigError("--seeds: must be at least 1")
    if data is None:
        if scale == "paper":
            raise ConfigError(f"suite {suite.name}: --data is required at paper scale (e.g. cifar10:PATH)")
        if scale == "cpu":
            raise ConfigError(f"suite {suite.name}: --data is required at cpu scale (e.g. cifar10:PATH or "
                              "folder:PATH/cifar10-jpeg.tar.gz)")
        data = "digits"
    if scale == "small" and epochs is None and iters is None:
        epochs = 6
    if scale == "cpu" and epochs is None and iters is None:
        epochs = CPU_EPOCHS
    suite = at_scale(suite, scale)
    recipe = suite.recipe if scale == "paper" else default_recipe(data)
    chosen = select_members(suite, only)
    if scale == "small":
        log(SMALL_NOTE)
    if scale == "cpu":
        log(CPU_NOTE)
    identity = {"suite": suite.name, "scale": scale, "data": data, "recipe": recipe, "epochs": epochs,
                "iters": iters}
    suite_dir = SuiteDir(out)
    suite_dir.claim(identity, shared=not results)
    try:
        failed = _run_members(suite, chosen, out, scale, data, recipe, seeds, epochs, iters, device, settings, log)
        rows = collect(suite, out, scale)
        if results:
            write_results(suite, out, rows, scale=scale, data=data, recipe=recipe, seeds=seeds, epochs=epochs,
                          iters=iters)
    finally:
        suite_dir.release()
    if failed:
        names = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise SuiteFailed(f"suite {suite.name}: {len(failed)} member run(s) failed: {names}. Fix the input and "
                          "run the same command again: finished members are kept, failed ones retried")
    return rows


def _run_members(suite: Suite, chosen: tuple[Member, ...], out: Path, scale: str, data: str, recipe: str,
                 seeds: int, epochs: float | None, iters: int | None, device: str | None,
                 settings: dict[str, Any] | None, log: Any) -> list[str]:
    """Train or resume each chosen member and seed; the failed ones as "label seed N (reason)"."""
    import shutil

    from .errors import RunDirError
    from .train import resume, train

    failed: list[str] = []
    for member in chosen:
        model, override = member.at(scale)
        for seed in range(seeds):
            run_dir = out / member.slug / f"seed{seed}"
            tag = f"[{suite.name}] {member.label} seed {seed}"
            done = _summary(run_dir)
            if done is not None and done.status in ("finished", "diverged"):
                log(f"{tag}: already done, skipped")
                continue
            if (run_dir / "error.txt").exists():  # failed on an earlier call: retry it
                if _has_checkpoint(run_dir):
                    (run_dir / "error.txt").unlink()
                else:  # nothing trained worth keeping: start it again, from this call's input
                    log(f"{tag}: failed before, retrying from the start")
                    shutil.rmtree(run_dir)
            try:
                if (run_dir / "config.json").exists():
                    log(f"{tag}: resuming")
                    _, summary = resume(run_dir, device=device, log=log)
                else:
                    overrides = {f"model.{k}": v for k, v in override.items()}
                    overrides.update(member.settings, **(settings or {}))
                    overrides["run.seed"] = seed
                    if epochs is not None:
                        overrides["schedule.epochs"] = epochs
                    if iters is not None:
                        overrides["schedule.iters"] = iters
                    if device is not None:
                        overrides["run.device"] = device
                    log(f"{tag}: training {model} {override or ''}")
                    _, summary = train(build_config(recipe=recipe, model=model, data=data, overrides=overrides),
                                       run_dir, log=log)
            except RunDirError as exc:  # e.g. in use by another process: not this member's fault, no error.txt
                log(f"{tag}: failed: {exc}")
                failed.append(f"{member.label} seed {seed} ({exc})")
                continue
            except ResnetlabError as exc:  # the suite carries on; the member is reported as failed
                log(f"{tag}: failed: {exc}")
                failed.append(f"{member.label} seed {seed} ({exc})")
                run_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(run_dir / "error.txt", str(exc) + "\n")
                continue
            if summary.status == "stopped":  # a signal: the checkpoint is written, stop the suite here
                raise SuiteStopped(f"{tag}: stopped by a signal; rerun the same command to resume")
    return failed


def _has_checkpoint(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.suffix == ".pt" for p in ckpts.iterdir())


def _summary(run_dir: Path) -> Summary | None:
    """The run's summary.json, or None where there is none (not finished, or unreadable); one of another
    shape is a one-line error naming it (`records.Summary.checked`)."""
    try:
        data = json.loads((run_dir / "summary.json").read_text())
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
    from .plots import plot_curves, plot_errors
    from .rundir import RunDir

    curves = {}
    for member in suite.members:
        metrics = evaluation_rows(RunDir(out / member.slug / "seed0").read_metrics())
        if metrics:
            curves[member.label] = metrics
    if curves:
        plot_curves(curves, out / "curves.png", title=f"{suite.title} (seed 0)")
    plot_errors(rows, out / "errors.png", title=suite.title)

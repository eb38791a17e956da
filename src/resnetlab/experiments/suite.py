"""The papers' experiments as suites: each table or figure is a data file, run with one command.

`resnetlab experiment SUITE` trains every member with the same recipe and seeds, skips members already
finished (a rerun resumes the suite), carries on after a member fails or diverges, and writes
`results.md` / `results.csv` with our errors beside the paper's, and the figures. Any number of such calls
may work on one suite at once, `--jobs N` starts N of them, and Slurm K: `suite_work.py` says how they share.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from resnetlab.errors import ConfigError, ResnetlabError
from resnetlab.experiments.jobs import run_jobs
from resnetlab.experiments.results import CPU_NOTE, SMALL_NOTE, _summary, collect, kendall_tau, write_results
from resnetlab.experiments.work import SuiteWork, write_when_last
from resnetlab.files.atomic import create_text_atomic, write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.networks.registry import get_spec
from resnetlab.settings.config import build_config, check_settings, default_recipe, read_named_toml, read_recipe

__all__ = ["CPU_NOTE", "SMALL_NOTE", "Member", "Suite", "SuiteDir", "SuiteFailed", "SuiteStopped", "at_scale",
           "collect", "kendall_tau", "load_suite", "run_suite", "select_members", "suite_names", "write_results"]

SUITE_DIR = Path(__file__).parent / "suites"
SCALES = ("paper", "cpu", "small")
# cpu scale: real images (CIFAR-10) on one 2-core CPU. The default budget was calibrated on that machine
# (docs/experiments.md): 2 epochs per run, the paper's schedule compressed (lr / 10 at 50% and 75%).
CPU_EPOCHS = 2.0


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
    `.suite.lock`, dropped by the OS when the process dies) is held shared by every worker for its call
    (`suite_work.py`: a per-training claim keeps two workers off one member); a worker that is done takes it
    exclusively for an instant, to learn whether it is the last (`last`), and so writes the results."""

    WAIT_S = 2.0  # how long a worker waits for an exclusive holder (another worker asking `last`)

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
        import time

        fd = os.open(self.path / ".suite.lock", os.O_RDWR | os.O_CREAT, 0o644)
        waited_until = time.monotonic() + self.WAIT_S
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > waited_until:
                    os.close(fd)
                    raise ConfigError(f"--out {self.path}: another resnetlab experiment is writing into it "
                                      "alone; wait for it or give another --out") from None
                time.sleep(0.05)
        self._fd = fd
        try:
            held = self.path / "suite.json"
            if held.exists():
                try:
                    before = parse_json(held.read_bytes(), str(held))
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"{held}: unreadable ({exc}); remove it to reuse this --out") from None
                if not isinstance(before, dict):
                    raise ConfigError(f"{held}: expected a JSON object, got {type(before).__name__}")
                differ = [k for k in identity if k in before and before[k] != identity[k]]
                if differ:
                    k = differ[0]
                    raise ConfigError(f"--out {self.path} holds {before.get('suite')!r} with {k} "
                                      f"{before[k]!r}, not {identity[k]!r}: give another --out")
            elif not create_text_atomic(held, json.dumps(identity, indent=2) + "\n"):
                self.release()  # another worker wrote it first: compare with theirs
                self.claim(identity, shared)
        except BaseException:
            self.release()
            raise

    def last(self) -> bool:
        """Whether no other worker holds the directory now (this one then writes the results); the lock is
        given up either way."""
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
            return True
        except (OSError, TypeError):
            return False
        finally:
            self.release()

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


SUITE_KEYS = ("title", "source", "recipe", "members")
MEMBER_KEYS = ("label", "model", "override", "set", "small", "cpu", "paper")


def load_suite(name: str) -> Suite:
    """A named suite or a path to a suite TOML file, checked for shape before anything runs: known keys of
    the right types, distinct labels, every member's spec at every scale it runs at, and its `set` entries
    (known settings of the right types). Any problem is one ConfigError naming the file and the field."""
    path, data = read_named_toml(name, SUITE_DIR, "suite")
    where = f"suite {path}"
    _known_keys(data, SUITE_KEYS, where)
    for key in ("title", "source", "recipe"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{where}: {key} must be a string, got {_shown(data[key])}")
    recipe = data.get("recipe", "cifar")
    try:
        read_recipe(recipe)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    raw_members = data.get("members")
    if not isinstance(raw_members, list) or not raw_members:
        raise ConfigError(f"{where}: members must be a non-empty array of tables, got {_shown(raw_members)}")
    members = [_read_member(raw, f"{where}, member {i + 1}") for i, raw in enumerate(raw_members)]
    if len({m.slug for m in members}) != len(members):
        raise ConfigError(f"{where}: member labels must be distinct")
    return Suite(path.stem, data.get("title", path.stem), data.get("source", ""), recipe, tuple(members))


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _known_keys(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = [k for k in table if k not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}"
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint}")


def _read_member(raw: Any, where: str) -> Member:
    """One `[[members]]` table of a suite file, type-checked field by field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {_shown(raw)}")
    _known_keys(raw, MEMBER_KEYS, where)
    for key in ("label", "model"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string, got {_shown(raw.get(key))}")
    where = f"{where} ({raw['label']!r})"
    for key in ("override", "set", "small"):
        if not isinstance(raw.get(key, {}), dict):
            raise ConfigError(f"{where}: {key} must be a table, got {_shown(raw[key])}")
    cpu = raw.get("cpu", True)
    if not (isinstance(cpu, dict) or cpu is True or cpu is False):
        raise ConfigError(f"{where}: cpu must be a table or false, got {_shown(cpu)}")
    paper = raw.get("paper")
    if paper is not None and not (isinstance(paper, str) or (isinstance(paper, int | float)
                                                             and not isinstance(paper, bool)
                                                             and 0 <= paper <= 100)):
        raise ConfigError(f"{where}: paper must be an error in percent (0..100) or a note, got {_shown(paper)}")
    for table in ("small", "cpu"):
        model = raw.get(table, {}).get("model") if isinstance(raw.get(table), dict) else None
        if model is not None and not isinstance(model, str):
            raise ConfigError(f"{where}: {table}.model must be a registry name, got {_shown(model)}")
    member = Member(label=raw["label"], model=raw["model"], override=dict(raw.get("override", {})),
                    settings=dict(raw.get("set", {})), small=dict(raw.get("small", {})), paper=paper, cpu=cpu)
    if not member.slug:
        raise ConfigError(f"{where}: label needs a letter or digit (it names the member's directory)")
    check_settings(member.settings, origin=f"{where}: set")  # cross-field sense is checked per run
    for scale in SCALES:
        if not member.runs_at(scale):
            continue
        model, override = member.at(scale)
        try:
            get_spec(model, **override)
        except ResnetlabError as exc:
            raise ConfigError(f"{where} ({scale} scale): {exc}") from None
    return member


def run_suite(suite: Suite, out: Path, data: str | None = None, seeds: int = 1, epochs: float | None = None,
              iters: int | None = None, scale: str = "paper", device: str | None = None,
              settings: dict[str, Any] | None = None, only: list[str] | None = None, results: bool = True,
              log: Any = print, jobs: int = 1, devices: list[str] | None = None, trainings: str | None = None,
              train: bool = True) -> list[dict[str, Any]]:
    """Train every member x seed (skipping finished runs, resuming interrupted ones); write the results.

    Any number of calls may work on one `out` at once, here or on machines sharing it (`suite_work.py`):
    each trains what no other is training, and the last to finish writes the results (never one called
    with `results=False`). `jobs` trains that many at once, each in a process of its own, on `devices`
    (`suite_jobs.py`); `train=False` trains nothing and writes the results of what has finished. `only`
    restricts the training to members given by label or slug (the results table still lists every member);
    `trainings` is the index of trainings shared with other suites (default: beside `out`). A member
    stopped by SIGTERM/SIGINT stops the suite: SuiteStopped.
    """
    if scale not in SCALES:
        raise ConfigError(f"--scale: {scale!r} is not one of {', '.join(SCALES)}")
    if not 1 <= seeds <= 1000:
        raise ConfigError(f"--seeds: {seeds} is not in 1..1000")
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
    work = SuiteWork(suite, out, scale, data, recipe, epochs, iters, settings, trainings, log)
    suite_dir = SuiteDir(out)
    suite_dir.claim(identity, shared=True)
    try:
        if not train:
            failed = work.link_trained(chosen, seeds)
        elif jobs > 1 or devices:
            failed = run_jobs(work, chosen, seeds, jobs, devices, device, only)
        else:
            failed = _run_members(suite, chosen, out, scale, data, recipe, seeds, epochs, iters, device, settings,
                                  log, work)
        rows = collect(suite, out, scale)
        if results:
            write_when_last(suite_dir, out, lambda: write_results(suite, out, rows, scale=scale, data=data,
                                                                  recipe=recipe, seeds=seeds, epochs=epochs,
                                                                  iters=iters), log, now=not train)
    finally:
        work.close()
        suite_dir.release()
    if failed:
        names = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise SuiteFailed(f"suite {suite.name}: {len(failed)} member run(s) failed: {names}. Fix the input and "
                          "run the same command again: finished members are kept, failed ones retried")
    return rows


def _run_members(suite: Suite, chosen: tuple[Member, ...], out: Path, scale: str, data: str, recipe: str,
                 seeds: int, epochs: float | None, iters: int | None, device: str | None,
                 settings: dict[str, Any] | None, log: Any, work: SuiteWork) -> list[str]:
    """Train or resume each chosen member and seed this worker claims (`work`, longest first; a training
    another suite made is linked, not repeated); the failed ones as "label seed N (reason)"."""
    import shutil

    from resnetlab.errors import RunDirError
    from resnetlab.runs.directory import RunDir
    from resnetlab.training.trackers import with_suite_tags
    from resnetlab.training.trainer import resume, train

    failed: list[str] = []
    for member, claimed in work.members(chosen, seeds):
        model, override = member.at(scale)
        for seed, run_dir in claimed:
            tag = f"[{suite.name}] {member.label} seed {seed}"
            done = _summary(run_dir)
            if done is not None and done.status in ("finished", "diverged"):
                log(f"{tag}: already done, skipped")
                continue
            if (run_dir / "error.txt").exists():  # failed on an earlier call: retry it
                if RunDir(run_dir).has_checkpoint():
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
                    overrides["run.tracker_tags"] = with_suite_tags(overrides.get("run.tracker_tags"), suite.name,
                                                                    member.label, seed, scale)
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

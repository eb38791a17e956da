"""A suite's work shared by any number of workers (calls on one `--out`, here or on machines sharing it; the
jobs of `--jobs`; Slurm tasks): each takes the members' seeds longest first and trains those whose training it
can claim (`TrainingIndex`), and records what it trains where in `OUT/workers/*.jsonl`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnetlab.errors import ConfigError, ResnetlabError, RunDirError
from resnetlab.experiments.results import read_summary
from resnetlab.experiments.suite import Member, SuiteRun, SuiteStopped
from resnetlab.experiments.suite_dir import try_lock
from resnetlab.files.atomic import write_text_atomic
from resnetlab.files.jsondoc import parse_json
from resnetlab.files.reading import read_file
from resnetlab.networks.counting import count_macs
from resnetlab.networks.registry import create_model
from resnetlab.runs.directory import RunDir
from resnetlab.training.entry import resume, train
from resnetlab.training.identity import contents, differences, identity, key_of_run, training_key
from resnetlab.training.trackers import with_suite_tags

DONE = ("finished", "diverged")


def link(own: Path, home: Path) -> None:
    """`own` becomes a relative symlink to the run directory `home` (replacing a link that was there)."""
    own.parent.mkdir(parents=True, exist_ok=True)
    tmp = own.with_name(f".{own.name}.link-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(home, own.parent), tmp)
    os.replace(tmp, own)  # atomic: a reader sees the old entry or the link


class TrainingIndex:
    """One training, once: the records and claims of the trainings made beside the suites, so that a member
    whose training another member or suite already made (the `activations` suite's unit (a) is the
    `degradation` suite's resnet56 at cpu scale) gets a relative symlink to that run directory, not a second
    training.

        INDEX/KEY.json     where the training lives: {"run": its directory relative to INDEX, "suite", "member"}
        INDEX/KEY.claim    flock'ed by the one worker that trains (or checks) that training right now

    KEY is `training.identity.training_key`. A record is trusted only while the run directory it names still
    holds that training (`key_of_run`), so an `--out` deleted and reused for another training is never linked.
    A claim is dropped by the OS when its holder dies, even by SIGKILL, so another worker takes the training
    over. flock holds across machines on NFSv4 and on Lustre mounted with `-o flock`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))

    def claim(self, key: str, who: str) -> int | None:
        """The training `key` for this process: an open, flock'ed file that `release` (or the process's end)
        frees; None while another process holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = try_lock(self.root / f"{key}.claim")
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, f"{who} (host {socket.gethostname()}, pid {os.getpid()})".encode())
        return fd

    @staticmethod
    def release(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def holder(self, key: str) -> str:
        """Who holds `key`, as the holder wrote it (empty when unknown)."""
        try:
            return (self.root / f"{key}.claim").read_text(errors="replace").strip()[:200]
        except OSError:
            return ""

    def home(self, key: str) -> Path | None:
        """The run directory recorded for `key`, if the record exists and the directory still holds that
        training (a folder deleted and made again for another training does not)."""
        try:
            record = parse_json((self.root / f"{key}.json").read_bytes(), f"{key}.json")
            run = Path(os.path.normpath(self.root / record["run"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return run if run.is_dir() and key_of_run(run) == key else None

    def record(self, key: str, run: Path, about: dict[str, Any]) -> None:
        """`run` is where the training `key` lives (written by the claim's holder only)."""
        self.root.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(os.path.abspath(run), self.root)
        write_text_atomic(self.root / f"{key}.json", json.dumps({"run": rel, **about}, indent=1) + "\n")


@dataclass(frozen=True)
class Task:
    """One member and seed of a suite: the training it makes (`key`) and its directory in the suite (`own`)."""

    member: Member
    seed: int
    key: str
    own: Path


def outcome(run: Path) -> dict[str, Any]:
    """How a run directory stands: finished or diverged (with its test error), failed (with the reason),
    stopped, or unfinished."""
    try:
        summary = read_summary(run)
    except ResnetlabError:
        summary = None
    if summary is not None and summary.status in DONE:
        return {"status": summary.status, "test_error": summary.final.get("test_error")}
    with contextlib.suppress(OSError):
        return {"status": "failed", "error": (run / "error.txt").read_text(errors="replace").strip()[:300]}
    return {"status": summary.status if summary is not None else "unfinished"}


class SuiteWork:
    """One worker's view of a suite at one scale and budget: its tasks, and the trainings it claims in turn."""

    def __init__(self, run: SuiteRun, log: Callable[[str], Any]) -> None:
        self.run, self.suite, self.out, self.log = run, run.suite, Path(run.out), log
        # by default the index shared by the suites beside --out (experiments/.trainings for the default outs)
        self.index = TrainingIndex(Path(run.trainings or Path(os.path.abspath(self.out)).parent / ".trainings"))
        self.name = os.environ.get("RESNETLAB_WORKER") or f"{socket.gethostname()} pid {os.getpid()}"
        self.events = Path(os.environ.get("RESNETLAB_EVENTS")
                           or self.out / "workers" / f"{socket.gethostname()}-{os.getpid()}.jsonl")
        self.held: set[tuple[str, int]] = set()  # tasks other workers held when this one passed (said once)
        self._keys: dict[tuple[str, int], str] = {}
        self._seen: dict[str, str] = {}  # file inputs by content, read once for all of this call's keys

    def tasks(self, chosen: tuple[Member, ...]) -> list[Task]:
        """The chosen members' seeds, longest first (multiply-adds of the net: every member has one budget)."""
        order = {m.slug: i for i, m in enumerate(chosen)}
        tasks = [Task(m, s, self.key(m, s), self.out / m.slug / f"seed{s}")
                 for m in chosen for s in range(self.run.seeds)]
        return sorted(tasks, key=lambda t: (-_cost(*t.member.at(self.run.scale)), t.seed, order[t.member.slug]))

    def key(self, member: Member, seed: int) -> str:
        """The training this member and seed make (`training_key` of the config the call builds for it).
        A config that does not build is a one-line ConfigError naming the member, before any work."""
        if (member.slug, seed) not in self._keys:
            try:
                cfg = self.run.config(member, seed)
            except ResnetlabError as exc:
                raise ConfigError(f"suite {self.suite.name}, member {member.label!r}: {exc}") from None
            self._keys[member.slug, seed] = training_key(cfg.to_dict(), self._seen)
        return self._keys[member.slug, seed]

    def call(self, chosen: tuple[Member, ...]) -> dict[str, Any]:
        """The whole call, as `suite.json` keeps it: what it asks for, its file inputs by content and the key
        of every member's training (every member of the suite at this scale and every seed). A chosen member
        (`--only`) whose config does not build stops the call (ConfigError); another is recorded as such and
        has no training."""
        run, keys, built = self.run, {}, None
        for m in self.suite.members:
            for s in range(run.seeds):
                try:
                    keys[f"{m.slug}/seed{s}"] = self.key(m, s)
                    built = built or run.config(m, s)
                except ConfigError as exc:
                    if m in chosen:
                        raise
                    keys[f"{m.slug}/seed{s}"] = f"does not build: {exc}"[:200]
        return {"suite": self.suite.name, "scale": run.scale, "data": run.data, "recipe": run.recipe,
                "epochs": run.epochs, "iters": run.iters, "seeds": run.seeds, "settings": run.settings,
                "contents": contents(built.to_dict(), self._seen) if built else {}, "trainings": keys}

    def holds(self, call: dict[str, Any]) -> str | None:
        """For an --out made before calls were kept whole: the first member run in it that is not the
        training this call makes, or a seed beyond this call's, in words (None when there is none)."""
        for member in self.suite.members:
            beyond = sorted(int(r.name[4:]) for r in (self.out / member.slug).glob("seed*")
                            if r.name[4:].isdigit() and int(r.name[4:]) >= self.run.seeds
                            and (r / "config.json").exists())
            if beyond:
                return f"holds {member.slug}/seed{beyond[-1]}, more seeds than this call's {self.run.seeds} " \
                       f"(give --seeds {beyond[-1] + 1})"
            for seed in range(self.run.seeds):
                own = self.out / member.slug / f"seed{seed}"
                wanted = call["trainings"][f"{member.slug}/seed{seed}"]
                if key_of_run(own) in (None, wanted):
                    continue
                if wanted.startswith("does not build"):
                    return f"holds {member.slug}/seed{seed}, a training this call {wanted[:150]}"
                try:
                    theirs = identity(parse_json(read_file(own / "config.json"), str(own / "config.json")))
                except (OSError, ValueError, TypeError, AttributeError, ResnetlabError):
                    theirs = {}
                ours = identity(self.run.config(member, seed).to_dict(), self._seen)
                why = "; ".join(differences(theirs, ours)[:2]) or "its files' contents"
                return f"holds another training in {member.slug}/seed{seed} than this call makes ({why})"
        return None

    def train(self, chosen: tuple[Member, ...]) -> list[str]:
        """Train or resume each chosen member and seed whose training this worker can claim, longest first; the
        failed ones as "label seed N (reason)". After a pass that trained something, the tasks other workers
        held are tried again: a holder that died in the meantime has left its member to take over."""
        failed: list[str] = []
        left = self.tasks(chosen)
        while left:
            held = []
            for task in left:
                fd = self.index.claim(task.key, self.name)
                if fd is None:
                    self._held(task)
                    held.append(task)
                    continue
                try:
                    failed += self._claimed(task)
                finally:
                    self.index.release(fd)
            if len(held) == len(left):
                break
            left = held
        return failed

    def _claimed(self, task: Task) -> list[str]:
        """With the claim held: the task trained, resumed or found done, between a start and an end event."""
        started = time.time()
        home, mode = self._home(task)
        self._event("start", task, mode=mode, run=str(home))
        try:
            failed = _train(self.run, task, home, self.log, self.tag(task))
        except BaseException:  # a signal (the run says "stopped") or an error ended the worker here
            status = "stopped" if outcome(home)["status"] == "stopped" else "interrupted"
            self._event("end", task, status=status, seconds=round(time.time() - started, 1))
            raise
        self._event("end", task, seconds=round(time.time() - started, 1), **outcome(home))
        return failed

    def _held(self, task: Task) -> None:
        """Another worker holds `task`: say so once, and link a training made for another suite, so that
        this suite's results find it once it is done."""
        if (task.member.slug, task.seed) in self.held:
            return
        self.held.add((task.member.slug, task.seed))
        home = self.index.home(task.key)
        if home is not None and not (task.own.exists() or task.own.is_symlink()):
            link(task.own, home)
        self.log(f"{self.tag(task)}: held by {self.index.holder(task.key) or 'another worker'}; left to it")

    def _home(self, task: Task) -> tuple[Path, str]:
        """With the claim held: the run directory where this task's training lives, and what the body will
        do there (train, resume, done). The suite's own directory unless the index has the training
        elsewhere, which `own` then links to; a new training is recorded before it starts."""
        own, found = task.own, self.index.home(task.key)
        if own.is_symlink():
            target = Path(os.path.realpath(own))
            if found is not None and os.path.realpath(found) != str(target):
                link(own, found)
            elif found is None and target.is_dir() and key_of_run(target) == task.key:
                found = target
                self._record(task, target)
            elif found is None:
                own.unlink()  # a link to a run that is gone or holds another training, and no record: train here
        elif own.exists():
            held = key_of_run(own)
            if held not in (task.key, None):  # put there by hand: never reported as this call's training
                raise RunDirError(f"{own}: holds another training (key {held}) than this call makes "
                                  f"({task.key}); move it away or give another --out")
            if found is None:
                self._record(task, own)
            return own, _mode(own)
        elif found is not None:
            link(own, found)
            self.log(f"{self.tag(task)}: the same training as {found} (linked, not trained again)")
        if found is not None:
            return found, _mode(found)
        self._record(task, own)
        return own, "train"

    def _record(self, task: Task, run: Path) -> None:
        self.index.record(task.key, run, {"suite": self.suite.name, "member": task.member.label,
                                          "seed": task.seed})

    def link_trained(self, chosen: tuple[Member, ...]) -> None:
        """`--collect`: link the members whose training another suite has finished; nothing is trained."""
        for task in self.tasks(chosen):
            home = self.index.home(task.key)
            if home is not None and not (task.own.exists() or task.own.is_symlink()) and \
                    outcome(home)["status"] in DONE:
                link(task.own, home)
                self.log(f"{self.tag(task)}: the same training as {home} (linked)")

    def tag(self, task: Task) -> str:
        return f"[{self.suite.name}] {task.member.label} seed {task.seed}"

    def _event(self, event: str, task: Task, **fields: Any) -> None:
        row = {"t": round(time.time(), 3), "worker": self.name, "event": event, "member": task.member.label,
               "slug": task.member.slug, "seed": task.seed, **fields}
        with contextlib.suppress(OSError):  # a record of who trained what where: never stops a training
            self.events.parent.mkdir(parents=True, exist_ok=True)
            with open(self.events, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")


def _train(run: SuiteRun, task: Task, home: Path, log: Callable[[str], Any], tag: str) -> list[str]:
    """Train, resume or skip one claimed task in `home`; its failure as ["label seed N (reason)"] (the suite
    carries on), or SuiteStopped when a signal stopped it (its checkpoint written)."""
    member, seed = task.member, task.seed
    done = read_summary(home)
    if done is not None and done.status in DONE:
        log(f"{tag}: already done, skipped")
        return []
    if (home / "error.txt").exists():  # failed on an earlier call: retried from its checkpoint, or anew
        if RunDir(home).has_checkpoint():
            (home / "error.txt").unlink()
        else:
            log(f"{tag}: failed before, retrying from the start")
            shutil.rmtree(home)
    try:
        if (home / "config.json").exists():
            log(f"{tag}: resuming")
            summary = resume(home, device=run.device, log=log)[1]
        else:
            overrides = run.overrides(member, seed)
            overrides["run.tracker_tags"] = with_suite_tags(overrides.get("run.tracker_tags"), run.suite.name,
                                                            member.label, seed, run.scale)
            if run.device is not None:
                overrides["run.device"] = run.device
            model, override = member.at(run.scale)
            log(f"{tag}: training {model} {override or ''}")
            summary = train(run.config(member, seed, overrides), home, log=log)[1]
    except ResnetlabError as exc:
        log(f"{tag}: failed: {exc}")
        if not isinstance(exc, RunDirError):  # e.g. in use by another process: not the member's fault
            home.mkdir(parents=True, exist_ok=True)
            write_text_atomic(home / "error.txt", str(exc) + "\n")
        return [f"{member.label} seed {seed} ({exc})"]
    if summary.status == "stopped":
        raise SuiteStopped(f"{tag}: stopped by a signal; rerun the same command to resume")
    return []


def _mode(run: Path) -> str:
    if outcome(run)["status"] in DONE:
        return "done"
    return "resume" if (run / "config.json").exists() else "train"


_COSTS: dict[str, int] = {}


def _cost(model: str, override: dict[str, Any]) -> int:
    """Multiply-adds per image of a member's net, the order in which workers take members (0 for a net that
    does not build: it fails in its training, not here)."""
    name = json.dumps([model, override], sort_keys=True, default=str)
    if name not in _COSTS:
        try:
            net = create_model(model, **override)
            _COSTS[name] = count_macs(net, net.spec.input_size)
        except (ResnetlabError, RuntimeError):
            _COSTS[name] = 0
    return _COSTS[name]

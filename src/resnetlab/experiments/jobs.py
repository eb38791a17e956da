"""`resnetlab experiment SUITE --jobs N`: up to N worker processes (`worker.py`) on one machine, each on cores // N
CPU threads and one GPU of `--devices` in turn; this process logs their members, keeps a progress line, replaces
a job that dies (its member resumes from the checkpoint) and stops them all on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from resnetlab.errors import ConfigError, ResnetlabError
from resnetlab.experiments.suite import Member, SuiteStopped
from resnetlab.experiments.work import DONE, SuiteWork, outcome
from resnetlab.training.identity import key_of_run

STATUS_EVERY_S = 60.0  # the progress line's period when the output is not a terminal
RESTARTS = 3  # jobs that die other than by a signal of ours are replaced this many times per slot


@dataclass
class Slot:
    """Where one job runs: a device (cpu, or one GPU by its number here) and its CPU threads."""

    index: int
    gpu: str | None
    threads: int
    restarts: int = 0


def plan_slots(jobs: int, devices: list[str] | None, device: str | None) -> list[Slot]:
    """`jobs` slots over `devices` (cpu, cuda, cuda:K, K, all; default: `device`, else every GPU, else the
    CPU), with the machine's cores split between them."""
    if not 1 <= jobs <= 1024:
        raise ConfigError(f"--jobs: {jobs} is not in 1..1024")
    gpus = _gpus(devices or [device or "auto"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // jobs)
    return [Slot(k + 1, gpus[k % len(gpus)], threads) for k in range(jobs)]


def _gpus(names: list[str]) -> list[str | None]:
    """Each device name as a GPU number as this machine numbers them (CUDA_VISIBLE_DEVICES), or None (CPU)."""
    count, env = _cuda_count(), os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [v.strip() for v in env.split(",") if v.strip()][:count] if env is not None else \
        [str(k) for k in range(count)]
    wanted: list[str | None] = []
    for name in names:
        text = name.strip().lower()
        number = text.removeprefix("cuda:")
        if text == "cpu" or (text == "auto" and count == 0):
            wanted.append(None)
            continue
        if text not in ("auto", "all", "cuda") and not number.isdigit():
            raise ConfigError(f"--devices: {name!r} is not a device (cpu, cuda, cuda:K, K or all)")
        indices = range(len(visible)) if text in ("auto", "all", "cuda") else [int(number)]
        if not visible or any(k >= len(visible) for k in indices):
            raise ConfigError(f"--devices: {name!r}: this machine has {len(visible)} GPU(s)")
        wanted += [visible[k] for k in indices]
    return wanted


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_command(spec: dict[str, Any]) -> list[str]:
    """The command of one worker process of a suite (`spec`: the suite and `run_suite`'s arguments)."""
    return [sys.executable, "-m", "resnetlab.experiments.worker", json.dumps(spec, default=str)]


def run_jobs(work: SuiteWork, chosen: tuple[Member, ...], jobs: int, devices: list[str] | None) -> list[str]:
    """Train the chosen members' seeds in up to `jobs` worker processes; the failed ones, as
    "label seed N (reason)". SuiteStopped when a signal stopped them (checkpoints written)."""
    run = work.run
    tasks = work.tasks(chosen)
    left = [t for t in tasks if outcome(t.own)["status"] not in DONE or key_of_run(t.own) not in (t.key, None)]
    if not left:
        work.log(f"[{work.suite.name}] all {len(tasks)} runs are done")
        return []
    spec = {"suite": asdict(work.suite), "out": str(work.out),
            "kwargs": {"data": run.data, "seeds": run.seeds, "epochs": run.epochs, "iters": run.iters,
                       "scale": run.scale, "settings": run.settings, "only": run.only, "results": False,
                       "trainings": str(work.index.root)}}
    pool = Pool(work, tasks, plan_slots(min(jobs, len(left)), devices, run.device), spec)
    old: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # a signal handler is set only where this is the main thread
            old[sig] = signal.signal(sig, lambda *_: pool.stop())
    try:
        pool.run()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if pool.stopping or pool.stopped_jobs:
        raise SuiteStopped(f"[{work.suite.name}] stopped by a signal: the jobs wrote their checkpoints; rerun "
                           "the same command to resume")
    if pool.broken and not pool.trained:
        raise ResnetlabError(f"[{work.suite.name}] the jobs failed to start: {pool.broken[-1]}")
    return pool.failed


@dataclass
class Job:
    slot: Slot
    proc: subprocess.Popen
    name: str  # OUT/workers/HOST-PID-jobK[.RESTART]: its output in NAME.log, its worker's events in NAME.jsonl
    log_file: IO[str]
    offset: int = 0
    task: tuple[str, float] | None = None  # what it trains now, since when


@dataclass
class Pool:
    """The running jobs of one suite, their events, the live line and the stop."""

    work: SuiteWork
    tasks: list
    slots: list[Slot]
    spec: dict[str, Any]
    base: Path = Path()  # OUT/workers/HOST-PID: the jobs' logs and events are named from it
    jobs: list[Job] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    stopping: bool = False
    stopped_jobs: int = 0
    trained: int = 0
    t0: float = field(default_factory=time.time)
    shown: float = 0.0

    def run(self) -> None:
        self.base = self.work.out / "workers" / f"{socket.gethostname()}-{os.getpid()}"
        self.base.parent.mkdir(parents=True, exist_ok=True)
        cores = self.slots[0].threads * len(self.slots)
        self.log(f"[{self.work.suite.name}] {len(self.slots)} jobs, {cores} CPU threads in all; logs "
                 f"{self.base}-job*.log")
        for slot in self.slots:
            self.start(slot)
        while self.jobs:
            time.sleep(0.25)
            for job in list(self.jobs):
                self.read_events(job)
                if job.proc.poll() is not None:
                    self.ended(job)
            self.live()
        self.live(final=True)

    def start(self, slot: Slot) -> None:
        name = f"{self.base}-job{slot.index}" + (f".{slot.restarts}" if slot.restarts else "")
        env = {**os.environ, "RESNETLAB_WORKER": f"job {slot.index}", "RESNETLAB_EVENTS": f"{name}.jsonl",
               "OMP_NUM_THREADS": str(slot.threads), "MKL_NUM_THREADS": str(slot.threads),
               "PYTHONUNBUFFERED": "1"}
        # the job sees its GPU as its only one, or none: `auto` (no --device) then means that device, and
        # the members' configs say what they say in one process
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu or ""
        given = None if self.work.run.device in (None, "auto") else "cpu" if slot.gpu is None else "cuda"
        spec = {**self.spec, "kwargs": {**self.spec["kwargs"], "device": given}}
        log_file = open(f"{name}.log", "a")  # noqa: SIM115 - closed when the job ends
        proc = subprocess.Popen(worker_command(spec), stdout=log_file, stderr=subprocess.STDOUT, env=env)
        self.jobs.append(Job(slot, proc, name, log_file))

    def read_events(self, job: Job) -> None:
        try:
            with open(f"{job.name}.jsonl") as f:
                f.seek(job.offset)
                text = f.read()
        except OSError:
            return
        lines = text.split("\n")
        job.offset += len(text) - len(lines[-1])  # a line still being written is read next time
        for line in lines[:-1]:
            with contextlib.suppress(ValueError):
                self.event(job, json.loads(line))

    def event(self, job: Job, row: dict[str, Any]) -> None:
        slot, tag = job.slot, f"[{self.work.suite.name}] {row.get('member')} seed {row.get('seed')}"
        where = f"job {slot.index} ({f'GPU {slot.gpu}' if slot.gpu is not None else 'cpu'}, {slot.threads} " \
                f"thread{'s' if slot.threads > 1 else ''})"
        if row.get("event") == "start" and row.get("mode") in ("train", "resume"):
            job.task = (f"{row.get('slug')} s{row.get('seed')}", time.time())
            self.log(f"{tag}: {'training' if row['mode'] == 'train' else 'resuming'} on {where}")
        elif row.get("event") == "end" and job.task is not None:
            job.task = None
            status, seconds = row.get("status"), row.get("seconds", 0.0)
            error = row.get("test_error")
            result = f", test error {100 * error:.2f}%" if isinstance(error, int | float) else ""
            self.log(f"{tag}: {status} on {where}{result} ({_clock(seconds)})")
            self.trained += status in DONE
            if status == "failed":
                self.failed.append(f"{row.get('member')} seed {row.get('seed')} ({row.get('error')})")

    def ended(self, job: Job) -> None:
        self.jobs.remove(job)
        job.log_file.close()
        code, slot = job.proc.returncode, job.slot
        if code in (0, 1):  # done; or done with failed members (reported by their events)
            return
        if code in (3, 130) or self.stopping:
            self.stopped_jobs += code in (3, 130)
            return
        if code != 2 and slot.restarts < RESTARTS:  # 2: a config or input error, the same for every job
            slot.restarts += 1
            self.log(f"job {slot.index} ended with {_exit(code)}; a new job takes its place (and its member, "
                     f"from the checkpoint)")
            self.start(slot)
            return
        last = _last_line(Path(f"{job.name}.log"))
        self.broken.append(last)
        self.failed.append(f"job {slot.index} ({last})")
        self.log(f"job {slot.index} failed: {last}" if code == 2 else
                 f"job {slot.index} ended with {_exit(code)} {RESTARTS + 1} times; not replaced ({last})")

    def stop(self) -> None:
        """A first signal asks every job to checkpoint and exit; a second one kills them."""
        kill = self.stopping
        self.stopping = True
        self.log(f"[{self.work.suite.name}] {'killing' if kill else 'stopping'} the jobs "
                 f"({'now' if kill else 'each checkpoints first; again to kill'})")
        for job in self.jobs:
            with contextlib.suppress(ProcessLookupError):
                job.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)

    def live(self, final: bool = False) -> None:
        """The suite's progress: on a terminal a line redrawn in place, otherwise a line a minute."""
        now = time.time()
        tty = sys.stderr.isatty()
        if not final and now - self.shown < (1.0 if tty else STATUS_EVERY_S):
            return
        self.shown = now
        states = [outcome(t.own)["status"] for t in self.tasks]
        done, failed = sum(s in DONE for s in states), sum(s == "failed" for s in states)
        busy = [f"{j.task[0]} on job {j.slot.index} {_clock(now - j.task[1])}" for j in self.jobs if j.task]
        line = (f"[{self.work.suite.name}] {done}/{len(states)} done, {len(busy)} training"
                f"{' (' + ', '.join(busy) + ')' if busy else ''}, {len(states) - done - failed - len(busy)} "
                f"waiting{f', {failed} failed' if failed else ''}; {_clock(now - self.t0)}")
        if tty:
            sys.stderr.write("\r\x1b[K" + ("" if final else line[:200]))
            sys.stderr.flush()
        if final or not tty:
            self.work.log(line)

    def log(self, line: str) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K")
        self.work.log(line)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _exit(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1][:300] if lines else "no output"
    return "no output"



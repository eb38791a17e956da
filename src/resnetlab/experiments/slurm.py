"""A suite on a cluster: `--launcher slurm --workers K` submits K tasks through submitit (`pip install
'resnetlab[slurm]'`), each a worker of the suite (`work.py`) on the `--out` the cluster shares, stopped with its
checkpoints and requeued on Slurm's warning; `--launcher submitit-local` runs the same tasks on this machine."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from resnetlab.errors import ConfigError, ResnetlabError, one_line
from resnetlab.experiments.jobs import worker_command
from resnetlab.experiments.runner import run_suite
from resnetlab.experiments.suite import Suite

SIGNAL_DELAY_S = 120  # Slurm's warning before the time limit; the worker must checkpoint within it
STOP_GRACE_S = 100.0  # how long a task waits for its worker to checkpoint and exit


class SuiteTask:
    """One Slurm task: a worker of the suite, stopped with its checkpoints and requeued on Slurm's warning."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._proc: subprocess.Popen | None = None  # submitit pickles a task before it runs: always None there

    def __call__(self) -> str:
        task = os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "?"
        env = {**os.environ, "RESNETLAB_WORKER": f"slurm task {task}", "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(worker_command(self.spec), env=env)
        code = self._proc.wait()
        if code not in (0, 1, 3):
            raise RuntimeError(f"the suite's worker ended with exit code {code} (its output is above)")
        return {0: "done", 1: "done; some members failed (see results.md)", 3: "stopped by a signal"}[code]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Slurm's warning (time limit or preemption): stop the worker, whose trainings checkpoint, and
        come back as a new task with the same suite."""
        from submitit.helpers import DelayedSubmission

        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            _wait_pid(proc.pid, STOP_GRACE_S)
        return DelayedSubmission(SuiteTask(self.spec))


def _wait_pid(pid: int, timeout: float) -> None:
    """Wait for the worker to exit. Not `Popen.wait`: this runs in a signal handler that interrupted
    `__call__`'s own `wait`, which holds the Popen's lock; waitpid reaps it all the same."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] != 0:
                return
        except ChildProcessError:  # already reaped
            return
        time.sleep(0.1)


def _minutes(text: str) -> int:
    """Slurm's time formats (MINUTES, MINUTES:SECONDS, H:MM:SS, D-H[:MM[:SS]]) in whole minutes."""
    days, _, rest = text.strip().rpartition("-")
    parts = rest.split(":")
    if not (days == "" or days.isdigit()) or not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        raise ConfigError(f"--time: {text!r} is not MINUTES, H:MM:SS or D-H:MM:SS")
    nums = [int(p) for p in parts]
    # with days: D-H[:MM[:SS]]; without: MINUTES, MINUTES:SECONDS or H:MM:SS
    hours, minutes, seconds = (nums + [0, 0])[:3] if days else ([0, *nums, 0][:3] if len(nums) < 3 else nums)
    return max(1, int(days or 0) * 1440 + hours * 60 + minutes + (seconds + 59) // 60)


_OPTION_OF = {"job_name": "the job name (from the suite's name)", "partition": "--partition",
              "account": "--account", "qos": "--qos", "constraint": "--constraint", "setup": "--setup"}
_SBATCH_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def slurm_parameters(args: argparse.Namespace, suite: Suite) -> dict[str, Any]:
    """The sbatch options of each task, as submitit's SlurmExecutor takes them."""
    extra: dict[str, Any] = {"requeue": True}
    for item in args.sbatch or []:
        key, sep, value = item.partition("=")
        if not key.strip():
            raise ConfigError(f"--sbatch {item!r}: expected KEY=VALUE or KEY")
        extra[key.strip().lstrip("-")] = value if sep else True
    params: dict[str, Any] = {"job_name": f"resnetlab-{suite.name}", "time": _minutes(args.time), "nodes": 1,
                              "ntasks_per_node": 1, "signal_delay_s": SIGNAL_DELAY_S,
                              "array_parallelism": args.workers, "additional_parameters": extra}
    for key, value in (("partition", args.partition), ("gpus_per_node", args.gpus_per_worker),
                       ("cpus_per_task", args.cpus_per_worker), ("account", args.account), ("qos", args.qos),
                       ("constraint", args.constraint), ("setup", args.setup)):
        if value:
            params[key] = value
    if args.mem_gb:
        params["mem"] = f"{args.mem_gb}GB"
    # every value that goes into the script as text must fit on its line (submitit quotes spaces, quotes, |, #)
    items = [(_OPTION_OF.get(k, k), v) for k, v in params.items() if k != "additional_parameters"]
    for key, value in extra.items():
        if not _SBATCH_KEY.fullmatch(key):
            raise ConfigError(f"--sbatch {key!r}: not an sbatch option name (letters, digits, '-', '_')")
        items.append((f"--sbatch {key}", value))
    for option, value in items:
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and (why := _unwritable(text)):
                raise ConfigError(f"{option} {text!r}: holds {why}, which a line of the sbatch script cannot hold")
    return params


def _unwritable(text: str) -> str | None:
    """Why `text` cannot stand in an sbatch script's line, or None. A newline (or another control character)
    would end the `#SBATCH` line and start a line of shell; no quoting holds it. sbatch reads a backslash as an
    escape even inside quotes, so it cannot be passed through either."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return "a newline or another control character"
    if "\\" in text:
        return "a backslash"
    return None


def dry_run(params: dict[str, Any], folder: Path, workers: int, spec: dict[str, Any]) -> str:
    """What `launch` gives submitit's SlurmExecutor, as sbatch lines: the options (sbatch's names, quoted as
    submitit quotes them), the array of `workers` tasks, the setup lines and the command each task runs."""
    flags = {k: v for k, v in params.items() if k not in ("setup", "signal_delay_s", "additional_parameters",
                                                         "array_parallelism")}
    flags["signal"] = f"USR2@{params['signal_delay_s']}"  # submitit's signal for checkpoint-and-requeue
    if workers > 1:  # one task is one job; more are an array, all running at once
        flags["array"] = f"0-{workers - 1}%{workers}"
    flags.update(params["additional_parameters"])
    lines = [f"# through submitit, which adds its log paths under {shlex.quote(str(folder.parent))}"]
    lines += [f"#SBATCH --{k.replace('_', '-')}" + ("" if v is True else f"={shlex.quote(str(v))}")
              for k, v in sorted(flags.items())]
    lines += ["", "# setup", *params.get("setup", [])] if params.get("setup") else []
    lines += ["", "# each task runs (in a child process)", shlex.join(worker_command(spec))]
    return "\n".join(lines)


def launch(suite: Suite, out: Path, kwargs: dict[str, Any], args: argparse.Namespace) -> int:
    """Submit the suite's workers (or print their sbatch with `--dry-run`); wait for them with `--wait`."""
    if args.workers < 1:
        raise ConfigError(f"--workers: {args.workers} is not >= 1")
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher: needs submitit (pip install 'resnetlab[slurm]')") from None
    where = os.path.abspath(out)  # Slurm reads the log paths under it as patterns: `%` is one (%j, %A)
    why = _unwritable(where) or ("a '%', which Slurm reads as a pattern in log paths (%j: the job id)"
                                 if "%" in where else None)
    if why:
        raise ConfigError(f"--out {where!r}: holds {why}; give the suite a path without it")
    folder = Path(where) / "submitit" / "%j"
    params = slurm_parameters(args, suite)
    spec = {"suite": asdict(suite), "out": where,
            "kwargs": {**kwargs, "trainings": os.path.abspath(kwargs["trainings"]) if kwargs.get("trainings")
                       else None}}
    if args.dry_run:
        print(dry_run(params, folder, args.workers, spec))
        return 0
    missing = [name for name in ("sbatch", "srun") if shutil.which(name) is None]
    if args.launcher == "slurm" and missing:  # one line (not submitit's traceback), before anything is written
        raise ConfigError(f"--launcher slurm: {' and '.join(missing)} not found on PATH (not a Slurm login node?); "
                          "--dry-run prints the script, --launcher submitit-local runs the tasks on this machine")
    run_suite(suite, out, **{**kwargs, "train": False, "results": False})  # checks it all, claims --out
    try:
        if args.launcher == "slurm":
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.requeues)
            executor.update_parameters(**params)
        else:
            executor = submitit.LocalExecutor(folder=folder, max_num_timeout=args.requeues)
            executor.update_parameters(timeout_min=params["time"], gpus_per_node=params.get("gpus_per_node", 0),
                                       signal_delay_s=min(SIGNAL_DELAY_S, args.local_signal_delay or SIGNAL_DELAY_S))
        with executor.batch():
            jobs = [executor.submit(SuiteTask(spec)) for _ in range(args.workers)]
    except (RuntimeError, OSError) as exc:  # sbatch refused the job, or could not be run
        raise ResnetlabError(f"--launcher {args.launcher}: submitting failed ({_last_line(exc)}); "
                             f"{out} is claimed and nothing runs on it: submit again") from None
    print(f"[{suite.name}] submitted {args.workers} worker(s) on {out}: job(s) {', '.join(j.job_id for j in jobs)}; "
          f"their output: {folder.parent}")
    if not args.wait:
        print(f"the last of them writes {out / 'results.md'}; `--collect` writes it from what has finished")
        return 0
    return _wait(jobs, out)


def _last_line(exc: BaseException) -> str:
    """submitit's errors end with what went wrong: sbatch's answer, the last line of the task's traceback."""
    return one_line(str(exc).strip().rpartition("\n")[2] or exc, 300)


def _wait(jobs: list[Any], out: Path) -> int:
    failed = 0
    for job in jobs:
        while not job.done():
            time.sleep(2.0)
        try:
            print(f"job {job.job_id}: {job.result()}")
        except Exception as exc:  # submitit re-raises the task's error, whatever its type
            failed += 1
            print(f"job {job.job_id}: failed: {_last_line(exc)}")
    if (out / "results.md").exists():
        print(f"results: {out / 'results.md'}")
    return 1 if failed else 0



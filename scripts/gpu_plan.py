"""The plan for a lent GPU (issue 16): every CUDA path checked, the speed targets measured, the papers' CIFAR-10
tables trained, each call ending well inside the device's 10-minute limit with its results under --out.

    python scripts/gpu_plan.py setup check bench --out "$OUT"          # first call
    python scripts/gpu_plan.py setup train --groups 1 2 --epochs 40 --deadline 480 --out "$OUT"

Stages, run in the order given:
  setup        environment (torch, CUDA, GPU, nvidia-smi), the package importable without fetching anything,
               the data decoded once into the cache (so parallel trainings do not each decode it)
  check        the CUDA-marked tests (tests/test_cuda.py and the GPU data path): `pytest -m cuda`
  bench        benchmarks.run on the device (ours vs the plain net: step, epoch, eval, memory, share of the
               measured copy bandwidth and bf16 rate), eager bf16 for the five models and reduce-overhead
               (CUDA graphs) for resnet110; the recomputation sweep of preact_resnet1001 at batch 128
  concurrency  total training throughput of 1..N trainings sharing the device (benchmarks.concurrent)
  train        the reproduction runs (GROUPS below, in order of value) as parallel processes, each a
               `resnetlab experiment SUITE --only MEMBER`; runs already finished are skipped, interrupted
               ones resume; at --deadline seconds the running ones get SIGTERM (checkpoint, exit 3) so the
               next call resumes them; then each suite's results table is written
  pack         results/<data>/ as .tar.gz parts of at most --part-mb under --out: configs, metrics,
               summaries, figures, logs; checkpoints only of runs not finished (to resume next call)

Every stage logs to plan.log and records what it did in plan.json, in a work folder (--work); at the end the
work folder goes to --out as plan.tar.gz beside plan.log and the results parts (the device returns at most 8
files). A stage that fails is recorded and the next stage still runs, so one broken piece does not cost the call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = "folder:.data/cifar10-jpeg.tar.gz"

# The runs of issue 16, in its order of value: (suite, members by slug). A member whose training is the same as
# an earlier one's (same model, spec and settings) is trained once and copied (see `aliases`).
GROUPS: dict[int, list[tuple[str, list[str]]]] = {
    1: [("degradation", ["resnet110", "resnet56", "plain56", "resnet20", "plain20"])],
    2: [("activations", ["110-a-original", "110-e-full-pre-act", "110-b-bn-after-add", "110-c-relu-before-add",
                         "110-d-relu-only-pre"])],
    3: [("shortcuts", ["identity", "scaling-0-5-0-5", "exclusive-gating-b-g-6", "shortcut-only-gating-b-g-6",
                       "1x1-conv-shortcut", "dropout-shortcut-0-5"])],
    4: [("preact", ["preact-resnet164", "preact-resnet1001"])],
}
# Training settings of every run here: bf16 autocast (the GPU's fast path; BN and the loss stay float32), few
# CPU threads per process (they only launch kernels), evaluation every 2 epochs, one rolling checkpoint.
RUN_SETTINGS = {"run.amp": "bf16", "run.threads": 2, "run.eval_every": 2, "run.keep_checkpoints": 1,
                "run.progress": False, "run.tensorboard": False}


class Plan:
    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out, self.args = out, args  # out: the work folder
        self.record: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "stages"},
                                       "stages": {}}
        self.t0 = time.time()

    def log(self, line: str) -> None:
        stamp = f"[{time.time() - self.t0:6.1f}s] {line}"
        print(stamp, flush=True)
        with open(self.out / "plan.log", "a") as f:
            f.write(stamp + "\n")

    def sh(self, cmd: list[str], log_name: str, timeout: float | None = None, env: dict[str, str] | None = None) -> int:
        """Run `cmd` in the repo, its output to --out/LOG_NAME; the exit code (124 when past `timeout`)."""
        self.log("$ " + " ".join(cmd))
        with open(self.out / log_name, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            try:
                return subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                      env={**os.environ, **(env or {})}).returncode
            except subprocess.TimeoutExpired:
                f.write(f"\n(timed out after {timeout} s)\n")
                return 124
            finally:
                pack_work(self.out, Path(self.args.out).resolve())  # what this command wrote comes back

    def save(self) -> None:
        (self.out / "plan.json").write_text(json.dumps(self.record, indent=1, default=str))

    # ---- stages -------------------------------------------------------------------------------------------
    def setup(self) -> dict[str, Any]:
        info: dict[str, Any] = {"python": sys.version.split()[0]}
        try:
            import resnetlab  # noqa: F401
        except ImportError:  # install the checkout; nothing is fetched (its dependencies are in the image)
            info["pip_install"] = self.sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                           "--no-build-isolation", "-e", "."], "setup.log")
        import torch

        info |= {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                 "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "multiprocessors": props.multi_processor_count}
        if shutil.which("nvidia-smi"):
            self.sh(["nvidia-smi"], "setup.log")
        from resnetlab.config import build_config
        from resnetlab.data import load_data
        from resnetlab.runtime import data_options

        t = time.perf_counter()
        source = load_data(self.args.data, data_options(build_config(data=self.args.data)))
        info["data"] = {"source": self.args.data, "train": source.train_size, "classes": source.num_classes,
                        "decode_or_cache_s": round(time.perf_counter() - t, 1)}
        return info

    def check(self) -> dict[str, Any]:
        select = ["-k", self.args.check_select] if self.args.check_select else []
        code = self.sh([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rA", "-p", "no:cacheprovider", *select,
                        f"--junitxml={self.out / 'check.xml'}", "tests/"], "check.log", timeout=self.args.check_timeout)
        return {"exit": code}

    def bench(self) -> dict[str, Any]:
        a, dev = self.args, self.args.device
        common = ["--device", dev, "--data", a.data, "--repeats", str(a.repeats), "--epoch-steps", str(a.epoch_steps)]
        res = {"eager": self.sh([sys.executable, "-m", "benchmarks.run", *common, "--amp", "bf16", "--memory",
                                 a.bench_memory,
                                 "--models", *a.bench_models, "--out", str(self.out / "bench-eager-bf16.json")],
                                "bench.log", timeout=a.bench_timeout)}
        res["graphs"] = self.sh([sys.executable, "-m", "benchmarks.run", *common, "--amp", "bf16",
                                 "--compile", "reduce-overhead", "--memory", "off", "--models", *a.compiled_models,
                                 "--out", str(self.out / "bench-graphs-bf16.json")], "bench.log",
                                timeout=a.bench_timeout)
        res["recompute"] = self.sh([sys.executable, "-m", "benchmarks.memory", "--model", a.recompute_model,
                                    "--batch", str(a.recompute_batch), "--recompute", "0", "1", "4",
                                    "--time-steps", "3", "--device", dev, "--data", a.data,
                                    "--out", str(self.out / "recompute.json")],
                                   "bench.log", timeout=a.bench_timeout)
        return res

    def concurrency(self) -> dict[str, Any]:
        a = self.args
        return {"exit": self.sh([sys.executable, "-m", "benchmarks.concurrent", "--model", a.conc_model,
                                 "--procs", *map(str, a.conc_procs), "--seconds", str(a.conc_seconds),
                                 "--device", a.device, "--amp", "bf16", "--out", str(self.out / "concurrency.json")],
                                "concurrency.log", timeout=a.bench_timeout)}

    def train(self) -> dict[str, Any]:
        jobs, aliases = plan_jobs(self.args.groups, self.args.only)
        return run_jobs(self, jobs, aliases)

    def pack(self) -> dict[str, Any]:
        return pack_results(self.results_root(), self.args.results, Path(self.args.out).resolve(), self.args.part_mb,
                            self.log, with_checkpoints=self.args.pack_checkpoints == "on")

    def results_root(self) -> Path:
        return ROOT / self.args.results


# ---- the training jobs ---------------------------------------------------------------------------------------
@dataclass
class Job:
    suite: str
    member: str  # slug
    seeds: int

    @property
    def tag(self) -> str:
        return f"{self.suite}/{self.member}"


def training_key(suite: str, slug: str) -> tuple[str, str, str]:
    """What a member trains: registry model, spec overrides, config settings (equal keys train the same)."""
    from resnetlab.experiments import load_suite

    member = next(m for m in load_suite(suite).members if m.slug == slug)
    return member.model, json.dumps(member.override, sort_keys=True), json.dumps(member.settings, sort_keys=True)


def plan_jobs(groups: list[int], only: list[str] | None = None) -> tuple[list[Job], dict[str, str]]:
    """The jobs of `groups` in order (only the SUITE/MEMBER tags in `only`, if given), and
    {alias tag: tag of the job that trains it}."""
    from resnetlab.experiments import load_suite

    jobs, aliases, seen = [], {}, {}
    for g in groups:
        if g not in GROUPS:
            raise SystemExit(f"gpu_plan: group {g} does not exist (groups: {', '.join(map(str, GROUPS))})")
        for suite, slugs in GROUPS[g]:
            known = {m.slug for m in load_suite(suite).members}
            for slug in slugs:
                if slug not in known:
                    raise SystemExit(f"gpu_plan: suite {suite} has no member {slug!r}")
                if only and f"{suite}/{slug}" not in only:
                    continue
                job = Job(suite, slug, 1)
                key = training_key(suite, slug)
                if key in seen:
                    aliases[job.tag] = seen[key]
                else:
                    seen[key] = job.tag
                    jobs.append(job)
    return jobs, aliases


def run_dir_state(path: Path) -> str:
    """done (finished or diverged), partial (has a config: resumable), or new."""
    try:
        status = json.loads((path / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status in ("finished", "diverged"):
        return "done"
    return "partial" if (path / "config.json").exists() else "new"


def run_jobs(plan: Plan, jobs: list[Job], aliases: dict[str, str]) -> dict[str, Any]:
    """Up to --parallel jobs at a time; SIGTERM to those still running at --deadline (they checkpoint)."""
    a, root = plan.args, plan.results_root()
    deadline = plan.t0 + a.deadline
    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    report: dict[str, Any] = {}
    stopping = False
    while pending or running:
        now = time.time()
        if not stopping and now >= deadline and running:
            plan.log(f"deadline: SIGTERM to {', '.join(running)}")
            for proc, _, _ in running.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            stopping, grace_end = True, now + a.grace
        if stopping and now >= grace_end:
            for tag, (proc, _, _) in running.items():
                plan.log(f"{tag}: no exit {a.grace:.0f} s after SIGTERM, killed")
                proc.kill()
        for tag, (proc, logf, started) in list(running.items()):
            if proc.poll() is not None:
                logf.close()
                report[tag] = {"exit": proc.returncode, "seconds": round(time.time() - started, 1)}
                plan.log(f"{tag}: exit {proc.returncode} after {time.time() - started:.0f} s")
                del running[tag]
        while pending and len(running) < a.parallel and not stopping and time.time() < deadline - a.min_start:
            job = pending.pop(0)
            suite_dir = root / job.suite
            if all(run_dir_state(suite_dir / job.member / f"seed{s}") == "done" for s in range(job.seeds)):
                report[job.tag] = {"exit": 0, "skipped": "already done"}
                continue
            cmd = [sys.executable, "-m", "resnetlab", "experiment", job.suite, "--only", job.member, "--no-results",
                   "--data", a.data, "--seeds", str(job.seeds), "--out", str(suite_dir), "--device", a.device,
                   *budget_args(a)]
            for key, value in {**RUN_SETTINGS, **dict(kv.split("=", 1) for kv in a.set)}.items():
                cmd += ["--set", f"{key}={value}"]
            plan.log("start " + job.tag + ": " + " ".join(cmd[2:]))
            (plan.out / "train-logs").mkdir(exist_ok=True)
            logf = open(plan.out / "train-logs" / f"{job.suite}--{job.member}.log", "a")  # noqa: SIM115
            running[job.tag] = (subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT), logf,
                                time.time())
        if pending and (stopping or time.time() >= deadline - a.min_start) and not running:
            for job in pending:
                report[job.tag] = {"exit": None, "skipped": "no time left in this call"}
            pending.clear()
        time.sleep(0.5)
    for alias, source in aliases.items():
        report[alias] = copy_alias(root, source, alias, plan.log)
    report["results"] = write_suite_results(plan, jobs, aliases)
    return report


def budget_args(a: argparse.Namespace) -> list[str]:
    return ["--epochs", str(a.epochs)] if a.iters is None else ["--iters", str(a.iters)]


def copy_alias(root: Path, source: str, alias: str, log: Any) -> dict[str, Any]:
    """A member that trains exactly what another member trained gets a copy of its finished runs."""
    copied = []
    for src in sorted((root / source).glob("seed*")):
        dst = root / alias / src.name
        if run_dir_state(src) != "done" or dst.exists():
            continue
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "*.lock"))
        (dst / "copied_from.txt").write_text(f"the same training as {source}/{src.name} (copied, not retrained)\n")
        copied.append(src.name)
    log(f"{alias}: copied {copied or 'nothing'} from {source}")
    return {"copied_from": source, "seeds": copied}


def write_suite_results(plan: Plan, jobs: list[Job], aliases: dict[str, str]) -> dict[str, Any]:
    from resnetlab.experiments import collect, load_suite, write_results

    out = {}
    for name in dict.fromkeys([j.suite for j in jobs] + [t.split("/")[0] for t in aliases]):
        suite, suite_dir = load_suite(name), plan.results_root() / name
        if not suite_dir.is_dir():
            continue
        seeds = max([j.seeds for j in jobs if j.suite == name] or [1])
        rows = collect(suite, suite_dir, "paper")
        write_results(suite, suite_dir, rows, scale="paper", data=plan.args.data, recipe=suite.recipe,
                      seeds=seeds, epochs=plan.args.epochs if plan.args.iters is None else None,
                      iters=plan.args.iters)
        out[name] = {r["member"]: r["median"] for r in rows if r["runs"]}
        plan.log(f"{name}: results written ({len(out[name])} members with results)")
    return out


# ---- packing ------------------------------------------------------------------------------------------------
def pack_results(root: Path, name: str, out: Path, part_mb: float, log: Any,
                 with_checkpoints: bool = True) -> dict[str, Any]:
    """root as gzip'd tar parts under out (results-N.tar.gz, members under `name`, the path as given): no
    TensorBoard events, no locks, and checkpoints only of runs that are not finished (to resume from)."""
    if not root.is_dir():
        return {"parts": []}
    files: list[Path] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "tensorboard" in path.parts or path.name == ".lock":
            continue
        if "checkpoints" in path.parts:
            run = path.parents[path.parts[::-1].index("checkpoints")]
            if not with_checkpoints or run_dir_state(run) == "done" or path.name == "best.pt":
                continue
        files.append(path)
    limit = part_mb * 2**20
    parts: list[list[Path]] = [[]]
    size = 0.0
    for f in files:
        n = f.stat().st_size
        if parts[-1] and size + n > limit:
            parts.append([])
            size = 0.0
        parts[-1].append(f)
        size += n
    names = []
    for i, group in enumerate(parts):
        part = out / f"results-{i}.tar.gz"
        with tarfile.open(part, "w:gz") as tar:
            for f in group:
                tar.add(f, arcname=os.path.join(name.lstrip("/"), str(f.relative_to(root))))
        names.append(part.name)
        log(f"packed {len(group)} files into {part.name} ({part.stat().st_size / 2**20:.1f} MiB)")
    return {"parts": names, "files": len(files)}


# ---- the driver ---------------------------------------------------------------------------------------------
STAGES = ("setup", "check", "bench", "concurrency", "train", "pack")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/gpu_plan.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("stages", nargs="+", choices=STAGES)
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-out"), help="what comes back: $OUT on the device")
    p.add_argument("--work", default=".gpu-work", help="logs and JSON of the stages (packed into --out)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", default=DATA)
    p.add_argument("--results", default="results/cifar10-jpeg", help="where the runs go, in the repo")
    p.add_argument("--groups", type=int, nargs="+", default=[1, 2])
    p.add_argument("--only", nargs="+", default=None, metavar="SUITE/MEMBER", help="only these runs of the groups")
    p.add_argument("--epochs", type=float, default=40.0, help="budget per run (milestones at 1/2 and 3/4)")
    p.add_argument("--iters", type=int, default=None, help="budget per run in iterations (instead of --epochs)")
    p.add_argument("--parallel", type=int, default=6, help="trainings at once on the device")
    p.add_argument("--deadline", type=float, default=480.0, help="seconds after the plan started: SIGTERM")
    p.add_argument("--grace", type=float, default=45.0, help="seconds a stopped run has to checkpoint")
    p.add_argument("--min-start", type=float, default=60.0, help="start no job later than this before the deadline")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more settings for each run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epoch-steps", type=int, default=100)
    p.add_argument("--bench-models", nargs="+",
                   default=["resnet20", "resnet56", "resnet110", "preact_resnet164", "preact_resnet1001"])
    p.add_argument("--compiled-models", nargs="+", default=["resnet110"])
    p.add_argument("--recompute-model", default="preact_resnet1001")
    p.add_argument("--recompute-batch", type=int, default=128)
    p.add_argument("--conc-model", default="resnet110")
    p.add_argument("--conc-procs", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    p.add_argument("--conc-seconds", type=float, default=8.0)
    p.add_argument("--check-select", default="", help="pytest -k expression for the check stage")
    p.add_argument("--bench-memory", choices=("on", "off"), default="on", help="memory probes of the eager bench")
    p.add_argument("--check-timeout", type=float, default=240.0)
    p.add_argument("--bench-timeout", type=float, default=300.0)
    p.add_argument("--part-mb", type=float, default=15.0)
    p.add_argument("--pack-checkpoints", choices=("on", "off"), default="on",
                   help="off: no checkpoints even of unfinished runs (the last call of a session)")
    args = p.parse_args(argv)
    if any("=" not in kv for kv in args.set):
        p.error("--set takes KEY=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RESNETLAB_CACHE", str(ROOT / ".data" / "cache"))
    os.environ["PYTHONUNBUFFERED"] = "1"
    # the source tree first on every process's path: works with or without the editable install of `setup`
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    plan = Plan(work, args)
    failed = 0
    for stage in args.stages:
        t = time.perf_counter()
        plan.log(f"== {stage}")
        try:
            result = getattr(plan, stage)()
        except Exception as exc:  # a stage's failure is recorded; the call goes on to the next stage
            result, failed = {"error": f"{type(exc).__name__}: {exc}"}, failed + 1
            plan.log(f"{stage} failed: {result['error']}")
        result["seconds"] = round(time.perf_counter() - t, 1)
        plan.record["stages"][stage] = result
        plan.save()
        plan.log(f"== {stage} done in {result['seconds']} s: {json.dumps(result, default=str)[:400]}")
        pack_work(work, out)  # after every stage: a call cut off at its limit still returns what was done
    return 1 if failed else 0


def pack_work(work: Path, out: Path) -> None:
    tmp = out / "plan.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(work, arcname="plan")
    tmp.replace(out / "plan.tar.gz")
    shutil.copy(work / "plan.log", out / "plan.log")


if __name__ == "__main__":
    sys.exit(main())

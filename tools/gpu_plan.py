"""The plan for a lent GPU: every CUDA path checked, the speed targets measured, the papers' CIFAR-10 tables
trained, each call ending well inside the device's 10-minute limit with its results under --out.

    python tools/gpu_plan.py setup check bench --out "$OUT"          # first call
    python tools/gpu_plan.py setup train --groups 1 2 --epochs 40 --deadline 480 --out "$OUT"

Stages, run in the order given:
  setup        environment (torch, CUDA, GPU), the package importable, the data decoded once into the cache
  check        the CUDA-marked tests: `pytest -m cuda`
  bench        benchmarks.run on the device (eager bf16 for the five models, CUDA graphs for resnet110) and the
               recomputation sweep of preact_resnet1001 at batch 128
  concurrency  total training throughput of 1..N trainings sharing the device (benchmarks.concurrent)
  train        the reproduction runs (GROUPS, in order of value): each suite as one `resnetlab experiment SUITE
               --only MEMBERS --jobs PARALLEL`; finished runs are skipped, interrupted ones resume, a training
               another suite made is linked; at --deadline the running suite gets SIGTERM (its jobs checkpoint,
               exit 3) for the next call to resume; then each suite's results table (`--collect`)
  pack         results/<data>/ as .tar.gz parts of at most --part-mb under --out (checkpoints only of runs not
               finished, to resume next call)

Every stage logs to plan.log and records what it did in plan.json, in a work folder (--work), packed to --out as
plan.tar.gz after every stage; a stage that fails is recorded and the next stage still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = "folder:.data/cifar10-jpeg.tar.gz"

# The runs of issue 16, in its order of value: (suite, members by slug). A member whose training is the same as
# another's (activations' 110 (a) is degradation's resnet110) is trained once: `resnetlab experiment` links it.
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
        self.dest, self.results = Path(args.out).resolve(), ROOT / args.results  # what comes back; the runs
        self.record: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "stages"},
                                       "stages": {}}
        self.t0 = time.time()

    def log(self, line: str) -> None:
        stamp = f"[{time.time() - self.t0:6.1f}s] {line}"
        print(stamp, flush=True)
        with open(self.out / "plan.log", "a") as f:
            f.write(stamp + "\n")

    def sh(self, cmd: list[str], log_name: str, timeout: float | None = None) -> int:
        """Run `cmd` in the repo, its output to --out/LOG_NAME; the exit code (124 when past `timeout`)."""
        self.log("$ " + " ".join(cmd))
        with open(self.out / log_name, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            try:
                return subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                f.write(f"\n(timed out after {timeout} s)\n")
                return 124
            finally:
                pack_work(self.out, self.dest)  # what this command wrote comes back

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
        from resnetlab.data import load_data
        from resnetlab.settings.config import build_config

        t = time.perf_counter()
        source = load_data(self.args.data, build_config(data=self.args.data).data.options())
        info["data"] = {"source": self.args.data, "train": source.train_size, "classes": source.num_classes,
                        "decode_or_cache_s": round(time.perf_counter() - t, 1)}
        return info

    def check(self) -> dict[str, Any]:
        select = ["-k", self.args.check_select] if self.args.check_select else []
        code = self.sh([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rA", "-p", "no:cacheprovider", *select,
                        f"--junitxml={self.out / 'check.xml'}", "tests/"], "check.log", timeout=self.args.check_timeout)
        return {"exit": code}

    def bench(self) -> dict[str, Any]:
        a = self.args
        common = ["benchmarks.run", "--device", a.device, "--data", a.data, "--repeats", str(a.repeats),
                  "--epoch-steps", str(a.epoch_steps), "--amp", "bf16"]
        runs = {"eager": ([*common, "--memory", a.bench_memory, "--models", *a.bench_models], "bench-eager-bf16.json"),
                "graphs": ([*common, "--compile", "reduce-overhead", "--memory", "off", "--models",
                            *a.compiled_models], "bench-graphs-bf16.json"),
                "recompute": (["benchmarks.memory", "--model", a.recompute_model, "--batch", str(a.recompute_batch),
                               "--recompute", "0", "1", "4", "--time-steps", "3", "--device", a.device, "--data",
                               a.data], "recompute.json")}
        return {name: self.sh([sys.executable, "-m", *cmd, "--out", str(self.out / out)], "bench.log",
                              timeout=a.bench_timeout) for name, (cmd, out) in runs.items()}

    def concurrency(self) -> dict[str, Any]:
        a = self.args
        return {"exit": self.sh([sys.executable, "-m", "benchmarks.concurrent", "--model", a.conc_model,
                                 "--procs", *map(str, a.conc_procs), "--seconds", str(a.conc_seconds),
                                 "--device", a.device, "--amp", "bf16", "--out", str(self.out / "concurrency.json")],
                                "concurrency.log", timeout=a.bench_timeout)}

    def train(self) -> dict[str, Any]:
        return train_suites(self, plan_suites(self.args.groups, self.args.only))

    def pack(self) -> dict[str, Any]:
        return pack_results(self.results, self.args.results, self.dest, self.args.part_mb, self.log,
                            with_checkpoints=self.args.pack_checkpoints == "on")


# ---- the training -----------------------------------------------------------------------------------------
def plan_suites(groups: list[int], only: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """The suites of `groups` in order, each with its members by slug (only the SUITE/MEMBER tags in `only`)."""
    from resnetlab.experiments.suite import load_suite

    plan: dict[str, list[str]] = {}
    for g in groups:
        if g not in GROUPS:
            raise SystemExit(f"gpu_plan: group {g} does not exist (groups: {', '.join(map(str, GROUPS))})")
        for suite, slugs in GROUPS[g]:
            known = {m.slug for m in load_suite(suite).members}
            for slug in slugs:
                if slug not in known:
                    raise SystemExit(f"gpu_plan: suite {suite} has no member {slug!r}")
                if not only or f"{suite}/{slug}" in only:
                    plan.setdefault(suite, []).append(slug)
    return list(plan.items())


def run_dir_state(path: Path) -> str:
    """done (finished or diverged), partial (has a config: resumable), or new."""
    try:
        status = json.loads((path / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status in ("finished", "diverged"):
        return "done"
    return "partial" if (path / "config.json").exists() else "new"


def experiment_command(a: argparse.Namespace, suite: str, root: Path) -> list[str]:
    cmd = [sys.executable, "-m", "resnetlab", "experiment", suite, "--data", a.data, "--seeds", "1",
           "--out", str(root / suite), "--device", a.device]
    cmd += ["--epochs", str(a.epochs)] if a.iters is None else ["--iters", str(a.iters)]
    for key, value in {**RUN_SETTINGS, **dict(kv.split("=", 1) for kv in a.set)}.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def train_suites(plan: Plan, suites: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """Each suite in turn, --parallel jobs at once; at --deadline the running suite is stopped (its jobs
    checkpoint) and no later one starts; then every suite's results from what has finished."""
    a, root = plan.args, plan.results
    deadline = plan.t0 + a.deadline
    report: dict[str, Any] = {}
    for suite, slugs in suites:
        if time.time() >= deadline - a.min_start:
            report[suite] = {"exit": None, "skipped": "no time left in this call"}
            continue
        started = time.time()
        cmd = experiment_command(a, suite, root) + ["--only", *slugs, "--jobs", str(a.parallel)]
        code = run_until(plan, cmd, f"train-{suite}.log", deadline, a.grace)
        report[suite] = {"exit": code, "seconds": round(time.time() - started, 1)}
    for suite, slugs in suites:
        if (root / suite / "suite.json").exists():
            report[suite]["collect"] = plan.sh(experiment_command(a, suite, root) + ["--collect"], f"train-{suite}.log")
        for slug in slugs:
            run = root / suite / slug / "seed0"
            link = f" (linked to {os.readlink(run)})" if run.is_symlink() else ""
            report[f"{suite}/{slug}"] = run_dir_state(run) + link
    return report


def run_until(plan: Plan, cmd: list[str], log_name: str, deadline: float, grace: float) -> int:
    """`cmd` with its output to --work/LOG_NAME; SIGTERM at `deadline`, SIGKILL `grace` seconds later."""
    plan.log("$ " + " ".join(cmd[2:]))
    with open(plan.out / log_name, "a") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            plan.log(f"deadline: SIGTERM to {cmd[4]} (its jobs checkpoint)")
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                plan.log(f"{cmd[4]}: no exit {grace:.0f} s after SIGTERM, killed")
                proc.kill()
                proc.wait()
    plan.log(f"{cmd[4]}: exit {proc.returncode}")
    pack_work(plan.out, plan.dest)
    return proc.returncode


# ---- packing ------------------------------------------------------------------------------------------------
def pack_results(root: Path, name: str, out: Path, part_mb: float, log: Any,
                 with_checkpoints: bool = True) -> dict[str, Any]:
    """root as gzip'd tar parts under out (results-N.tar.gz, members under `name`, the path as given): no
    TensorBoard events, no locks or claims, checkpoints only of runs that are not finished (to resume from);
    a member linked to another suite's run is packed as the link."""
    if not root.is_dir():
        return {"parts": []}
    files: list[Path] = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            files.append(path)
            continue
        if not path.is_file() or "tensorboard" in path.parts or path.suffix in (".lock", ".claim"):
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
        n = f.lstat().st_size
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
    p = argparse.ArgumentParser(prog="python tools/gpu_plan.py", description=__doc__.splitlines()[0],
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
    p.add_argument("--parallel", type=int, default=6, help="trainings at once on the device (--jobs)")
    p.add_argument("--deadline", type=float, default=480.0, help="seconds after the plan started: SIGTERM")
    p.add_argument("--grace", type=float, default=45.0, help="seconds a stopped run has to checkpoint")
    p.add_argument("--min-start", type=float, default=60.0, help="start no suite later than this before the deadline")
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
        (work / "plan.json").write_text(json.dumps(plan.record, indent=1, default=str))
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

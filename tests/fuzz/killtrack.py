"""The `killtrack` family: a tracked tiny run (MLflow, W&B offline, a TensorBoard stand-in) SIGKILLed at the
moments around its metrics rows, checkpoints and tracker sends (tests.fuzz.killtrack_session, the child side),
resumed until it ends; then every tracker's history must equal metrics.jsonl (docs/reliability.md). The family
runs and judges its cases itself (its `run` hook)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.common import REPO, closed_port, installed, store_template, wandb_env
from tests.fuzz.core import Case, Family, Outcome, register

# where a session kills itself: before / after the Nth metrics row, after the Nth checkpoint, after the Nth row
# reached one tracker (counted over the trackers), when the run's end reaches the trackers
POINTS = ("before_row", "row", "checkpoint", "send", "end")
TB_KEYS = ("train_loss", "train_error", "test_loss", "test_error", "val_error", "lr")  # TensorBoard's scalars
SESSION_TIMEOUT_S = 120.0
_ONCE: dict[str, Any] = {}  # the fork server, started again if it has gone


@dataclass(frozen=True)
class Plan:
    """One case: which trackers, how long a run, and the kills, one per session, in order."""

    trackers: tuple[str, ...]
    iters: int
    two_steps_an_epoch: bool
    kills: tuple[tuple[str, int], ...]

    def argv(self) -> list[str]:
        """The first session's command (`{root}`: the case's directory)."""
        extra = ["--set", "optim.batch_size=4", "--set", "run.checkpoint_every=1"] if self.two_steps_an_epoch else []
        return ["train", "--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:8", "--iters",
                str(self.iters), "--set", "run.deterministic=true", "--set", "run.threads=1", "--set",
                "run.progress=false", *extra, "--set", f"run.tracker={','.join(self.trackers)}", "--out",
                "{root}/run"]


def plans() -> st.SearchStrategy[Plan]:
    """Plans over the trackers installed here (TensorBoard always: the stand-in)."""
    choices = [t for t in (("mlflow",), ("wandb",), ("mlflow", "wandb"), ("tensorboard",),
                           ("tensorboard", "mlflow", "wandb")) if all(n == "tensorboard" or installed(n) for n in t)]
    kill = st.tuples(st.sampled_from(POINTS), st.integers(1, 6))
    return st.builds(Plan, st.sampled_from(choices), st.integers(3, 5), st.booleans(),
                     st.lists(kill, min_size=1, max_size=2).map(tuple))


def environment(root: Path) -> dict[str, str]:
    """The sessions' environment: MLflow's store and W&B (offline, never online) inside the case."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_")) and "proxy" not in k.lower()}
    return env | wandb_env(root / "wandb-home", closed_port()) | {
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_EXPERIMENT_NAME": "killtrack", "WANDB_MODE": "offline", "WANDB_PROJECT": "killtrack"}


def _server() -> subprocess.Popen[bytes]:
    if "server" not in _ONCE or _ONCE["server"].poll() is not None:
        import atexit

        root = str(REPO)
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), root) if p)
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path}
        _ONCE["server"] = subprocess.Popen([sys.executable, "-m", "tests.fuzz.killtrack_session"],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=root,
                                           bufsize=0)  # unbuffered: select() sees every line not yet read
        atexit.register(_stop, _ONCE["server"])
    return _ONCE["server"]


def _stop(server: subprocess.Popen[bytes]) -> None:
    """The fork server ended with this process (it idles between cases), its pipes closed."""
    server.kill()
    server.communicate()


def _session(kill: tuple[str, int] | None, argv: list[str], root: Path, env: dict[str, str]) -> tuple[int, str]:
    """One session in a child process forked from the fork server; its exit code (-9: killed) and output."""
    import select

    point, n = kill or ("none", 0)
    output = root / f"session-{time.time_ns()}.txt"
    server = _server()
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(json.dumps({"point": point, "n": n, "argv": argv, "root": str(root), "env": env,
                                   "output": str(output)}).encode() + b"\n")
    pid = json.loads(server.stdout.readline())["pid"]
    if not select.select([server.stdout], [], [], SESSION_TIMEOUT_S)[0]:
        os.kill(pid, signal.SIGKILL)
        server.stdout.readline()
        raise subprocess.TimeoutExpired(argv, SESSION_TIMEOUT_S)
    rc = json.loads(server.stdout.readline())["rc"]
    return int(rc), output.read_text(errors="replace") if output.exists() else ""


def run_plan(case: Case, root: Path) -> Outcome:
    """Run the case's plan in the directory `root`: the killed sessions, the resume to the end, the judge."""
    plan = case.steps[0]
    root.mkdir(parents=True, exist_ok=True)
    argv = [a.replace("{root}", str(root)) for a in plan.argv()]
    if "mlflow" in plan.trackers:
        shutil.copy(store_template(), root / "mlflow.db")
    env = environment(root)
    resume = ["train", "--resume", str(root / "run")]
    rc, err, problem = None, "", None
    try:
        for i, kill in enumerate([*plan.kills, None]):
            rc, err = _session(kill, argv if i == 0 else resume, root, env)
            if rc not in (0, -signal.SIGKILL) or (kill is None and rc != 0):
                problem = f"session {i + 1} ({kill or 'to the end'}) exit {rc}: {_last(err)}"
                break
    except subprocess.TimeoutExpired:
        problem = f"timeout: a session still running after {SESSION_TIMEOUT_S:.0f} s"
    except (OSError, ValueError, KeyError) as exc:  # the fork server gone: the harness's failure, named as such
        problem = f"fork server failed: {type(exc).__name__}: {_last(str(exc))}"
    if problem is None:
        try:
            problem = judge(root / "run", root, plan.trackers)
        except Exception as exc:  # noqa: BLE001 - the judge's own failure, named as such
            problem = f"judge failed: {type(exc).__name__}: {_last(str(exc))}"
    return Outcome([*argv, "+ kills", *map(str, plan.kills)], rc, _last(err), problem)


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


Held = list[tuple[int, str, float]]


def expected(run: Path, keys: tuple[str, ...] | None = None) -> Held:
    """(step, metric, value) for every finite number of every metrics.jsonl row but its step."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out += [(row["step"], k, float(v)) for k, v in row.items() if k != "step" and (keys is None or k in keys)
                and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    return sorted(out)


def mlflow_history(run: Path, root: Path) -> Held:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"]
    experiment = client.get_experiment_by_name("killtrack")
    others = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id != run_id and r.data.metrics]
    if others:
        raise AssertionError(f"{len(others)} other MLflow run(s) hold metrics")
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("summary.")]
    return sorted((m.step, k, float(m.value)) for k in keys for m in client.get_metric_history(run_id, k))


def wandb_history(run: Path) -> Held:
    from resnetlab.training.tracker_kinds import wandb_history as read

    run_id = json.loads((run / "trackers.json").read_text())["wandb"]["id"]
    out = []
    for log in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        if log.name != f"run-{run_id}.wandb":
            raise AssertionError(f"a W&B session of another run: {log.parent.name}")
        out += [(h["step"], k, float(v)) for h in read(log) for k, v in h.items() if k != "step" and k[:1] != "_"]
    return sorted(out)


def tensorboard_history(run: Path) -> Held:
    shown: Held = []
    for path in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        for entry in map(json.loads, path.read_text().splitlines()):
            if entry.get("open") is not None:  # TensorBoard hides the earlier events at or after a purge step
                shown = [s for s in shown if s[0] < entry["open"]]
            elif "key" in entry:
                shown.append((entry["step"], entry["key"], float(entry["value"])))
    return sorted(shown)


def judge(run: Path, root: Path, trackers: tuple[str, ...]) -> str | None:
    """What is wrong with the run's trackers after its last session; None: nothing."""
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("status") != "finished":
        return f"summary status {summary.get('status')!r}"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    if steps != sorted(set(steps)):
        return f"metrics.jsonl steps {steps}"
    failed = [ln for ln in (run / "log.txt").read_text().splitlines() if ln.startswith("tracker ")]
    if failed:
        return f"a tracker failed: {failed[0][:160]}"
    readers = {"mlflow": lambda: mlflow_history(run, root), "wandb": lambda: wandb_history(run),
               "tensorboard": lambda: tensorboard_history(run)}
    for name in trackers:
        held, want = readers[name](), expected(run, TB_KEYS if name == "tensorboard" else None)
        twice = [k for k, c in Counter((s, m) for s, m, _ in held).items() if c > 1]
        if twice:
            return f"{name} holds step {twice[0][0]} twice ({twice[0][1]})"
        if held != want:
            missing, extra = sorted(set(want) - set(held)), sorted(set(held) - set(want))
            return (f"{name}'s history differs from metrics.jsonl: missing steps {sorted({s for s, _, _ in missing})}, "
                    f"other values at steps {sorted({s for s, _, _ in extra})}")
    return None


register(Family("killtrack", lambda: plans().map(lambda plan: Case("killtrack", plan.argv(), steps=(plan,))),
                run=run_plan))

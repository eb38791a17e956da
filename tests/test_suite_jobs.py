"""A suite on many processes and machines (issue 24): `--jobs N` gives each member the result it has alone,
workers on one --out split the suite without overlap and take over a killed worker's member, Ctrl-C stops
every job with its checkpoint, and a training shared by two suites is made once."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.experiments.jobs import plan_slots
from resnetlab.training.identity import identity, training_key

TINY = """title = "tiny"
members = [
  { label = "a", model = "resnet20", small = { depth = 8 } },
  { label = "b", model = "plain20", small = { depth = 8 } },
  { label = "c", model = "resnet20", small = { depth = 14 } },
]
"""
SMALL = ["--scale", "small", "--data", "digits", "--set", "run.threads=1", "--set", "run.progress=false"]


def _suite(tmp_path: Path, text: str = TINY, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnetlab", "experiment", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "workers").glob("*.jsonl")) for line in f.read_text().splitlines()]


def _trained(out: Path) -> list[tuple[str, int, str]]:
    """(member, seed, worker) of every training started (new or resumed) by any worker on `out`."""
    return sorted((e["slug"], e["seed"], e["worker"]) for e in _events(out)
                  if e["event"] == "start" and e["mode"] in ("train", "resume"))


def _finals(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads((p / "summary.json").read_text())["final"]
            for p in sorted(out.glob("*/seed*")) if (p / "summary.json").exists()}


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_jobs_give_each_member_the_result_it_has_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Deterministic tiny nets on digits: the final metrics with --jobs 2 equal those of one process exactly
    (each out has its own index of trainings, so nothing is reused between the two)."""
    suite = _suite(tmp_path)
    common = [str(suite), *SMALL, "--iters", "12", "--set", "run.deterministic=true"]
    assert main(["experiment", *common, "--out", str(tmp_path / "one" / "out")]) == 0
    capsys.readouterr()
    assert main(["experiment", *common, "--out", str(tmp_path / "two" / "out"), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    one, two = _finals(tmp_path / "one" / "out"), _finals(tmp_path / "two" / "out")
    assert sorted(one) == ["a", "b", "c"] and one == two
    for member in "abc":  # the log says where each member trained
        assert f"[tiny] {member} seed 0: training on job " in printed and f"[tiny] {member} seed 0: finished" in printed
    assert {w for _, _, w in _trained(tmp_path / "two" / "out")} <= {"job 1", "job 2"}
    assert "[tiny] 3/3 done" in printed and "results: " in printed


def test_slots_split_the_cores_and_take_the_gpus_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    import resnetlab.experiments.jobs as jobs

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    monkeypatch.setattr(jobs, "_cuda_count", lambda: 0)
    assert [(s.gpu, s.threads) for s in plan_slots(3, None, None)] == [(None, 5)] * 3
    assert [s.threads for s in plan_slots(32, ["cpu"], None)] == [1] * 32
    monkeypatch.setattr(jobs, "_cuda_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert [s.gpu for s in plan_slots(4, None, None)] == ["4", "6", "4", "6"]  # default: every GPU
    assert [s.gpu for s in plan_slots(3, ["cuda:1"], None)] == ["6"] * 3  # three jobs share one GPU
    assert [s.gpu for s in plan_slots(2, None, "cpu")] == [None, None]
    with pytest.raises(Exception, match="this machine has 2 GPU"):
        plan_slots(2, ["cuda:2"], None)


def test_two_workers_on_one_out_split_the_suite_without_overlap(tmp_path: Path) -> None:
    suite, out = _suite(tmp_path), tmp_path / "out"
    args = _cli(str(suite), *SMALL, "--iters", "30", "--seeds", "2", "--out", str(out))
    procs = [subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trained = _trained(out)
    assert sorted((m, s) for m, s, _ in trained) == [(m, s) for m in "abc" for s in (0, 1)]  # each once
    assert all(json.loads((out / m / f"seed{s}" / "summary.json").read_text())["status"] == "finished"
               for m in "abc" for s in (0, 1))
    assert any(f"results: {out / 'results.md'}" in text for text in outputs)
    assert "| a | resnet20 depth=8 | 0.075M | 2 |" in (out / "results.md").read_text()


def test_a_killed_worker_is_taken_over_and_its_member_resumed(tmp_path: Path) -> None:
    """Two workers; the one training the short member is SIGKILLed after its first checkpoint. The other,
    done with the long member, takes the short one over (its claim died with its holder) and resumes it."""
    suite = _suite(tmp_path, TINY.replace('  { label = "b", model = "plain20", small = { depth = 8 } },\n', ""))
    out = tmp_path / "out"
    args = _cli(str(suite), *SMALL, "--iters", "120", "--set", "run.checkpoint_every=5", "--out", str(out))
    procs = [subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        _wait_for(lambda: any(w for m, _, w in _trained(out) if m == "a"), 120, "a worker to start member a")
        holder = next(w for m, _, w in _trained(out) if m == "a")
        pid = int(holder.rsplit(" ", 1)[1])
        _wait_for(lambda: any((out / "a" / "seed0" / "checkpoints").glob("step-*.pt")), 120, "a checkpoint")
        os.kill(pid, signal.SIGKILL)
        other = next(p for p in procs if p.pid != pid)
        text = other.communicate(timeout=300)[0]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert other.returncode == 0, text
    assert "[tiny] a seed 0: resuming" in text
    log = (out / "a" / "seed0" / "log.txt").read_text()
    assert "resuming" in log and "from step-" in log
    summary = json.loads((out / "a" / "seed0" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 120
    # trained by the killed worker, resumed by the other
    taker = f"{socket.gethostname()} pid {other.pid}"
    assert sorted(w for m, _, w in _trained(out) if m == "a") == sorted([holder, taker])


def test_ctrl_c_stops_every_job_with_its_checkpoint_and_they_resume(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    suite = _suite(tmp_path, TINY.replace('  { label = "b", model = "plain20", small = { depth = 8 } },\n', ""))
    out = tmp_path / "out"
    args = [str(suite), *SMALL, "--iters", "90", "--out", str(out), "--jobs", "2"]
    parent = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    logs = [out / m / "seed0" / "log.txt" for m in "ac"]
    try:  # both jobs past their first epoch, in the training loop
        _wait_for(lambda: all(p.exists() and "epoch " in p.read_text() for p in logs), 120, "both jobs to train")
        os.killpg(parent.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
        text = parent.communicate(timeout=120)[0]
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    assert parent.returncode == 3, text
    assert "stopping the jobs" in text and "rerun the same command to resume" in text
    for member in "ac":
        assert json.loads((out / member / "seed0" / "summary.json").read_text())["status"] == "stopped"
        assert any((out / member / "seed0" / "checkpoints").glob("step-*.pt")), member
    assert main(["experiment", *args]) == 0
    printed = capsys.readouterr().out
    for member in "ac":
        assert f"[tiny] {member} seed 0: resuming on job " in printed
        assert json.loads((out / member / "seed0" / "summary.json").read_text())["steps"] == 90


def test_a_member_shared_by_two_suites_is_trained_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Suite B's 'same' is suite A's 'a' (same net, data, recipe, budget, seed): B links A's run directory."""
    first = _suite(tmp_path, TINY, "first")
    second = _suite(tmp_path, """title = "second"
members = [
  { label = "same", model = "resnet20", small = { depth = 8 } },
  { label = "other", model = "resnet20", small = { depth = 14 }, set = { "optim.lr" = 0.05 } },
]
""", "second")
    outs = tmp_path / "experiments"
    common = [*SMALL, "--iters", "6"]
    assert main(["experiment", str(first), *common, "--out", str(outs / "first"), "--only", "a"]) == 0
    capsys.readouterr()
    # --collect before B trains anything: B's results already hold the training A made
    assert main(["experiment", str(second), *common, "--out", str(outs / "second"), "--collect"]) == 0
    assert "| same | resnet20 depth=8 | 0.075M | 1 |" in (outs / "second" / "results.md").read_text()
    assert main(["experiment", str(second), *common, "--out", str(outs / "second")]) == 0
    printed = capsys.readouterr().out
    link = outs / "second" / "same" / "seed0"
    assert link.is_symlink() and link.resolve() == (outs / "first" / "a" / "seed0").resolve()
    assert os.readlink(link) == "../../first/a/seed0"  # relative: the tree moves as one
    assert "[second] same seed 0: the same training as" in printed
    assert [m for m, _, _ in _trained(outs / "second")] == ["other"]  # 'same' was not trained again
    for run in [outs / "first" / "a" / "seed0", outs / "second" / "other" / "seed0"]:
        key = training_key(json.loads((run / "config.json").read_text()))  # the planned key is the run's
        assert json.loads((outs / ".trainings" / f"{key}.json").read_text())["run"].endswith(
            str(run.relative_to(outs)))


def test_a_training_is_known_by_what_determines_it() -> None:
    from resnetlab.settings.config import build_config

    def key(**overrides) -> str:
        return training_key(build_config(model="resnet20", data="digits", overrides=overrides).to_dict())

    base = key()
    assert base == key(**{"run.device": "cpu", "run.threads": 1, "run.progress": False,
                          "run.tracker_tags": ["suite=x"], "run.keep_checkpoints": 5})
    assert len({base, key(**{"run.seed": 1}), key(**{"optim.lr": 0.05}), key(**{"schedule.iters": 7}),
                key(**{"model.depth": 8})}) == 5
    assert "resolved" not in identity({"resolved": {"x": 1}, "run": {"device": "cuda"}})
    assert key(**{"model.depth": 56}) == training_key(build_config(model="resnet56", data="digits").to_dict())
    assert key(**{"model.recompute": 2}) == base  # memory, not mathematics


def test_activations_unit_a_is_degradations_resnet56_at_cpu_scale(tmp_path: Path) -> None:
    """The issue's example: one training in two suites (the same spec reached from two registry names)."""
    from resnetlab.experiments.suite import SuiteRun, at_scale, load_suite
    from resnetlab.experiments.work import SuiteWork

    def keys(name: str) -> dict[str, str]:
        suite = at_scale(load_suite(name), "cpu")
        work = SuiteWork(SuiteRun(suite, tmp_path / name, "cpu", "folder:x.tar.gz", "cifar", epochs=2.0), print)
        return {m.slug: work.key(m, 0) for m in suite.members}

    act, deg = keys("activations"), keys("degradation")
    assert act["110-a-original"] == deg["resnet56"] and act["110-b-bn-after-add"] not in deg.values()


def test_collect_writes_the_results_of_what_has_finished(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite, out = _suite(tmp_path), tmp_path / "out"
    common = [str(suite), *SMALL, "--iters", "4", "--out", str(out)]
    assert main(["experiment", *common, "--only", "b", "--no-results"]) == 0
    assert not (out / "results.md").exists()
    assert main(["experiment", *common, "--collect"]) == 0
    text = (out / "results.md").read_text()
    assert "| b | plain20 depth=8 | 0.075M | 1 |" in text and "| a | resnet20 depth=8 | - | 0 |" in text
    assert not (out / "a").exists()  # nothing trained


def test_slurm_dry_run_prints_the_sbatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    assert main(["experiment", "degradation", "--data", "cifar10:/data/cifar10", "--seeds", "3", "--out", str(out),
                 "--launcher", "slurm", "--workers", "4", "--jobs", "8", "--partition", "gpu", "--time", "4:00:00",
                 "--gpus-per-worker", "8", "--cpus-per-worker", "64", "--mem-gb", "256", "--account", "lab",
                 "--setup", "source .venv/bin/activate", "--sbatch", "mail-type=END", "--dry-run"]) == 0
    script = capsys.readouterr().out
    for line in ["#SBATCH --array=0-3%4", "#SBATCH --partition=gpu", "#SBATCH --time=240",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=64", "#SBATCH --mem=256GB",
                 "#SBATCH --account=lab", "#SBATCH --signal=USR2@120", "#SBATCH --requeue",
                 "#SBATCH --mail-type=END", "#SBATCH --job-name=resnetlab-degradation", "source .venv/bin/activate"]:
        assert line in script.splitlines(), line
    # The dry run prints what resnetlab gives submitit's public SlurmExecutor (not submitit's private script
    # renderer, so no srun line): the options above and the command each task runs, the suite's worker on --out.
    python, *command, spec = shlex.split(script.splitlines()[-1])
    assert command == ["-m", "resnetlab.experiments.worker"] and json.loads(spec)["out"] == str(out)
    assert not out.exists()  # a dry run submits and writes nothing


def test_slurm_path_through_submitits_local_executor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two tasks of submitit's local executor, each a worker: every member trained once, results written."""
    pytest.importorskip("submitit")
    suite, out = _suite(tmp_path), tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--iters", "12", "--out", str(out),
                 "--launcher", "submitit-local", "--workers", "2", "--time", "10", "--wait"]) == 0
    printed = capsys.readouterr().out
    assert "submitted 2 worker(s)" in printed and f"results: {out / 'results.md'}" in printed
    trained = _trained(out)
    assert sorted(m for m, _, _ in trained) == ["a", "b", "c"]
    assert all(w.startswith("slurm task ") for _, _, w in trained)
    assert "| c | resnet20 depth=14 |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_a_timed_out_slurm_task_is_requeued_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """submitit's local executor signals the task (USR2) 15 s after it starts, as Slurm does before the time
    limit: the worker checkpoints, the task is requeued and resumes the member."""
    pytest.importorskip("submitit")
    suite = _suite(tmp_path, 'title = "one"\nmembers = [{ label = "a", model = "resnet20", small = { depth = 8 } }]\n')
    out = tmp_path / "out"
    assert main(["experiment", str(suite), *SMALL, "--iters", "1500", "--set", "run.checkpoint_every=20",
                 "--out", str(out), "--launcher", "submitit-local", "--time", "1", "--local-signal-delay", "45",
                 "--wait"]) == 0, capsys.readouterr()
    log = (out / "a" / "seed0" / "log.txt").read_text()
    assert "resuming" in log
    summary = json.loads((out / "a" / "seed0" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 1500


@pytest.mark.slow
def test_the_suite_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    """benchmarks/suite_jobs.py on a budget of a few iterations: both parts measured, JSON and table written."""
    suite, out = _suite(tmp_path), tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.suite_jobs", "--data", "synthetic:64", "--suite",
                           str(suite), "--scale", "small", "--iters", "2", "--models", "resnet20", "--batch", "8",
                           "--seconds", "0.5", "--warmup", "1", "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, env=_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["jobs"] for r in result["suite"]] == [1, 2]
    assert all(len(r["members"]) == 3 and r["wall_s"] > 0 for r in result["suite"])
    assert result["step"][0]["model"] == "resnet20" and result["step"][0]["two_1_thread"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| --jobs 2 |" in table and "| resnet20 (8) |" in table


def _one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_slurm_launcher_without_slurm_is_one_line_and_claims_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Issue 30: with no sbatch/srun on PATH the launcher ended in submitit's RuntimeError traceback, after
    `--out` was claimed; without submitit it says what to install. Both before `--out` exists."""
    pytest.importorskip("submitit")
    suite, out = _suite(tmp_path), tmp_path / "out"
    argv = ["experiment", str(suite), *SMALL, "--iters", "2", "--out", str(out), "--launcher", "slurm"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert main(argv) == 2
    assert "sbatch" in _one_line(capsys) and not out.exists()
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    assert main(argv) == 2
    assert "pip install 'resnetlab[slurm]'" in _one_line(capsys) and not out.exists()


@pytest.mark.parametrize("change, needle", [
    ({"out": "out\n#SBATCH --partition=other"}, "--out"),
    ({"out": "out%j"}, "--out"),
    ({"out": "out\\x"}, "--out"),
    ({"partition": "gpu\nhostname"}, "--partition"),
    ({"account": "lab\r"}, "--account"),
    ({"sbatch": "mail-type=END\n#SBATCH --x=y"}, "--sbatch"),
    ({"sbatch": "mail type=END"}, "--sbatch"),
    ({"suite": "tiny\nname"}, "job name"),
])
def test_slurm_refuses_values_that_would_break_the_sbatch_script(tmp_path: Path, change: dict, needle: str,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Issue 30: a newline in --out (or a partition, an account, an --sbatch option, the suite's name) split an
    `#SBATCH` line into two, one of them a line of shell; no quoting can hold it, so it is refused in one line.
    `%` and `\\` in --out would be read by Slurm as a file-name pattern and an escape in the log paths."""
    pytest.importorskip("submitit")
    suite = _suite(tmp_path, name=change.get("suite", "tiny"))
    argv = ["experiment", str(suite), *SMALL, "--out", str(tmp_path / change.get("out", "out")), "--launcher", "slurm",
            "--partition", change.get("partition", "gpu"), "--account", change.get("account", "lab"),
            "--sbatch", change.get("sbatch", "mail-type=END"), "--dry-run"]
    assert main(argv) == 2
    assert needle in _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [suite.name]


def test_slurm_quotes_what_can_be_quoted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A space or a quote in --out is a legal path, and `|` a legal constraint: the dry run shows each as one
    word (quoted) on its line, not refused: the log folder, and --out in the command each task runs."""
    pytest.importorskip("submitit")
    out = tmp_path / "my runs" / "it's"
    assert main(["experiment", str(_suite(tmp_path)), *SMALL, "--out", str(out), "--launcher", "slurm",
                 "--constraint", "a100|h100", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "#SBATCH --constraint='a100|h100'" in lines
    assert shlex.split(lines[0].partition(" under ")[2]) == [str(out / "submitit")]
    assert json.loads(shlex.split(lines[-1])[-1])["out"] == str(out)

"""The public API (issue 31): everything the command line does, from `import resnetlab` alone, on real computation,
with the same answers as the `resnetlab` command on the same run (error, exported bytes, predictions, results
rows, propagation table) and the same one-line errors. The command runs in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab

TINY = dict(model="preact_resnet20", data="digits", iters=6, set={"run.threads": 1, "model.depth": 8})


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "resnetlab", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> resnetlab.Run:
    return resnetlab.train(**TINY, out=tmp_path_factory.mktemp("api") / "run")


def test_train_returns_a_run_and_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = resnetlab.train(**TINY, out=tmp_path / "run")
    assert capsys.readouterr() == ("", "")  # quiet unless progress=True
    assert run.summary.status == "finished" and run.summary.steps == 6
    assert run.config["model"]["name"] == "preact_resnet20" and run.config["model"]["depth"] == 8
    assert [r["step"] for r in run.metrics if "test_error" in r][-1] == 6
    again = resnetlab.Run.open(tmp_path / "run")
    assert again.summary.final == run.summary.final
    resnetlab.train(**TINY, out=tmp_path / "loud", progress="auto")
    printed = capsys.readouterr().out  # with progress, the log lines the command prints
    assert printed.splitlines() == (tmp_path / "loud" / "log.txt").read_text().splitlines()[-len(printed.splitlines()):]
    assert "preact_resnet20" in printed


def test_the_api_trains_the_net_the_command_trains(run: resnetlab.Run, tmp_path: Path) -> None:
    done = _cli("train", "--model", "preact_resnet20", "--data", "digits", "--iters", "6", "--set", "run.threads=1",
                "--set", "model.depth=8", "--out", str(tmp_path / "cli"))
    assert done.returncode == 0, done.stderr
    ours, theirs = resnetlab.load(run.path).module.state_dict(), resnetlab.load(tmp_path / "cli").module.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert resnetlab.Run.open(tmp_path / "cli").summary.final == run.summary.final


def test_evaluate_equals_the_command(run: resnetlab.Run) -> None:
    result = run.evaluate()
    again = resnetlab.evaluate(run.path)
    assert {k: v for k, v in result.items() if k != "images_per_s"} == \
        {k: v for k, v in again.items() if k != "images_per_s"}  # the speed is measured anew
    printed = _cli("eval", str(run.path), "--device", "cpu").stdout
    assert f"top-1 error {result['error']:.2%}, top-5 error {result['top5_error']:.2%}, loss {result['loss']:.4f}" \
        in printed
    assert result["error"] == pytest.approx(run.summary.final["test_error"])


def test_export_writes_the_bytes_the_command_writes(run: resnetlab.Run, tmp_path: Path) -> None:
    written = run.export("safetensors", tmp_path / "api.safetensors")
    assert written["bytes"] == (tmp_path / "api.safetensors").stat().st_size
    assert _cli("export", str(run.path), "--format", "safetensors", "-o", str(tmp_path / "cli.safetensors")
                ).returncode == 0
    assert (tmp_path / "api.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    net = resnetlab.create_model("preact_resnet20", weights=tmp_path / "api.safetensors", depth=8)
    trained = run.model().module.state_dict()
    assert all(torch.equal(net.state_dict()[k], trained[k]) for k in trained)
    with pytest.raises(resnetlab.ResnetlabError, match="depth"):
        resnetlab.create_model("preact_resnet20", weights=tmp_path / "api.safetensors", depth=14)


def test_predict_on_paths_pil_images_and_tensors_equals_the_command(run: resnetlab.Run, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / "images" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 16), dtype=np.uint8)).save(paths[-1])
    trained = run.model()
    assert trained.classes == [str(d) for d in range(10)] and trained.image_size == 8
    by_path = trained.predict(paths, top_k=3)
    assert trained.predict(tmp_path / "images", top_k=3) == by_path  # a folder: its images, sorted
    assert trained.predict([Image.open(p) for p in paths], top_k=3) == by_path
    batch = torch.stack([trained.preprocess(p) for p in paths])
    assert batch.shape == (3, 1, 8, 8) and float(batch.min()) >= 0 and float(batch.max()) <= 1
    assert trained.predict(batch, top_k=3) == by_path
    assert run.predict(paths, top_k=3) == by_path
    shown = json.loads(_cli("predict", str(run.path), *map(str, paths), "--json", "--top-k", "3").stdout)
    assert [[(t["class"], t["probability"]) for t in row["top"]] for row in shown] == \
        [[(c, round(p, 6)) for c, p in row] for row in by_path]


def test_resume_continues_a_run_to_the_same_weights(run: resnetlab.Run, tmp_path: Path) -> None:
    cut = resnetlab.train(**{**TINY, "set": {**TINY["set"], "run.checkpoint_every": 2}}, out=tmp_path / "run")
    (cut.path / "summary.json").unlink()  # as if killed after the step-4 checkpoint was written ...
    next(cut.path.glob("checkpoints/step-00000006.pt")).unlink()  # ... and before the step-6 one
    resumed = resnetlab.Run.open(cut.path).resume()
    assert resumed.summary.status == "finished" and resumed.summary.final == run.summary.final
    ours, whole = resumed.model().module.state_dict(), run.model().module.state_dict()
    assert all(torch.equal(ours[k], whole[k]) for k in whole)


def test_experiment_returns_the_rows_the_results_hold(tmp_path: Path) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text('title = "tiny"\nmembers = [\n  { label = "a", model = "resnet20", small = { depth = 8 } },\n'
                     '  { label = "b", model = "plain20", small = { depth = 8 } },\n]\n')
    rows = resnetlab.experiment(str(suite), scale="small", iters=2, out=tmp_path / "out",
                                set={"run.threads": 1})
    assert all(isinstance(r, resnetlab.MemberResult) for r in rows) and [r.member for r in rows] == ["a", "b"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [r.to_dict() for r in rows] == saved
    assert resnetlab.experiment(str(suite), scale="small", iters=2, out=tmp_path / "out", set={"run.threads": 1},
                                collect=True) == rows
    assert "degradation" in resnetlab.list_suites()


def test_propagation_numbers_are_the_commands_table(tmp_path: Path) -> None:
    found = resnetlab.propagation(["resnet20", "plain20"], data="digits", batch_size=16, option="B")
    assert set(found.results) == {"resnet20", "plain20"}
    assert {r["stage"] for r in found.results["resnet20"]} == {1, 2, 3}  # every unit of the three stages
    assert found.summary()["plain20"]["grad_ratio"] > found.summary()["resnet20"]["grad_ratio"]  # v2 sec. 3
    done = _cli("analyze", "propagation", "--model", "resnet20", "--model", "plain20", "--override", "option=B",
                "--data", "digits", "--batch-size", "16", "--out", str(tmp_path / "p.png"))
    if done.returncode == 2 and "--override" in done.stderr:  # the spelling before the one CLI grammar
        done = _cli("analyze", "propagation", "--model", "resnet20", "--model", "plain20", "-o", "option=B",
                    "--data", "digits", "--batch-size", "16", "--out", str(tmp_path / "p.png"))
    assert done.returncode == 0, done.stderr
    assert found.table() in done.stdout
    assert found.plot(tmp_path / "api.png").stat().st_size > 0


def test_errors_are_the_commands_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(resnetlab.ResnetlabError) as caught:
        resnetlab.train(model="resnet21", data="digits", out=tmp_path / "x")
    printed = _cli("train", "--model", "resnet21", "--data", "digits", "--out", str(tmp_path / "y")).stderr.strip()
    assert printed == f"resnetlab: error: {caught.value}"
    with pytest.raises(resnetlab.ResnetlabError, match="no such run directory|not a run directory"):
        resnetlab.Run.open(tmp_path / "missing")
    with pytest.raises(resnetlab.ResnetlabError, match="empty"):
        resnetlab.load("")


def test_the_library_leaves_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    """train and the propagation figure switched matplotlib to Agg, so a notebook's plt.show() showed nothing."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        resnetlab.train(**{**TINY, "iters": 2}, out=tmp_path / "run")
        resnetlab.propagation(["resnet20"], data="digits", batch_size=8).plot(tmp_path / "p.png")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    finally:
        matplotlib.use(before)

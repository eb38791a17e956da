"""The `reuse` family: reuse must happen exactly when the computation is the same. A case is two calls of
`resnetlab experiment` on a one-member suite sharing an index of trainings, with one generated change between
them; call B's result is judged against a fresh training of its config made alone (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.common import environ, image_folder, quiet_main, trained, working_directory
from tests.fuzz.core import Case, Ended, Family, register
from tests.fuzz.judge import same_state

SUITE = """title = "reused"
members = [
  { label = "a", model = "resnet20", small = { depth = 8 } },
]
"""
# one other valid value for every config field (model: a few spec fields); run.threads and run.device are left
# out: a thread count is a session field whose sums may round otherwise, and the judge compares bits
CHANGES: dict[str, str] = {
    "data.normalize": "pixel_mean", "data.pad": "2", "data.flip": "true", "data.val_split": "10",
    "data.split_seed": "3", "data.ten_crop": "true", "data.workers": "1", "data.crop_size": "200",
    "data.scale": "[200,300]", "data.test_resize": "200", "data.cache_dir": "{root}/cache2",
    "optim.batch_size": "32", "optim.lr": "0.05", "optim.momentum": "0.8", "optim.weight_decay": "0.0001",
    "optim.nesterov": "false", "optim.accumulate": "2", "optim.linear_scaling": "true",
    "schedule.unit": "iter", "schedule.total": "20", "schedule.milestones": "[1]", "schedule.gamma": "0.5",
    "schedule.epochs": "1",
    "warmup.enabled": "true", "warmup.lr": "0.02", "warmup.iters": "1", "warmup.until_error": "0.5",
    "run.seed": "5", "run.deterministic": "true", "run.eval_every": "2", "run.checkpoint_every": "1",
    "run.keep_checkpoints": "3", "run.channels_last": "false", "run.amp": "bf16", "run.compile": "off",
    "run.tensorboard": "true", "run.sync_bn": "true", "run.tracker_tags": "team=x",
    "model.depth": "14", "model.shortcut": "conv1x1", "model.unit": "full_preact", "model.option": "B",
}
SESSION = {"data.workers", "data.cache_dir", "run.checkpoint_every", "run.keep_checkpoints", "run.tensorboard",
           "run.tracker_tags", "run.seed"}  # run.seed: the suite's own seed overrides a --set
SAME_FILES = ("nothing", "init_copied", "init_relative_same", "data_touched", "data_copied")
CHANGED_FILES = ("init_replaced", "init_relative_other", "data_changed")
INIT_KINDS = ("init_replaced", "init_copied", "init_relative_same", "init_relative_other")
DATA_KINDS = ("data_changed", "data_touched", "data_copied")


def reuse_cases() -> st.SearchStrategy[Case]:
    field = st.tuples(st.just("field"), st.sampled_from(sorted(CHANGES)))
    files = st.tuples(st.sampled_from(SAME_FILES + CHANGED_FILES), st.none())
    reused = st.tuples(st.just("out_reused"), st.sampled_from(sorted(CHANGES)))
    return st.builds(_case, st.one_of(field, files, reused), st.booleans(), st.sampled_from([1, 2]),
                     st.booleans())


def _case(change: tuple[str, str | None], same_out: bool, iters: int, with_init: bool) -> Case:
    kind = change[0]
    folder = kind in DATA_KINDS
    init = kind in INIT_KINDS or (with_init and not folder)
    params = {"kind": kind, "field": change[1], "same_out": same_out and kind != "out_reused", "iters": iters,
              "data": "folder" if folder else "digits", "init": init}
    return Case("reuse", ["experiment", *_call(params, b=True)], steps=(("reuse", params),),
                env={"RESNETLAB_CACHE": "{root}/cache"},
                writable=("experiments", "one", "two", "w.pt", "pets", "pets2", "cache", "cache2"))


def _call(p: dict[str, Any], b: bool, root: str = "{root}") -> list[str]:
    """Call A (or B, with the case's change) as arguments after `experiment`."""
    folder = "pets2" if b and p["kind"] == "data_copied" else "pets"
    data = "digits" if p["data"] == "digits" else f"folder:{root}/{folder}"
    out = "one" if (not b or p["same_out"]) else "two"
    argv = [f"{root}/reused.toml", "--scale", "small", "--data", data, "--iters", str(p["iters"]), "--set",
            "run.threads=1", "--set", "run.progress=false", "--set", "run.tensorboard=false",
            "--out", f"{root}/experiments/{out}"]
    if p["data"] == "folder":
        argv += ["--set", "data.pad=0"]
    if p["init"]:  # relative: from the folder the call runs in
        argv += ["--set", f"run.init={root}/two/w.pt" if b and p["kind"] == "init_copied" else "run.init=w.pt"]
    if b and p["kind"] == "field":
        argv += ["--set", f"{p['field']}={CHANGES[p['field']].replace('{root}', root)}"]
    return argv


# -- set-up: call A and the change -------------------------------------------------------------------------
@cache
def _checkpoints() -> list[Path]:
    """Two weights files for digits (one step of two seeds), made once per process."""
    runs = [trained(["--model", "resnet20", "--data", "digits", "--iters", "1", "--set", "model.depth=8", "--set",
                     f"run.seed={seed}", "--set", "run.progress=false", "--set", "run.tensorboard=false"])
            for seed in (0, 1)]
    return [next((run / "checkpoints").glob("step-*.pt")) for run in runs]


def setup(root: Path, step: tuple[str, dict[str, Any]]) -> None:
    _, p = step
    (root / "reused.toml").write_text(SUITE)
    (root / "one").mkdir()
    (root / "two").mkdir()
    weights = _checkpoints()
    if p["data"] == "folder":
        image_folder(root / "pets")
    if p["init"]:
        shutil.copy(weights[0], root / "one" / "w.pt" if p["kind"].startswith("init_relative") else root / "w.pt")
    relative = p["kind"].startswith("init_relative")
    a = _call(p, b=False, root=str(root))
    # the case's data cache, as `Case.env` sets it around call B
    with working_directory(root / "one" if relative else root), environ({"RESNETLAB_CACHE": str(root / "cache")}):
        rc, text = quiet_main(["experiment", *a])
    assert rc == 0, f"call A failed: {text[-300:]}"
    _change(root, p, weights, a)


def _change(root: Path, p: dict[str, Any], weights: list[Path], a: list[str]) -> None:
    kind = p["kind"]
    # the weights file replaced, copied, or (B names w.pt from the case's folder) the same or other weights there
    copies = {"init_replaced": (weights[1], root / "w.pt"), "init_copied": (root / "w.pt", root / "two" / "w.pt"),
              "init_relative_same": (weights[0], root / "w.pt"), "init_relative_other": (weights[1], root / "w.pt")}
    if kind in copies:
        shutil.copy(*copies[kind])
    elif kind == "data_changed":
        image = root / "pets" / "train" / "cat" / "0.png"
        stat = image.stat()
        other = (root / "pets" / "train" / "dog" / "0.png").read_bytes()
        image.write_bytes(other[: stat.st_size].ljust(stat.st_size, b"\0"))
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif kind == "data_touched":
        os.utime(root / "pets" / "train" / "cat" / "0.png")
    elif kind == "data_copied":
        shutil.copytree(root / "pets", root / "pets2")
    elif kind == "out_reused":
        shutil.rmtree(root / "experiments" / "one")
        again = [*a, "--set", f"{p['field']}={CHANGES[p['field']].replace('{root}', str(root))}"]
        with working_directory(root), environ({"RESNETLAB_CACHE": str(root / "cache")}):
            quiet_main(["experiment", *again])  # may be refused as invalid: then the --out is simply gone


# -- the judge ------------------------------------------------------------------------------------------------
def _reference(root: Path, argv: list[str]) -> tuple[str, Any]:
    """A fresh training of B's member config, alone: ("invalid", message), ("failed", message) or
    ("ok", (state, final))."""
    from resnetlab.errors import ResnetlabError
    from resnetlab.experiments.runner import plan
    from resnetlab.experiments.suite import load_suite
    from resnetlab.settings.overrides import parse_assignments
    from resnetlab.training.entry import train

    args = argv[1:]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    data = args[args.index("--data") + 1]
    iters = int(args[args.index("--iters") + 1])
    with working_directory(root), environ({"RESNETLAB_CACHE": str(root / "cache")}):
        try:
            run = plan(load_suite(str(root / "reused.toml")), root / "unused", data, iters=iters, scale="small",
                       settings=parse_assignments(sets, "--set"))
            cfg = run.config(run.suite.members[0], 0)
        except ResnetlabError as exc:
            return "invalid", str(exc)
        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-reference-")) / "run"
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                train(cfg, where, log=lambda _line: None)
        except ResnetlabError as exc:
            return "failed", str(exc)
    return "ok", _result(where)


def _result(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from resnetlab.weights.resolve import resolve

    final = json.loads((run / "summary.json").read_text())["final"]
    return {k: v.clone() for k, v in resolve(run).state.items()}, final


def after(ended: Ended) -> str | None:
    """B's outcome against a fresh training of its config made alone (see the module's text)."""
    argv, root, rc, stdout = ended.argv, ended.root, ended.rc, ended.stdout
    p = ended.case.steps[0][1]
    kind, what, out = p["kind"], f"{p['kind']} {p['field'] or ''}", "same --out" if p["same_out"] else "new --out"
    same_call = ["experiment", *_call(p, b=False, root=str(root))] == argv and kind != "init_relative_same"
    verdict, ref = _reference(root, argv)
    if rc == 2:
        if verdict == "invalid" or (p["same_out"] and not same_call) or (p["same_out"] and kind in CHANGED_FILES):
            return None
        return f"refused a valid call ({what}, {out})"
    if rc == 1:
        return None if verdict == "failed" else f"a member failed that trains alone ({what})"
    if verdict != "ok":
        return f"exit 0 where a fresh training is {verdict} ({what}): {str(ref)[:80]}"
    run = root / "experiments" / ("one" if p["same_out"] else "two") / "a" / "seed0"
    if not (run / "summary.json").exists():
        return f"no finished run at {run.relative_to(root)} after exit 0 ({kind})"
    reused = run.is_symlink() or "already done" in stdout or "the same training as" in stdout
    state, final = _result(run)
    if final != ref[1] or same_state(state, ref[0]):
        return f"{'reused another training' if reused else 'trained otherwise than alone'} ({what}, {out})"
    expected = kind in SAME_FILES or (kind == "field" and p["field"] in SESSION)
    if expected and not reused and not (p["same_out"] and not same_call):
        return f"the same computation trained again ({what})"
    return None


register(Family("reuse", reuse_cases, setup, after=after))

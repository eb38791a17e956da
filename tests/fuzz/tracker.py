"""The `tracker` family: the experiment trackers (MLflow, W&B offline, TensorBoard) of a tiny training with
generated settings and environments, or its `--resume` with trackers.json damaged; a training that exits 0 ends
as one without trackers, a tracker's failure is one line, nothing is written outside the case (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.common import (
    PROXIES,
    REPO,
    closed_port,
    environ,
    installed,
    store_template,
    template_dir,
    trained,
    wandb_env,
    working_directory,
)
from tests.fuzz.core import Case, Ended, Family, register
from tests.fuzz.loopback import server

_OUTSIDE: dict[str, Any] = {}  # what lay outside the case before the command, for `after`
TINY_TRAIN = ["train", "--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:8", "--iters", "2"]

TRACKER_VALUES = ["mlflow"] * 3 + ["wandb"] * 3 + ["mlflow,wandb", "wandb,mlflow", "tensorboard", "mlflow,mlflow",
                  "nope", "MLflow", "", "[]", "5", "[1,2]", "none", "mlflow,", ",", '["mlflow", 5]', '{"a": 1}',
                  "mlflow wandb", " wandb ", "wandb\x1b[31m", "ml\nflow", "x" * 1000, "wandb,tensorboard"]

TAG_VALUES = [None] * 4 + ["team=vision", "a=1,b=2", "a=1,a=2", "=x", "novalue", "a=b=c", "k=" + "v" * 6000,
              "k" * 300 + "=v", "k=\x1b[31mred", "k=line\nbreak", "k=\ttab", "ünï=cödé", '["a=1", 5]', "5", "[]",
              "k= spaced ", " =v", "a=1,,b=2", "k=" + "v" * 4999, "x=" + "é" * 100]

MLFLOW_URIS = {"store": "sqlite:///{root}/mlflow.db", "not a database": "sqlite:///{root}/garbage.db",
               "missing folder": "sqlite:///{root}/missing/deep/mlflow.db",
               "read-only folder": "sqlite:///{root}/ro/mlflow.db", "a folder": "sqlite:///{root}/adir",
               "below a file": "sqlite:///{root}/afile/mlflow.db", "file: of a file": "file://{root}/afile",
               "a file path": "{root}/afile",
               "closed port": "http://127.0.0.1:{closed}", "not an MLflow server": "http://127.0.0.1:{port}",
               "unknown scheme": "nope://nowhere", "postgresql, no driver": "postgresql://u:p@127.0.0.1:{closed}/db",
               "unset": None}

MLFLOW_WEIGHTS = ["store"] * 6 + [k for k in MLFLOW_URIS if k not in ("store", "unset", "closed port")] \
    + ["closed port", "unset"]  # the default store (./mlflow.db, created: ~10 s) and retries are the slow ones

WANDB_MODES = ["offline"] * 6 + ["dryrun", "disabled", "sometimes", "", "OFFLINE", " offline", "offline\n"]

WANDB_DIRS = {"unset": None, "normal": "{root}/wandb", "a file": "{root}/afile", "below a file": "{root}/afile/sub",
              "missing deep path": "{root}/w/x/y", "read-only": "{root}/ro"}

DAMAGES = ["none", "none", "not JSON", "empty", "a list", "nested deep", "mlflow run missing", "mlflow run_id a number",
           "mlflow a string", "mlflow without its URI", "mlflow URI a closed port", "mlflow URI not a database",
           "wandb id with a slash", "wandb id a number", "wandb id huge", "wandb dir a file", "wandb dir moved",
           "wandb project a list", "a folder", "a FIFO", "a link to a file", "unknown tracker"]


def tracker_cases() -> st.SearchStrategy[Case]:
    """A tiny training with generated tracker settings and environments, or `train --resume` of a run trained
    with MLflow and W&B whose trackers.json is damaged."""

    def build(resume: bool, tracker: str, tags: str | None, uri: str, mode: str, wdir: str, damage: str,
              cut_back: bool) -> Case:
        env = tracker_env() | {"MLFLOW_TRACKING_URI": MLFLOW_URIS[uri], "WANDB_MODE": mode,
                               "WANDB_DIR": WANDB_DIRS[wdir]}
        if resume:
            argv = ["train", "--resume", "{root}/prev"]
            params = {"resume": True, "damage": damage, "cut_back": cut_back,
                      "needs": [n for n in ("mlflow", "wandb") if installed(n)]}
        else:
            argv = [*TINY_TRAIN, "--set", f"run.tracker={tracker}", "--out", "{root}/out/run"]
            if tags is not None:
                argv[-2:-2] = ["--set", f"run.tracker_tags={tags}"]
            names = {n for n in ("mlflow", "wandb") if n in tracker}
            if any(not installed(n) for n in names):  # the package is absent: the one-line refusal is judged
                argv = [*TINY_TRAIN, "--set", "run.tracker=nope", "--out", "{root}/out/run"]
            params = {"resume": False, "needs": sorted(names)}
        return Case("tracker", argv, steps=(("tracker", params),), env=env, writable=TRACKER_WRITABLE)

    return st.builds(build, st.sampled_from([False, False, True]), st.sampled_from(TRACKER_VALUES),
                     st.sampled_from(TAG_VALUES), st.sampled_from(MLFLOW_WEIGHTS), st.sampled_from(WANDB_MODES),
                     st.sampled_from(["unset"] * 4 + sorted(WANDB_DIRS)), st.sampled_from(DAMAGES), st.booleans())


TRACKER_WRITABLE = ("out", "prev", "mlflow.db", "mlruns", "wandb", "wandb-home", "ro", "w", "missing", "cache",
                    "mlflow.db-journal")


def tracker_env() -> dict[str, str | None]:
    """What every tracker case sets: W&B offline, quiet and kept in the case (never online: its server is a
    closed loopback port, no key), no proxies, no experiment names from outside."""
    env: dict[str, str | None] = {k: None for k in PROXIES}
    env |= {k: None for k in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME",
                              "WANDB_NOTES", "WANDB_TAGS", "WANDB_RUN_GROUP", "MLFLOW_EXPERIMENT_NAME",
                              "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    return env | wandb_env("{root}/wandb-home", "{closed}") | {"RESNETLAB_CACHE": "{root}/cache"}


def _wandb_teardown() -> None:
    if "wandb" in sys.modules:
        with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            sys.modules["wandb"].teardown()


@cache
def reference_final() -> dict[str, Any]:
    """The final metrics of the tiny training without trackers (once per process)."""
    return json.loads((trained(TINY_TRAIN[1:]) / "summary.json").read_text())["final"]


@cache
def resume_template() -> Path:
    """A folder holding `prev` (the tiny training, run with MLflow and W&B where installed), its MLflow store
    (`mlflow.db`, `mlruns/`) and W&B's home (`wandb-home`): copied into a case and re-pointed there."""
    where = template_dir()
    names = [n for n in ("mlflow", "wandb") if installed(n)]
    env = {k: (v.replace("{root}", str(where)).replace("{closed}", str(closed_port())) if v else v)
           for k, v in tracker_env().items()}
    env |= {"WANDB_MODE": "offline", "WANDB_DIR": None, "MLFLOW_TRACKING_URI": f"sqlite:///{where / 'mlflow.db'}"}
    if "mlflow" in names:
        shutil.copy(store_template(), where / "mlflow.db")
    try:
        with working_directory(where), environ(env):
            trained([*TINY_TRAIN[1:], "--set", f"run.tracker={','.join(names) or '[]'}"], where / "prev")
    finally:
        _wandb_teardown()
    return where


def _copy_resume_template(root: Path, p: dict[str, Any]) -> None:
    """The resume template copied into the case, its paths re-pointed there, maybe cut back, its record damaged."""
    template = resume_template()
    for item in template.iterdir():
        if item.is_dir():
            shutil.copytree(item, root / item.name, symlinks=True)
        else:
            shutil.copy2(item, root / item.name)
    old, new = str(template), str(root)
    db = root / "mlflow.db"
    if db.exists():  # the store's paths (artifact locations) re-pointed into the case
        with contextlib.closing(sqlite3.connect(db)) as con:
            con.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
            con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
            con.execute("UPDATE tags SET value = replace(value, ?, ?)", (old, new))
            con.commit()
    state_file = root / "prev" / "trackers.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    moved = json.loads(json.dumps(state).replace(old, new))
    if p["cut_back"]:  # as if killed after step 1: resumed for real, the trackers get metrics
        (root / "prev" / "checkpoints" / "step-00000002.pt").unlink()
        (root / "prev" / "summary.json").unlink()
    _damage_record(root, state_file, state, moved, p["damage"])


def _damage_record(root: Path, state_file: Path, state: dict[str, Any], moved: dict[str, Any], damage: str) -> None:
    """trackers.json as `damage` says: other text, a folder, a FIFO (read as a file, it blocks until a writer
    comes), a link, or an entry's field changed (value None: deleted; field None: the whole entry)."""
    texts = {"not JSON": "{not json", "empty": "", "a list": "[1, 2]",
             "nested deep": '{"mlflow": ' * 50_000 + "1" + "}" * 50_000,
             "wandb dir moved": json.dumps(state)}  # a run directory copied from elsewhere: the old place named
    things = {"a folder": state_file.mkdir, "a FIFO": lambda: os.mkfifo(state_file),
              "a link to a file": lambda: state_file.symlink_to(root / "afile")}
    edits = {"mlflow run missing": ("mlflow", "run_id", "0" * 32), "mlflow run_id a number": ("mlflow", "run_id", 5),
             "mlflow without its URI": ("mlflow", "tracking_uri", None),
             "mlflow URI a closed port": ("mlflow", "tracking_uri", f"http://127.0.0.1:{closed_port()}"),
             "mlflow URI not a database": ("mlflow", "tracking_uri", f"sqlite:///{root / 'garbage.db'}"),
             "wandb id with a slash": ("wandb", "id", "../../escape"), "wandb id a number": ("wandb", "id", 5),
             "wandb id huge": ("wandb", "id", "x" * 5000), "wandb dir a file": ("wandb", "dir", str(root / "afile")),
             "wandb project a list": ("wandb", "project", ["a"]), "mlflow a string": ("mlflow", None, "x"),
             "unknown tracker": ("nope", None, {"id": 1})}
    if damage in things:
        state_file.unlink(missing_ok=True)
        things[damage]()
        return
    if damage in edits:
        tracker, key, value = edits[damage]
        entry = moved[tracker] if isinstance(moved.get(tracker), dict) else {}
        if key is None:
            entry = value
        elif value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
        moved[tracker] = entry
    state_file.write_text(texts[damage] if damage in texts else json.dumps(moved))


def _outside() -> dict[str, Any]:
    """What lies where a tracker would write outside the case: the repository's top level, the home
    directory's W&B and MLflow places, the tracker template's files."""
    seen: dict[str, Any] = {"repo": sorted(p.name for p in REPO.iterdir())}
    home = Path.home()
    for rel in (".config/wandb", ".cache/wandb", ".local/share/wandb", "mlruns", "mlflow.db", ".netrc", "wandb",
                ".cache/resnetlab"):
        seen[rel] = (home / rel).exists()
    if resume_template.cache_info().currsize:  # made already (not made here)
        template = resume_template()
        seen["template"] = sorted(str(p.relative_to(template)) for p in template.rglob("*"))
    return seen


@contextlib.contextmanager
def around(case: Case, root: Path) -> Iterator[None]:
    """Inside the case's environment, around the command: the ports filled in, W&B's process-wide state ended
    before and after, the places outside the case recorded."""
    srv = server()
    srv.reset(["404"])  # the "HTTP server that is not MLflow"
    for key, value in list(os.environ.items()):  # the ports in the case's environment
        if "{closed}" in value or "{port}" in value:
            os.environ[key] = value.replace("{closed}", str(closed_port())).replace("{port}", str(srv.port))
    _wandb_teardown()
    _OUTSIDE.clear()
    _OUTSIDE.update(_outside())
    try:
        yield
    finally:
        _wandb_teardown()
        srv.reset(["good"])


MLFLOW_INFO = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO ")  # MLflow's own notes (a new store's tables)


def after(ended: Ended) -> str | None:
    """The family's checks, once the command has ended and passed the common judge."""
    root, rc, stdout, stderr, p = ended.root, ended.rc, ended.stdout, ended.stderr, ended.case.steps[0][1]
    now = _outside()
    for key, was in _OUTSIDE.items():
        if now.get(key) != was:
            new = sorted(set(now.get(key) or []) - set(was or [])) if isinstance(was, list) else key
            return f"written outside the case directory: {key}: {str(new)[:120]}"
    run = root / ("prev" if p["resume"] else "out/run")
    log: list[str] = []
    with contextlib.suppress(OSError):
        log = (run / "log.txt").read_text(errors="replace").splitlines()
    for where, lines in (("stdout", stdout.splitlines()), ("log.txt", log)):
        if any("Traceback" in ln for ln in lines):
            return f"traceback in {where}"
    if rc != 0:
        return None
    for name in ("mlflow", "wandb", "tensorboard"):
        warned = [ln for ln in log if ln.startswith(f"tracker {name} failed")]
        if len(warned) > 1:
            return f"tracker {name}'s failure took {len(warned)} lines in log.txt"
    noise = [ln for ln in stderr.splitlines() if ln.strip() and not MLFLOW_INFO.match(ln)]
    if noise:
        return f"{len(noise)} line(s) on stderr from a training that exits 0: {noise[0][:120]!r}"
    summary = run / "summary.json"
    if not summary.is_file():
        return "exit 0 without summary.json"
    final = json.loads(summary.read_text()).get("final")
    want = p.get("reference") or reference_final()
    if final != want:
        return f"final metrics differ from the same training without trackers: {final} != {want}"
    return None


def setup(root: Path, step: tuple[str, dict[str, Any]]) -> None:
    """The case's one set-up step: the reference metrics (made before the case's clock starts) and its files."""
    import numpy as np

    p = step[1]
    if p["resume"]:
        p["reference"] = json.loads((resume_template() / "prev" / "summary.json").read_text())["final"]
    else:
        reference_final()
    (root / "afile").write_text("not a folder\n")
    (root / "garbage.db").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "adir").mkdir()
    if p["resume"]:
        _copy_resume_template(root, p)
    elif installed("mlflow") and "mlflow" in p["needs"]:
        shutil.copy(store_template(), root / "mlflow.db")
    (root / "ro").mkdir()
    if installed("mlflow") and "mlflow" in p["needs"]:
        shutil.copy(store_template(), root / "ro" / "mlflow.db")
    os.chmod(root / "ro", 0o500)


register(Family("tracker", tracker_cases, setup, around, after))

"""Reliability: random inputs to the parsers and readers, kills at chosen moments, divergence, stale locks.

The property tests feed random input to every reader of untrusted bytes or text and require either success
or the documented one-line error type. The kill tests run training in a subprocess through a small wrapper
that SIGKILLs the process at an exact moment (half-way through writing a checkpoint, in the middle of an
evaluation), resume with the normal CLI and compare the final weights bit for bit with an uninterrupted run.
Three tests here pinned bugs that were then fixed (huge ints in float fields, ragged CIFAR labels,
a kill between the step checkpoint and best.pt).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from resnetlab.cli import main
from resnetlab.data import DataOptions, load_data
from resnetlab.errors import EXIT_DIVERGED, CheckpointError, ConfigError, DataError, ResnetlabError
from resnetlab.runs.directory import RunDir
from resnetlab.settings.config import build_config
from resnetlab.settings.overrides import parse_assignments, parse_value
from resnetlab.weights.checkpoint import MAGIC, load_checkpoint, save_checkpoint, trained_state

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line_naming(exc: Exception, path: Path | str) -> None:
    text = str(exc)
    assert "\n" not in text, text
    assert str(path) in text, text


# ---- (a) overrides and config ---------------------------------------------------------------------------
FIELDS = [
    "data.source", "data.normalize", "data.pad", "data.flip", "data.val_split", "data.workers", "data.ten_crop",
    "data.crop_size", "data.scale", "data.test_resize", "data.cache_dir", "optim.batch_size", "optim.lr",
    "optim.momentum", "optim.weight_decay", "optim.nesterov", "schedule.unit", "schedule.total",
    "schedule.milestones", "schedule.gamma", "schedule.epochs", "schedule.iters", "warmup.enabled", "warmup.lr",
    "warmup.iters", "warmup.until_error", "run.seed", "run.device", "run.deterministic", "run.threads",
    "run.eval_every", "run.checkpoint_every", "run.keep_checkpoints", "run.channels_last", "run.amp",
    "run.tensorboard", "run.progress", "model.name", "model.shortcut",
]
# |ints| below 1e300: an int above the float range is covered by test_huge_int_for_a_float_field
SCALARS = (st.none() | st.booleans() | st.integers(-10**300, 10**300) | st.floats(allow_nan=True)
           | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
KEYS = st.sampled_from(FIELDS) | st.text(max_size=20) | st.sampled_from(["optim", "optim.", ".lr", "model."])


@PROPS
@given(st.text(max_size=60))
def test_parse_value_never_raises(text: str) -> None:
    value = parse_value(text)
    json.dumps(value)  # plain data only: None, bool, numbers, strings, lists, dicts


@PROPS
@given(st.lists(st.text(max_size=30), max_size=5))
def test_parse_assignments_raises_only_config_error(items: list[str]) -> None:
    try:
        out = parse_assignments(items, "--set")
    except ConfigError as exc:
        assert "\n" not in str(exc) and "KEY=VALUE" in str(exc)
        assert any("=" not in item or not item.partition("=")[0].strip() for item in items)
        return
    assert set(out) == {item.partition("=")[0].strip() for item in items}


@PROPS
@given(st.dictionaries(KEYS, VALUES, max_size=4))
def test_build_config_with_random_overrides_raises_only_config_error(overrides: dict) -> None:
    try:
        cfg = build_config(overrides=overrides)
    except ResnetlabError as exc:
        assert isinstance(exc, ConfigError)
        assert "\n" not in str(exc)
        return
    for key, value in overrides.items():  # accepted: the value is stored (floats take ints)
        section, _, name = key.partition(".")
        got = cfg.model.to_dict()[name] if section == "model" else getattr(getattr(cfg, section), name)
        assert got == value or (got != got and value != value)


@PROPS
@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.text(max_size=15)), max_size=4))
def test_command_line_overrides_raise_only_config_error(pairs: list[tuple[str, str]]) -> None:
    try:
        build_config(overrides=parse_assignments([f"{k}={v}" for k, v in pairs], "--set"))
    except ResnetlabError as exc:
        assert isinstance(exc, ConfigError) and "\n" not in str(exc)


NUMERIC = {  # field: strategy of valid values
    "optim.batch_size": st.integers(1, 10**6), "optim.lr": st.floats(1e-12, 1e3),
    "optim.momentum": st.floats(0, 1), "optim.weight_decay": st.floats(0, 1), "schedule.gamma": st.floats(0, 1),
    "warmup.lr": st.floats(1e-12, 10), "warmup.until_error": st.floats(1e-9, 1), "warmup.iters": st.integers(0, 10**9),
    "run.seed": st.integers(0, 2**63), "run.threads": st.integers(0, 512), "run.eval_every": st.integers(1, 10**6),
    "run.checkpoint_every": st.integers(0, 10**6), "run.keep_checkpoints": st.integers(1, 100),
    "data.pad": st.integers(0, 64), "data.val_split": st.integers(0, 10**6), "schedule.iters": st.integers(1, 10**9),
    "schedule.epochs": st.floats(1e-6, 1e6),
}


@PROPS
@given(st.sampled_from(sorted(NUMERIC)).flatmap(lambda k: st.tuples(st.just(k), NUMERIC[k])))
def test_valid_numeric_values_round_trip_through_the_command_line(item: tuple[str, float]) -> None:
    key, value = item
    assume(not (isinstance(value, float) and value == 0 and key in ("optim.lr", "warmup.lr")))
    cfg = build_config(overrides=parse_assignments([f"{key}={value!r}"], "--set"))
    section, name = key.split(".")
    got = getattr(getattr(cfg, section), name)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("item, want", [
    ("data.normalize=none", "none"), ("run.amp=none", "none"),  # documented values, parsed as null and refused
    ("run.init=true", "true"), ("data.cache_dir=false", "false"), ("run.init=12", "12"),  # files of those names
    ("data.source=folder:/data/a,b", "folder:/data/a,b"),  # a path with a comma, not a list
    ("run.init=none", None), ("data.cache_dir=null", None), ("warmup.enabled=true", True),  # as before
    ("run.channels_last=false", False), ("run.tracker=none", []), ("optim.lr=1", 1.0),
])
def test_a_setting_that_takes_text_takes_the_text_of_a_word(item: str, want: object) -> None:
    """Issue 30: `--set data.normalize=none` (a documented value) was parsed as null and refused, as was
    `run.amp=none`; `true`, `12` or `a,b` given to a setting of text was a bool, a number or a list. The word
    means what the setting can take: null, a bool or a number where the setting takes one (`run.init=none` is
    unset), else its text."""
    key = item.partition("=")[0]
    section, name = key.split(".")
    cfg = build_config(overrides=parse_assignments([item], "--set"))
    got = getattr(getattr(cfg, section), name)
    assert got == want and type(got) is type(want)


def test_huge_int_for_a_float_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        build_config(overrides=parse_assignments(["optim.lr=1" + "0" * 400], "--set"))


# ---- (b) dataset readers on random bytes ----------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("random-data")


def fresh(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


def expect_data_error_or_success(spec: str, where: Path, cache: Path) -> None:
    try:
        load_data(spec, DataOptions(cache_dir=str(cache)))
    except DataError as exc:
        one_line_naming(exc, where)
    # any other exception type fails the test with its traceback


def png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    rgb = np.random.default_rng(seed).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@FEW
@given(st.lists(st.tuples(st.sampled_from([".png", ".jpg", ".jpeg", ".PNG"]), st.binary(max_size=300)),
                min_size=1, max_size=4), st.integers(0, 3), st.booleans())
def test_image_folder_with_random_byte_images(scratch: Path, files: list[tuple[str, bytes]], good_first: int,
                                              cut_png: bool) -> None:
    root = fresh(scratch) / "pets"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(good_first):  # some valid images first, so the random ones are decoded too
                (folder / f"0{i}.png").write_bytes(png(i))
    for i, (suffix, blob) in enumerate(files):
        if cut_png:  # a real PNG cut short, or with random bytes after its header
            blob = png(i)[: len(blob) % 80] + blob
        (root / ("train", "test")[i % 2] / ("a", "b")[i // 2 % 2] / f"9{i}{suffix}").write_bytes(blob)
    expect_data_error_or_success(f"folder:{root}", root, root.parent / "cache")


CIFAR_MEMBERS = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def write_cifar(root: Path) -> Path:
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_MEMBERS[:-1]:
        blob = {b"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8), b"labels": [1, 2]}
        (batches / name).write_bytes(pickle.dumps(blob, protocol=2))
    (batches / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    return batches


@FEW
@given(st.sampled_from(CIFAR_MEMBERS), st.binary(max_size=400), st.booleans())
def test_cifar_member_of_random_bytes(scratch: Path, member: str, blob: bytes, pickle_prefix: bool) -> None:
    batches = write_cifar(fresh(scratch))
    if pickle_prefix:  # looks like a pickle for a few opcodes
        blob = b"\x80\x02}q\x00(U\x04data" + blob
    (batches / member).write_bytes(blob)
    expect_data_error_or_success(f"cifar10:{batches}", batches / member, batches.parent / "cache")


@FEW
@given(st.binary(max_size=600), st.sampled_from(["plain", "gzip", "tar-prefix"]), st.sampled_from(["cifar10",
                                                                                                    "folder"]))
def test_whole_tarball_of_random_bytes(scratch: Path, blob: bytes, how: str, scheme: str) -> None:
    if how == "gzip":
        blob = gzip.compress(blob)
    elif how == "tar-prefix":  # a valid tar header followed by random bytes
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1" if scheme == "cifar10" else "train/a/0.png")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        blob = gzip.compress(buf.getvalue()[: 512 + len(blob) // 2])
    archive = fresh(scratch) / "data.tar.gz"
    archive.write_bytes(blob)
    expect_data_error_or_success(f"{scheme}:{archive}", archive, archive.parent / "cache")


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=8) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.sampled_from([b"data", b"labels", "data", "labels", b"label_names"]) | st.binary(max_size=4),
                      inner, max_size=3),
    max_leaves=10,
)
# labels with a valid data array: flat lists only (ragged nested lists: test_ragged_cifar_labels_are_a_data_error)
FLAT_LABELS = st.lists(st.integers() | st.floats() | st.none() | st.binary(max_size=3), max_size=3) | PLAIN.filter(
    lambda v: not isinstance(v, (list, tuple)))


@FEW
@given(st.sampled_from(["test_batch", "batches.meta"]), PLAIN, st.booleans(), FLAT_LABELS, st.integers(0, 2))
def test_cifar_pickles_of_random_plain_data(scratch: Path, member: str, obj: object, with_array: bool,
                                            labels: object, protocol: int) -> None:
    if with_array and member == "test_batch":
        obj = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": labels}
    batches = write_cifar(fresh(scratch))
    (batches / member).write_bytes(pickle.dumps(obj, protocol=protocol))
    expect_data_error_or_success(f"cifar10:{batches}", batches / member, batches.parent / "cache")


def test_ragged_cifar_labels_are_a_data_error(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path)
    blob = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [[1], [2, 3]]}
    (batches / "test_batch").write_bytes(pickle.dumps(blob, protocol=2))
    with pytest.raises(DataError, match="test_batch"):
        load_data(f"cifar10:{batches}", DataOptions(cache_dir=str(tmp_path / "cache")))


# ---- (c) checkpoints on random bytes ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "real.pt"
    torch.manual_seed(0)
    save_checkpoint(path, {"model": {"w": torch.randn(64, 3, 3, 3)}, "spec": {}, "norm": {}, "config": {},
                           "progress": {"step": 7}})
    assert load_checkpoint(path)["progress"]["step"] == 7
    return path.read_bytes()


def expect_checkpoint_error(scratch: Path, blob: bytes) -> None:
    path = fresh(scratch) / "x.pt"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    one_line_naming(info.value, path)


def with_trailer(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest() + MAGIC


@PROPS
@given(st.binary(max_size=2000), st.booleans())
def test_checkpoint_of_random_bytes(scratch: Path, blob: bytes, valid_trailer: bool) -> None:
    expect_checkpoint_error(scratch, with_trailer(blob) if valid_trailer else blob)


@PROPS
@given(st.data())
def test_checkpoint_truncated_anywhere(scratch: Path, real_checkpoint: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(real_checkpoint) - 1))
    expect_checkpoint_error(scratch, real_checkpoint[:cut])


@PROPS
@given(st.data())
def test_checkpoint_body_truncated_or_patched_with_a_valid_checksum(scratch: Path, real_checkpoint: bytes,
                                                                   data: st.DataObject) -> None:
    """The checksum passes, so torch.load itself meets the damage (as a file written by a buggy writer)."""
    body = real_checkpoint[: -len(MAGIC) - 32]
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    else:
        at = data.draw(st.integers(0, 4000))  # the zip headers and the pickle sit at the start
        patch = data.draw(st.binary(min_size=1, max_size=16))
        body = body[:at] + patch + body[at + len(patch):]
        assume(body != real_checkpoint[: -len(MAGIC) - 32])
    path = fresh(scratch) / "x.pt"
    path.write_bytes(with_trailer(body))
    try:
        payload = load_checkpoint(path)
    except CheckpointError as exc:
        one_line_naming(exc, path)
        return
    assert isinstance(payload, dict)  # a patch in padding or tensor bytes can still load


# ---- kills at chosen moments ----------------------------------------------------------------------------
WRAPPER = r'''
import os, signal, sys
import resnetlab.weights.checkpoint as ckpt
import resnetlab.training.evaluation as evaluation
from resnetlab.cli import main

mode, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
seen = [0]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class HalfWriter:
    """Writes half of the first chunk, makes it durable, then the process dies."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        die()

    def __getattr__(self, name):
        return getattr(self.f, name)


if mode in ("write-step", "write-best"):
    prefix = ".step-" if mode == "write-step" else ".best.pt.tmp-"
    real_open = open

    def patched_open(file, mode_="r", *args, **kwargs):
        f = real_open(file, mode_, *args, **kwargs)
        if "w" in mode_ and os.path.basename(str(file)).startswith(prefix):
            seen[0] += 1
            if seen[0] == nth:
                return HalfWriter(f)
        return f

    ckpt.open = patched_open  # checkpoint.py looks `open` up in its module globals first
elif mode == "eval":
    real_evaluate = evaluation.evaluate

    def patched_evaluate(model, *args, **kwargs):
        seen[0] += 1
        if seen[0] == nth:
            batches = [0]

            def hook(*_):
                batches[0] += 1
                if batches[0] == 3:  # third test batch: in the middle of the evaluation
                    die()

            model.register_forward_hook(hook)
        return real_evaluate(model, *args, **kwargs)

    evaluation.evaluate = patched_evaluate  # the evaluations of a metrics row look it up there
sys.exit(main(argv))
'''

RECIPE = ["train", "--model", "preact_resnet20", "--data", "digits", "--set", "run.deterministic=true",
          "--set", "run.threads=1", "--set", "run.checkpoint_every=3", "--set", "optim.batch_size=32"]
ITERS = 60  # digits: 44 steps per epoch, so one evaluation at 44 and one at 60


def popen(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def temp_names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name)


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return trained_state(run / "checkpoints" / f"step-{step:08d}.pt")


def run_scenarios(base: Path, names: tuple[str, ...]) -> dict[str, dict]:
    """Training subprocesses run concurrently, in two phases, to share the CPU cores.

    Phase 1: the reference run, runs killed from inside by the wrapper, one killed from outside once it
    has a checkpoint, and a one-epoch run to make diverge. Phase 2: every one of them resumed.
    """
    wrapper = base / "kill_wrapper.py"
    wrapper.write_text(WRAPPER)
    py = sys.executable
    runs = {name: base / name for name in ("reference", "write-step", "write-best", "eval", "lock", "diverge")}
    commands = {
        "reference": [py, "-m", "resnetlab", *RECIPE, "--iters", str(ITERS), "--out", str(runs["reference"])],
        "write-step": [py, str(wrapper), "write-step", "5", *RECIPE, "--iters", str(ITERS),
                     "--out", str(runs["write-step"])],
        # 44 iterations: best.pt is written last, after the final step checkpoint
        "write-best": [py, str(wrapper), "write-best", "1", *RECIPE, "--iters", "44",
                     "--out", str(runs["write-best"])],
        "eval": [py, str(wrapper), "eval", "1", *RECIPE, "--iters", str(ITERS), "--out", str(runs["eval"])],
        "lock": [py, "-m", "resnetlab", *RECIPE, "--iters", str(ITERS), "--out", str(runs["lock"])],
        "diverge": [py, "-m", "resnetlab", *RECIPE, "--iters", "44", "--out", str(runs["diverge"])],
    }
    procs = {name: popen(commands[name]) for name in names}
    result: dict[str, dict] = {name: {"run": runs[name]} for name in names}
    deadline = time.time() + 300
    while "lock" in names and not any((runs["lock"] / "checkpoints").glob("step-*.pt")) \
            and time.time() < deadline:
        time.sleep(0.1)
    if "lock" in names:
        procs["lock"].send_signal(signal.SIGKILL)
        result["lock"]["lock_holder"] = (runs["lock"] / ".lock").read_text()
        result["lock"]["dead_pid"] = procs["lock"].pid
    for name, proc in procs.items():
        code, out, err = finish(proc)
        result[name].update(first_code=code, first_err=err)
        result[name]["temps_after_kill"] = temp_names(runs[name]) if runs[name].exists() else []
    if "diverge" in names:
        make_diverge(runs["diverge"], result["diverge"])
    resumed = {}
    for name in names:
        if name != "reference":
            resumed[name] = (time.perf_counter(), popen([py, "-m", "resnetlab", "train", "--resume", str(runs[name])]))
    for name, (t0, proc) in resumed.items():
        code, out, err = finish(proc)
        result[name].update(code=code, out=out, err=err, resume_s=time.perf_counter() - t0,
                            temps=temp_names(runs[name]))
    result["litter"] = [p.name for p in base.iterdir() if ".tmp" in p.name]
    return result


def make_diverge(run: Path, record: dict) -> None:
    best = run / "checkpoints" / "best.pt"
    record["best_before"] = best.read_bytes() if best.exists() else b""
    cfg_path = run / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["optim"]["lr"], cfg["schedule"]["iters"] = 1e30, 88  # a second epoch at an absurd learning rate
    # a run from before training keys were recorded: nothing to hold the edit against (a keyed run's resume
    # refuses a config.json that no longer gives the training it started)
    cfg["resolved"].pop("key")
    cfg_path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Default run: the reference, a kill mid checkpoint write and a kill mid evaluation (about 30 s)."""
    return run_scenarios(tmp_path_factory.mktemp("kills"), ("reference", "write-step", "eval"))


@pytest.fixture(scope="module")
def slow_scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Slow run: a kill mid best.pt write, a stale lock, divergence on resume."""
    return run_scenarios(tmp_path_factory.mktemp("kills-slow"), ("write-best", "lock", "diverge"))


@pytest.mark.parametrize("name", ["write-step", "eval"])
def test_kill_at_a_chosen_moment_then_resume_is_bit_identical(scenarios: dict, name: str) -> None:
    s = scenarios[name]
    assert s["first_code"] == -signal.SIGKILL, s["first_err"]  # the wrapper did kill it
    assert s["code"] == 0, s["err"]
    assert "resuming" in s["out"]
    ref, got = weights(scenarios["reference"]["run"], ITERS), weights(s["run"], ITERS)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    steps = [json.loads(line)["step"] for line in (s["run"] / "metrics.jsonl").read_text().splitlines()]
    assert steps == [44, ITERS]  # no row lost or duplicated
    assert s["temps"] == [], s["temps"]  # the resumed run removed what the killed one left
    assert not scenarios["litter"]


def test_a_resumed_run_removes_the_temporaries_a_kill_left_anywhere_in_it(tmp_path: Path) -> None:
    """A kill in the middle of writing the figure (or metrics, summary, config) left `.curves.png.tmp-PID-X.png`
    in the run directory for good: only checkpoints/ was swept (found by the slow kill campaign, seed 1)."""
    run = tmp_path / "run"
    assert main([*RECIPE, "--iters", "6", "--out", str(run)]) == 0
    stale = [run / ".curves.png.tmp-99-0a0b0c0d.png", run / ".metrics.jsonl.tmp-99-0e0f0a0b.jsonl",
             run / "checkpoints" / ".step-00000003.pt.tmp-99-01020304.pt"]
    for path in stale:
        path.write_bytes(b"half")
    keep = run / "notes.tmp-by-hand.txt"  # not a resnetlab temporary (no leading dot): left alone
    keep.write_text("mine")
    assert main(["train", "--resume", str(run)]) == 0
    assert not any(path.exists() for path in stale) and keep.read_text() == "mine"


def test_a_metrics_line_that_is_not_utf8_is_dropped_like_a_line_a_crash_cut(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Issue 30: a byte that is not UTF-8 in metrics.jsonl (a bad sector, an editor's encoding) made `--resume`
    and every reader of the rows a UnicodeDecodeError traceback. Such a line is dropped, as a malformed line
    is (`RunDir.read_metrics`), and the resume rewrites the file without it."""
    run = tmp_path / "run"
    assert main([*RECIPE, "--iters", "6", "--out", str(run)]) == 0
    rows = RunDir(run).read_metrics()
    assert [r["step"] for r in rows] == [6]
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 6, "test_error": 0.5, "note": "\xff\xfe"}\n\x80\n')
    assert RunDir(run).read_metrics() == rows
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_bytes().decode("utf-8").splitlines() == [json.dumps(rows[0])]


def test_kill_mid_checkpoint_write_leaves_a_partial_temp_file_and_the_old_checkpoints(scenarios: dict) -> None:
    s = scenarios["write-step"]
    (temp,) = s["temps_after_kill"]
    assert temp.startswith("checkpoints/.step-00000015.pt.tmp-")  # the fifth rolling checkpoint, mid-write
    assert s["resume_s"] < 120
    assert "from step-00000012.pt" in s["out"]  # resumed from the newest complete one


def test_kill_mid_evaluation_resumes_from_the_last_rolling_checkpoint(scenarios: dict) -> None:
    s = scenarios["eval"]
    assert s["temps_after_kill"] == []
    assert "from step-00000042.pt" in s["out"]


@pytest.mark.slow
def test_kill_mid_best_write_keeps_the_run_resumable(slow_scenarios: dict) -> None:
    s = slow_scenarios["write-best"]
    assert s["first_code"] == -signal.SIGKILL
    assert any(t.startswith("checkpoints/.best.pt.tmp-") for t in s["temps_after_kill"])
    assert s["code"] == 0, s["err"]
    assert load_checkpoint(s["run"] / "checkpoints" / "step-00000044.pt")["progress"]["step"] == 44


@pytest.mark.slow
def test_kill_mid_best_write_does_not_lose_best_pt(slow_scenarios: dict) -> None:
    s = slow_scenarios["write-best"]
    summary = json.loads((s["run"] / "summary.json").read_text())
    assert summary["best"]["step"] == 44
    assert load_checkpoint(s["run"] / "checkpoints" / "best.pt")["progress"]["step"] == 44


@pytest.mark.slow
def test_lock_of_a_sigkilled_process_does_not_block_resume(slow_scenarios: dict) -> None:
    s = slow_scenarios["lock"]
    assert s["first_code"] == -signal.SIGKILL
    assert s["lock_holder"] == str(s["dead_pid"])  # the lock file still names the dead process
    assert s["code"] == 0, s["err"]
    assert "in use" not in s["err"] and "resuming" in s["out"]
    assert json.loads((s["run"] / "summary.json").read_text())["steps"] == ITERS


@pytest.mark.slow
def test_divergence_on_resume_does_not_overwrite_best(slow_scenarios: dict) -> None:
    s = slow_scenarios["diverge"]
    assert s["first_code"] == 0 and s["best_before"]
    assert s["code"] == EXIT_DIVERGED, s["err"]  # recorded, and not a success
    summary = json.loads((s["run"] / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged"] and summary["steps"] < 88
    assert (s["run"] / "checkpoints" / "best.pt").read_bytes() == s["best_before"]
    assert summary["best"]["step"] == 44


# ---- the campaign --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_campaign_50_kills(tmp_path: Path) -> None:
    out = tmp_path / "campaign.json"
    script = Path(__file__).resolve().parents[1] / "tools" / "kill_campaign.py"
    proc = subprocess.run([sys.executable, str(script), "--kills", "50", "--seed", "1", "--out", str(out),
                           "--workdir", str(tmp_path / "runs")], capture_output=True, text=True, env=ENV,
                          timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["kills"] >= 50 and result["runs_identical"] == result["runs"]
    assert not result["corrupt_checkpoints_found"] and result["leftover_temp_files_in_runs"] == 0


def test_one_line_never_raises_and_names_what_says_nothing() -> None:
    """Thirteen spellings of "the first line of an exception" became one (issue 32); nine of them raised
    IndexError on an empty message, as MemoryError() has."""
    from resnetlab.errors import one_line

    class Loud(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no words")

    assert one_line(MemoryError()) == "MemoryError"
    assert one_line(Loud()) == "Loud"
    assert one_line(ValueError("\n\n  first   line \nsecond")) == "first line"
    assert one_line(RuntimeError("x" * 500), 20) == "x" * 17 + "..."
    assert one_line("") == ""


def test_the_data_section_is_the_data_options_and_the_source() -> None:
    """DataConfig is written out (editors and type checkers see its fields); it must still be DataOptions' fields,
    types and defaults, plus the source (issue 32: it was made by make_dataclass at import time)."""
    import dataclasses
    import typing

    from resnetlab.data import DataOptions
    from resnetlab.settings.config import DataConfig

    ours, theirs = dataclasses.fields(DataConfig), dataclasses.fields(DataOptions)
    assert [f.name for f in ours] == ["source", *(f.name for f in theirs)]
    hints, want = typing.get_type_hints(DataConfig), typing.get_type_hints(DataOptions)
    assert all(hints[f.name] == want[f.name] for f in theirs)
    made, default = DataConfig(), DataOptions()
    assert all(getattr(made, f.name) == (list(v) if isinstance(v := getattr(default, f.name), tuple) else v)
               for f in theirs)
    assert made.options() == default

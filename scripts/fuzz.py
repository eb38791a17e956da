"""A fuzzer of hostile input (issue 14): what a careless or hostile user could hand the `resnetlab` command.

Hypothesis generates six families of cases; each runs in-process through `resnetlab.cli.main(argv)` and must
end the way every bad input should:

- exit 0, or exit 2 with exactly one line `resnetlab: error: ...` on stderr (exit 1 only for a suite whose
  members failed, with its one line); never a Python exception escaping `main` (a traceback);
- within a time bound (a FIFO or device read forever, an absurd net built until the process was killed);
- leaving no half-written output: no temporary file (`.NAME.tmp...`) in the case's directory afterwards.

Families: `args` (argument lists of every command, with hostile numbers and paths), `set` (`train --set
KEY=VALUE` over every config field), `config` (a run's config.json replaced by another JSON document),
`summary` (a run's summary.json and metrics.jsonl replaced), `checkpoint` (a torch-saved payload of
generated shape given to eval, predict, export and train --init) and `suite` (a generated suite TOML).

    python scripts/fuzz.py --cases 5000 --out results/fuzz/campaign.json   # the campaign, by family
    pytest tests/test_fuzz.py                                               # a few hundred cases in CI

The campaign does not stop at the first finding: it runs every case and writes each distinct finding (family,
kind, the exception or message) with the first argument list that showed it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

TIME_BOUND_S = 120.0  # a case that takes longer is a finding (a hang or an unbounded allocation)
TINY = ["--model", "resnet20", "--set", "model.depth=8", "--data", "synthetic:8", "--iters", "1"]
FAMILIES = ("args", "set", "config", "summary", "checkpoint", "suite")

# -- values ----------------------------------------------------------------------------------------------
NUMBERS = ["0", "-1", "-3", "1", "2", "7", "1e9", "1e400", "-1e400", "nan", "inf", "-inf", "", "1.5", "-0.5",
           "999999999999999999999", "true", "false", "[1, 2]", "[]", "{}", "x", "'", "\"", "None", "0x10",
           "1_000", " 3 ", "١٢"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _paths(root: Path) -> dict[str, str]:
    """Hostile paths, made once per case directory."""
    (root / "dir").mkdir(exist_ok=True)
    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(os.urandom(257))
    (root / "text.toml").write_text("this is = not [toml\n")
    (root / "doc.json").write_text('{"model": 5}')
    fifo = root / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    loop = root / "loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    return {"missing": str(root / "missing"), "dir": str(root / "dir"), "empty": str(root / "empty.pt"),
            "garbage": str(root / "garbage.pt"), "text": str(root / "text.toml"), "json": str(root / "doc.json"),
            "fifo": str(fifo), "loop": str(loop), "devnull": "/dev/null", "devzero": "/dev/zero", "dot": ".",
            "blank": "", "long": str(root / ("a" * 300)), "deep": str(root / "dir" / "x" / "y" / "z.png")}


PATH_KEYS = ["missing", "dir", "empty", "garbage", "text", "json", "fifo", "loop", "devnull", "devzero", "dot",
             "blank", "long", "deep"]


# -- cases -----------------------------------------------------------------------------------------------
@dataclass
class Case:
    family: str
    argv: list[str]
    files: dict[str, Any] = field(default_factory=dict)  # relative path -> JSON value, bytes or torch payload

    def render(self, root: Path) -> list[str]:
        """The argument list with {NAME} placeholders replaced by paths under `root`."""
        paths = _paths(root) | {"root": str(root)}
        return [re.sub(r"\{(\w+)\}", lambda m: paths.get(m.group(1), m.group(0)), a) for a in self.argv]


def _path_arg() -> st.SearchStrategy[str]:
    return st.sampled_from([f"{{{k}}}" for k in PATH_KEYS])


def _value() -> st.SearchStrategy[str]:
    return st.sampled_from(NUMBERS) | st.text(alphabet=st.characters(blacklist_characters="\x00",
                                                                      blacklist_categories=["Cs"]), max_size=8)


def _data_arg() -> st.SearchStrategy[str]:
    schemes = st.sampled_from(["digits", "synthetic", "synthetic:", "cifar10:", "cifar100:", "folder:",
                               "imagenet:", "nope:", ":", "synthetic:-1", "synthetic:1e9", "synthetic:3"])
    return st.one_of(schemes, st.builds(lambda s, p: s + p, schemes, _path_arg()))


def args_cases() -> st.SearchStrategy[Case]:
    """Argument lists of every command, with hostile numbers, names and paths."""
    model = st.sampled_from(["resnet20", "plain20", "preact_resnet164", "resnet18", "nope", "", "resnet",
                             "resnet20 ", "RESNET20"])
    override = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
        ["depth", "units", "widths", "strides", "num_classes", "in_channels", "shortcut", "shortcut_scale",
         "gate_bias", "dropout", "unit", "option", "block", "stem", "stem_width", "expansion", "recompute",
         "input_size", "nope", ""]), _value())
    info = st.builds(lambda m, o, s: ["info", m, *sum((["-o", x] for x in o), []), *(["--input-size", s] if s
                                                                                         else [])],
                     model, st.lists(override, max_size=3), st.none() | _value())
    # a filter always: the whole table (every net to 1,202 layers, built to count) is slow, not hostile
    models = st.builds(lambda f, s: ["models", "--filter", f"resnet2{f}", *(["--input-size", s] if s else [])],
                       st.text(max_size=4), st.none() | _value())
    evaluate = st.builds(lambda p, extra: ["eval", p, *extra], _path_arg(), st.lists(
        st.sampled_from(["--best", "--split=val", "--batch-size=0", "--batch-size=-1", "--data=digits",
                         "--device=cuda:9", "--model=nope"]), max_size=2))
    weights = st.builds(lambda p, d, m: ["eval", "--weights", p, "--data", d, *(["--model", m] if m else [])],
                        _path_arg(), _data_arg(), st.none() | model)
    export = st.builds(lambda p, f, o: ["export", "--weights", p, "--model", "resnet20", "--format", f, "-o", o],
                       _path_arg(), st.sampled_from(["safetensors", "onnx", "pt2", "zip", ""]), _path_arg())
    predict = st.builds(lambda w, imgs, k: ["predict", "--weights", w, *imgs, "--top-k", k],
                        _path_arg(), st.lists(_path_arg(), min_size=1, max_size=2), _value())
    report = st.builds(lambda dirs, o: ["report", *dirs, "-o", o], st.lists(_path_arg(), min_size=1, max_size=2),
                       _path_arg())
    train = st.builds(lambda d, flag, v, out: ["train", *TINY[:4], "--data", d, flag, v, "--out", out],
                      _data_arg(), st.sampled_from(["--iters", "--epochs", "--seed", "--val-split", "--recipe",
                                                    "--device", "--init", "--resume"]),
                      _value() | _path_arg(), st.sampled_from(["{root}/run", "{dir}", "{devnull}", "{dot}",
                                                               "{blank}", "{fifo}"]))
    experiment = st.builds(lambda s, flag, v: ["experiment", s, "--scale", "small", "--data", "synthetic:8",
                                               "--iters", "1", "--only", "nope", flag, v, "--out", "{root}/suite"],
                           st.sampled_from(["degradation", "nope", "{text}", "{dir}", "{fifo}", "{json}", "list"]),
                           st.sampled_from(["--seeds", "--epochs", "--iters", "--scale"]), _value())
    analyze = st.builds(lambda m, b, o: ["analyze", "propagation", "--model", m, "--batch-size", b, "--out", o],
                        model, _value(), _path_arg())
    argv = st.one_of(info, models, evaluate, weights, export, predict, report, train, experiment, analyze)
    return st.builds(lambda a: Case("args", a), argv)


def config_fields() -> list[str]:
    import dataclasses

    from resnetlab.config import Config

    cfg = Config()
    keys = [f"model.{k}" for k in ("depth", "shortcut", "unit", "widths", "num_classes", "nope")]
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(value)]
    return keys + ["nope.x", "optim", "optim.", ".lr", "run.seed.x"]


def set_cases() -> st.SearchStrategy[Case]:
    """`train --set KEY=VALUE` over every config field, with hostile values: checked before any work."""
    pair = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(config_fields()), _value())
    return st.builds(lambda pairs: Case("set", ["train", *TINY, *sum((["--set", p] for p in pairs), []),
                                                "--out", "{root}/run"]),
                     st.lists(pair, min_size=1, max_size=2))


RUN_COMMANDS = [["eval", "{root}/run"], ["train", "--resume", "{root}/run"], ["report", "{root}/run", "-o",
                "{root}/r.html"], ["export", "{root}/run", "--format", "safetensors", "-o", "{root}/w.safetensors"],
                ["predict", "{root}/run", "{root}/dir"]]


def config_cases() -> st.SearchStrategy[Case]:
    """A finished tiny run whose config.json is replaced by another JSON document (or a field of it)."""
    return st.builds(lambda doc, cmd: Case("config", cmd, {"run/config.json": doc}),
                     JSON_VALUES | st.builds(_patched_config, st.sampled_from(config_fields()), JSON_VALUES),
                     st.sampled_from(RUN_COMMANDS))


def summary_cases() -> st.SearchStrategy[Case]:
    """A finished tiny run whose summary.json or metrics.jsonl is replaced; read back by report and eval."""
    metrics = st.lists(JSON_VALUES, max_size=3).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode())
    return st.builds(lambda name, doc, cmd: Case("summary", cmd, {f"run/{name}": doc}),
                     st.sampled_from(["summary.json", "metrics.jsonl"]), JSON_VALUES | metrics,
                     st.sampled_from(RUN_COMMANDS[:3] + [["report", "{root}", "-o", "{root}/r.html"]]))


def checkpoint_cases() -> st.SearchStrategy[Case]:
    """A torch-saved payload of generated shape, given wherever a checkpoint or weights file is read."""
    tensor_like = st.sampled_from(["float32", "int8", "bool", "float16", "float64", "empty", "nan", "scalar"])
    payload = st.one_of(
        JSON_VALUES,
        st.dictionaries(st.sampled_from(["spec", "model", "config", "norm", "progress", "data", "state_dict",
                                         "best_prec1", "optimizer", "rng", "version"]),
                        JSON_VALUES | tensor_like.map(lambda t: {"__tensor__": t}), max_size=6),
        st.builds(lambda field_, value: {"__patch__": field_, "value": value},
                  st.sampled_from(["spec", "model", "config", "norm", "data", "progress"]),
                  JSON_VALUES | tensor_like.map(lambda t: {"__tensor__": t})))
    cmd = st.sampled_from([["eval", "{root}/ckpt.pt"], ["eval", "--weights", "{root}/ckpt.pt", "--data",
                                                         "synthetic:8", "--model", "resnet20"],
                           ["predict", "--weights", "{root}/ckpt.pt", "{root}/dir"],
                           ["export", "--weights", "{root}/ckpt.pt", "--format", "safetensors", "-o",
                            "{root}/w.safetensors"],
                           ["train", *TINY, "--init", "{root}/ckpt.pt", "--out", "{root}/run2"]])
    return st.builds(lambda p, c: Case("checkpoint", c, {"ckpt.pt": ("torch", p)}), payload, cmd)


def suite_cases() -> st.SearchStrategy[Case]:
    """A generated suite file: valid TOML of the wrong shape, or plain junk."""
    key = st.sampled_from(["title", "source", "recipe", "members", "label", "model", "set", "small", "cpu",
                           "paper", "override"])
    toml_value = st.sampled_from(['5', '"x"', 'true', '[]', '[5]', '{}', '{ depth = 8 }', '{ depth = -1 }',
                                  '"resnet20"', '{ "optim.lr" = "x" }', 'nan', '1e400', '[{ label = 5 }]',
                                  '[{ label = "a", model = "resnet20", small = { depth = 8 } }]'])
    member = st.dictionaries(key, toml_value, max_size=5).map(
        lambda d: "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }")
    doc = st.builds(lambda top, members: "\n".join(f"{k} = {v}" for k, v in top.items())
                    + "\nmembers = [" + ", ".join(members) + "]\n",
                    st.dictionaries(st.sampled_from(["title", "source", "recipe"]), toml_value, max_size=3),
                    st.lists(member, max_size=2))
    text = doc | st.text(max_size=40)
    return st.builds(lambda t: Case("suite", ["experiment", "{root}/s.toml", "--scale", "small", "--data",
                                              "synthetic:8", "--iters", "1", "--out", "{root}/suite"],
                                    {"s.toml": t}), text)


STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "args": args_cases, "set": set_cases, "config": config_cases, "summary": summary_cases,
    "checkpoint": checkpoint_cases, "suite": suite_cases}


def _patched_config(key: str, value: Any) -> dict[str, Any]:
    return {"__patch__": key, "value": value}


# -- running one case -----------------------------------------------------------------------------------
_TEMPLATE: dict[str, Path] = {}


def _template_run() -> Path:
    """A finished tiny run (trained once per process) that run-reading cases copy and damage."""
    if "run" not in _TEMPLATE:
        from resnetlab.cli import main

        where = Path(tempfile.mkdtemp(prefix="resnetlab-fuzz-template-")) / "run"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["train", *TINY, "--out", str(where)]) == 0
        _TEMPLATE["run"] = where
    return _TEMPLATE["run"]


def _tensor(kind: str) -> Any:
    import torch

    return {"float32": torch.ones(2, 2), "int8": torch.ones(2, 2, dtype=torch.int8),
            "bool": torch.ones(2, 2, dtype=torch.bool), "float16": torch.ones(2, 2, dtype=torch.float16),
            "float64": torch.ones(2, 2, dtype=torch.float64), "empty": torch.empty(0),
            "nan": torch.full((2, 2), float("nan")), "scalar": torch.tensor(3.0)}[kind]


def _materialise(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__tensor__"}:
        return _tensor(value["__tensor__"])
    if isinstance(value, dict):
        return {k: _materialise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_materialise(v) for v in value]
    return value


def _write(root: Path, case: Case) -> None:
    import torch

    if case.family in ("config", "summary") or any(a.startswith("{root}/run") for a in case.argv):
        shutil.copytree(_template_run(), root / "run", ignore=shutil.ignore_patterns(".lock"))
    for rel, value in case.files.items():
        path = root / rel
        if isinstance(value, tuple) and value[0] == "torch":
            from resnetlab.checkpoint import load_checkpoint, save_checkpoint

            payload = value[1]
            if isinstance(payload, dict) and "__patch__" in payload:  # a real checkpoint with one field changed
                base = load_checkpoint(_template_run() / "checkpoints" / "best.pt")
                base[payload["__patch__"]] = _materialise(payload["value"])
                payload = base
            if isinstance(payload, dict):  # in resnetlab's checksummed frame, so the reader gets to the content
                save_checkpoint(path, _materialise(payload))
            else:
                torch.save(_materialise(payload), path)
        elif isinstance(value, bytes):
            path.write_bytes(value)
        elif isinstance(value, str) and rel.endswith(".toml"):
            path.write_text(value)
        elif isinstance(value, dict) and "__patch__" in value:  # config.json with one field changed
            doc = json.loads(path.read_text())
            section, _, key = value["__patch__"].partition(".")
            if isinstance(doc.get(section), dict):
                doc[section][key] = value["value"]
            path.write_text(json.dumps(doc))
        else:
            path.write_text(json.dumps(value))


class _Timeout(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise _Timeout


@dataclass
class Outcome:
    argv: list[str]
    rc: int | None
    err: str
    seconds: float
    problem: str | None  # None: the case ended as bad input should


def run_case(case: Case, root: Path) -> Outcome:
    """Run `case` in the empty directory `root` and judge how it ended."""
    from resnetlab.cli import main

    root.mkdir(parents=True, exist_ok=True)
    _write(root, case)
    argv = case.render(root)
    out, err = io.StringIO(), io.StringIO()
    rc: int | None = None
    problem = None
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_BOUND_S)
    start = time.perf_counter()
    cwd = os.getcwd()
    try:
        os.chdir(root)  # a relative default output (runs/, ./propagation.png) lands in the case's directory
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse's one-line usage error
                rc = exc.code if isinstance(exc.code, int) else 2
    except _Timeout:
        problem = f"timeout: still running after {TIME_BOUND_S:.0f} s"
    except BaseException as exc:  # noqa: BLE001 - anything escaping main is the finding
        problem = f"exception: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
    seconds = time.perf_counter() - start
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.startswith("resnetlab") or "Traceback" in ln]
    if problem is None:
        if "Traceback" in text:
            problem = "traceback on stderr"
        elif rc not in (0, 1, 2):
            problem = f"exit {rc}"
        elif rc == 1 and "member run(s) failed" not in text:
            problem = "exit 1 without a failed suite member"
        elif rc != 0 and len(lines) != 1:
            problem = f"{len(lines)} error lines, not one"
    if problem is None:
        leftovers = [str(p.relative_to(root)) for p in root.rglob(".*tmp*") if p.is_file()]
        if leftovers:
            problem = f"half-written output left: {leftovers[0]}"
    return Outcome(argv, rc, text.strip().splitlines()[-1][:200] if text.strip() else "", seconds, problem)


def signature(outcome: Outcome) -> str:
    """What makes two findings the same: the kind and the message with numbers and paths blurred."""
    text = re.sub(r"/\S+", "PATH", outcome.problem or "")
    return re.sub(r"\d+", "N", text)[:160]


# -- the campaign ---------------------------------------------------------------------------------------
def campaign(families: list[str], cases: int, seed: int) -> dict[str, Any]:
    """Run `cases` cases per family; every finding kept, not only the first."""
    findings: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    for family in families:
        tally = counts.setdefault(family, {"cases": 0, "exit 0": 0, "one-line error": 0, "findings": 0})

        _family_test(family, cases, seed, tally, findings)()
        print(f"{family}: {tally}", file=sys.stderr, flush=True)
    return {"counts": counts, "findings": sorted(findings.values(), key=lambda f: -f["count"])}


def _family_test(family: str, cases: int, seed: int, tally: dict[str, int],
                 findings: dict[str, dict[str, Any]]) -> Callable[[], None]:
    """A hypothesis test over one family that records each finding instead of stopping at the first."""

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(STRATEGIES[family]())
    def one(case: Case) -> None:
        with tempfile.TemporaryDirectory(prefix="resnetlab-fuzz-") as tmp:
            outcome = run_case(case, Path(tmp))
        tally["cases"] += 1
        if outcome.problem is None:
            tally["exit 0" if outcome.rc == 0 else "one-line error"] += 1
            return
        tally["findings"] += 1
        found = findings.setdefault(f"{family}: {signature(outcome)}", {
            "family": family, "problem": outcome.problem, "count": 0, "argv": outcome.argv,
            "files": {k: repr(v)[:300] for k, v in case.files.items()}})
        found["count"] += 1

    return one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--cases", type=int, default=100, help="cases per family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the counts and findings here (JSON)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases: at least 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    result = campaign(args.families, args.cases, args.seed)
    result |= {"command": "python scripts/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "seconds": round(time.time() - started, 1), "cases_per_family": args.cases}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    total = sum(c["cases"] for c in result["counts"].values())
    print(f"{total} cases, {len(result['findings'])} distinct findings", file=sys.stderr)
    for f in result["findings"]:
        print(f"  [{f['count']}x] {f['family']}: {f['problem']}  argv={f['argv']}", file=sys.stderr)
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""The first families: hostile argument lists (`args`) and `--set` values (`set`); a finished run whose
config.json (`config`), summary.json or metrics.jsonl (`summary`) is replaced, or one field of it at any depth;
checkpoint payloads of generated shape (`checkpoint`); generated suite TOML (`suite`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.common import SUITE_ARGS, TINY, template_run, template_suite
from tests.fuzz.core import PATH_ARG, Case, Family, register

NUMBERS = ["0", "-1", "-3", "1", "2", "7", "1e9", "1e400", "-1e400", "nan", "inf", "-inf", "", "1.5", "-0.5",
           "999999999999999999999", "true", "false", "[1, 2]", "[]", "{}", "x", "'", "\"", "None", "0x10",
           "1_000", " 3 ", "١٢"]

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _value() -> st.SearchStrategy[str]:
    return st.sampled_from(NUMBERS) | st.text(alphabet=st.characters(blacklist_characters="\x00",
                                                                      blacklist_categories=["Cs"]), max_size=8)


def _data_arg() -> st.SearchStrategy[str]:
    schemes = st.sampled_from(["digits", "synthetic", "synthetic:", "cifar10:", "cifar100:", "folder:",
                               "imagenet:", "nope:", ":", "synthetic:-1", "synthetic:1e9", "synthetic:3"])
    return st.one_of(schemes, st.builds(lambda s, p: s + p, schemes, PATH_ARG))


def args_cases() -> st.SearchStrategy[Case]:
    """Argument lists of every command, with hostile numbers, names and paths."""
    model = st.sampled_from(["resnet20", "plain20", "preact_resnet164", "resnet18", "nope", "", "resnet",
                             "resnet20 ", "RESNET20"])
    override = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
        ["depth", "units", "widths", "strides", "num_classes", "in_channels", "shortcut", "shortcut_scale",
         "gate_bias", "dropout", "unit", "option", "block", "stem", "stem_width", "expansion", "recompute",
         "input_size", "nope", ""]), _value())
    info = st.builds(lambda m, o, s: ["info", m, *sum((["--override", x] for x in o), []),
                                      *(["--input-size", s] if s else [])],
                     model, st.lists(override, max_size=3), st.none() | _value())
    # a filter always: the whole table (every net to 1,202 layers, built to count) is slow, not hostile
    models = st.builds(lambda f, s: ["models", "--filter", f"resnet2{f}", *(["--input-size", s] if s else [])],
                       st.text(max_size=4), st.none() | _value())
    evaluate = st.builds(lambda p, extra: ["eval", p, *extra], PATH_ARG, st.lists(
        st.sampled_from(["--best", "--split=val", "--batch-size=0", "--batch-size=-1", "--data=digits",
                         "--device=cuda:9", "--model=nope"]), max_size=2))
    weights = st.builds(lambda p, d, m: ["eval", "--weights", p, "--data", d, *(["--model", m] if m else [])],
                        PATH_ARG, _data_arg(), st.none() | model)
    export = st.builds(lambda p, f, o: ["export", "--weights", p, "--model", "resnet20", "--format", f, "-o", o],
                       PATH_ARG, st.sampled_from(["safetensors", "onnx", "pt2", "zip", ""]), PATH_ARG)
    predict = st.builds(lambda w, imgs, k: ["predict", "--weights", w, *imgs, "--top-k", k],
                        PATH_ARG, st.lists(PATH_ARG, min_size=1, max_size=2), _value())
    report = st.builds(lambda dirs, o: ["report", *dirs, "-o", o], st.lists(PATH_ARG, min_size=1, max_size=2),
                       PATH_ARG)
    train = st.builds(lambda d, flag, v, out: ["train", *TINY[:4], "--data", d, flag, v, "--out", out],
                      _data_arg(), st.sampled_from(["--iters", "--epochs", "--seed", "--val-split", "--recipe",
                                                    "--device", "--init", "--resume"]),
                      _value() | PATH_ARG, st.sampled_from(["{root}/run", "{dir}", "{devnull}", "{dot}",
                                                               "{blank}", "{fifo}"]))
    experiment = st.builds(lambda s, flag, v: ["experiment", s, "--scale", "small", "--data", "synthetic:8",
                                               "--iters", "1", "--only", "nope", flag, v, "--out", "{root}/suite"],
                           st.sampled_from(["degradation", "nope", "{text}", "{dir}", "{fifo}", "{json}", "list"]),
                           st.sampled_from(["--seeds", "--epochs", "--iters", "--scale"]), _value())
    analyze = st.builds(lambda m, b, o: ["analyze", "propagation", "--model", m, "--batch-size", b, "--out", o],
                        model, _value(), PATH_ARG)
    argv = st.one_of(info, models, evaluate, weights, export, predict, report, train, experiment, analyze)
    return st.builds(lambda a: Case("args", a), argv)


def config_fields() -> list[str]:
    """Every config field as SECTION.KEY, a few model fields, and keys that name nothing."""
    import dataclasses

    from resnetlab.settings.config import Config

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


DELETE = {"__delete__": True}  # as a patch's value: the field is taken out


def _walked(name: str, commands: list[list[str]], family: str) -> st.SearchStrategy[Case]:
    """The run's record `name` with one field, at any depth (a whole section too), given another value or taken
    out: the walk picks it child by child when the case is set up (`_patch`), so any field of the real record
    can be drawn, not only those a list names."""
    walk = st.lists(st.integers(0, 63), min_size=1, max_size=4).map(tuple)
    return st.builds(lambda w, value, cmd: Case(family, cmd, steps=(("patch", name, w, value),)), walk,
                     JSON_VALUES | st.just(DELETE), st.sampled_from(commands))


def config_cases() -> st.SearchStrategy[Case]:
    """A finished tiny run whose config.json is replaced by another JSON document, or one field of it."""
    whole = st.builds(lambda doc, cmd: Case("config", cmd, {"run/config.json": doc}), JSON_VALUES,
                      st.sampled_from(RUN_COMMANDS))
    return whole | _walked("config.json", RUN_COMMANDS, "config")


def summary_cases() -> st.SearchStrategy[Case]:
    """A finished tiny run whose summary.json or metrics.jsonl is replaced, or one field of it (of one row of
    metrics.jsonl); read back by report, eval and a resumed run."""
    metrics = st.lists(JSON_VALUES, max_size=3).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode())
    commands = RUN_COMMANDS[:3] + [["report", "{root}", "-o", "{root}/r.html"]]
    whole = st.builds(lambda name, doc, cmd: Case("summary", cmd, {f"run/{name}": doc}),
                      st.sampled_from(["summary.json", "metrics.jsonl"]), JSON_VALUES | metrics,
                      st.sampled_from(commands))
    return whole | _walked("summary.json", commands, "summary") | _walked("metrics.jsonl", commands, "summary")


def read_record(path: Path) -> Any:
    """A JSON record as its document; a JSON-lines file as the list of its rows."""
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
        else json.loads(text)


def _patch(path: Path, walk: tuple[int, ...], value: Any) -> None:
    """One field of the JSON record at `path` (of a JSON-lines file: of its rows, as a list) set to `value`."""
    doc = node = read_record(path)
    for depth, pick in enumerate(walk):
        key = list(node)[pick % len(node)] if isinstance(node, dict) else pick % len(node)
        child = node[key]
        if depth == len(walk) - 1 or not isinstance(child, dict | list) or not child:
            if value == DELETE:
                del node[key]
            else:
                node[key] = value
            break
        node = child
    path.write_text("".join(json.dumps(row) + "\n" for row in doc) if path.suffix == ".jsonl" else json.dumps(doc))


def checkpoint_cases() -> st.SearchStrategy[Case]:
    """A torch-saved payload of generated shape, given wherever a checkpoint or weights file is read."""
    tensor_like = st.sampled_from(["float32", "int8", "bool", "float16", "float64", "empty", "nan", "scalar"])
    fields = st.sampled_from(["spec", "model", "config", "norm", "data", "progress", "optimizer", "rng", "schedule"])
    payload = st.one_of(
        JSON_VALUES,
        fields.map(lambda field_: {"__patch__": field_, "value": {"__delete__": True}}),
        st.dictionaries(st.sampled_from(["spec", "model", "config", "norm", "progress", "data", "state_dict",
                                         "best_prec1", "optimizer", "rng", "version"]),
                        JSON_VALUES | tensor_like.map(lambda t: {"__tensor__": t}), max_size=6),
        st.builds(lambda field_, value: {"__patch__": field_, "value": value},
                  fields, JSON_VALUES | tensor_like.map(lambda t: {"__tensor__": t})))
    cmd = st.sampled_from([["eval", "{root}/ckpt.pt"], ["eval", "--weights", "{root}/ckpt.pt", "--data",
                                                         "synthetic:8", "--model", "resnet20"],
                           ["predict", "--weights", "{root}/ckpt.pt", "{root}/dir"],
                           ["export", "--weights", "{root}/ckpt.pt", "--format", "safetensors", "-o",
                            "{root}/w.safetensors"],
                           ["train", *TINY, "--init", "{root}/ckpt.pt", "--out", "{root}/run2"]])
    return st.builds(lambda p, c: Case("checkpoint", c, steps=(("torch", "ckpt.pt", p),)), payload, cmd)


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
    return st.builds(lambda t: Case("suite", ["experiment", "{root}/s.toml", *SUITE_ARGS, "--out", "{root}/suite"],
                                    {"s.toml": t}), text)


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


def setup(root: Path, step: tuple[Any, ...]) -> None:
    """`("patch", NAME, WALK, VALUE)`: one field of the run's record NAME changed (`_patch`); `("suite", NAME,
    WALK, VALUE)`: the same in a copy of the template suite (NAME relative to its folder); `("torch", NAME,
    PAYLOAD)`: a torch-saved payload (a dict in resnetlab's checksummed frame, so the reader gets to the
    content)."""
    import torch

    from resnetlab.weights.checkpoint import load_checkpoint, save_checkpoint

    if step[0] == "suite":  # a copy of the template suite, one field of one of its records changed
        shutil.copytree(template_suite(), root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.lock", "*.claim"))
        _patch(root / step[1], step[2], step[3])
        return
    if step[0] == "patch":
        if not (root / "run").exists():  # a command over the case's folder (report ROOT) reads the run below it
            shutil.copytree(template_run(), root / "run", ignore=shutil.ignore_patterns(".lock"))
        _patch(root / "run" / step[1], step[2], step[3])
        return
    _, name, payload = step
    if isinstance(payload, dict) and "__patch__" in payload:  # a real checkpoint with one field changed
        base = load_checkpoint(template_run() / "checkpoints" / "best.pt")
        if payload["value"] == {"__delete__": True}:  # a real checkpoint without that field
            del base[payload["__patch__"]]
        else:
            base[payload["__patch__"]] = _materialise(payload["value"])
        payload = base
    if isinstance(payload, dict):
        save_checkpoint(root / name, _materialise(payload))
    else:
        torch.save(_materialise(payload), root / name)


register(Family("args", args_cases), Family("set", set_cases), Family("config", config_cases, setup),
         Family("summary", summary_cases, setup), Family("checkpoint", checkpoint_cases, setup),
         Family("suite", suite_cases, setup))

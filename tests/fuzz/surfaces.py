"""Six families on the surfaces of issue 22, whose cases the common judge checks for silent wrong answers and lost
data: `export`, `predict`, `hub` (hubconf's entry points, run in-process by `hub_main`), `safetensors`, `rundir`
and `env` (docs/reliability.md); their set-up is tests.fuzz.surface_files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.common import REPO, STEPS, TINY, TINY_NET
from tests.fuzz.core import Case, Ended, Family, register
from tests.fuzz.craft import IMAGE_KINDS, INVALID_IMAGES, NAMES, image_file
from tests.fuzz.judge import other_weights
from tests.fuzz.surface_files import RUN_DAMAGES, SAFETENSORS_EDITS, setup

FORMATS = st.sampled_from(["safetensors"] * 16 + ["pt2"] * 3 + ["onnx"])  # onnx: ~2-8 s a case; pt2: ~1 s

_RUN = ("run", "multi", "none")


def _edited(edit: str, name: str = "w.safetensors") -> tuple[Any, ...]:
    """The set-up step of the exported file `name` changed by SAFETENSORS_EDITS[edit]."""
    return ("weights", name, "edited", SAFETENSORS_EDITS[edit][0])


def _weights_source(argv: list[str], name: str, what: str, edit: Any = None) -> tuple[list[str], list[Any], str]:
    return argv, [_RUN, ("weights", name, what, edit)], name


SOURCES: dict[str, tuple[list[str], list[tuple[Any, ...]], str]] = {
    # name: (argv part, set-up steps, the input file an output must not replace ("" if none))
    "run": (["{root}/run"], [_RUN], ""),
    "run --best": (["{root}/run", "--best"], [_RUN], ""),
    "run newest corrupt": (["{root}/run"], [("run", "multi", "newest_corrupt")], ""),
    "run with no steps": (["{root}/run"], [("run", "multi", "summary_no_checkpoints")], ""),
    "step checkpoint": ([f"{{root}}/run/checkpoints/{STEPS[-1]}"], [_RUN], f"run/checkpoints/{STEPS[-1]}"),
    "oldest step checkpoint": ([f"{{root}}/run/checkpoints/{STEPS[0]}"], [_RUN], f"run/checkpoints/{STEPS[0]}"),
    "best.pt": (["{root}/run/checkpoints/best.pt"], [_RUN], "run/checkpoints/best.pt"),
    "safetensors": _weights_source(["--weights", "{root}/in/w.safetensors"], "in/w.safetensors", "export"),
    "foreign --model": _weights_source(["--weights", "{root}/in/w.th", "--model", "resnet20"], "in/w.th", "foreign"),
    "foreign": _weights_source(["--weights", "{root}/in/w.th"], "in/w.th", "foreign"),
    "checkpoint cut": _weights_source(["--weights", "{root}/in/w.pt"], "in/w.pt", "step", "cut"),
    "checkpoint flipped": _weights_source(["{root}/in/w.pt"], "in/w.pt", "step", "flip"),
    "safetensors NaN weights": (["--weights", "{root}/in/w.safetensors"],
                                [_RUN, _edited("weights: NaN conv", "in/w.safetensors")], "in/w.safetensors"),
    "garbage": _weights_source(["--weights", "{root}/in/w.pt"], "in/w.pt", "garbage"),
}

TARGETS = ["new", "existing file", "own step checkpoint", "own best.pt", "own config.json", "input", "link to input",
           "directory", "missing folder", "300-character name", "fifo", "/dev/null", "run directory"]


def _target(name: str, fmt: str, input_rel: str) -> tuple[str, list[tuple[Any, ...]], tuple[str, ...]]:
    """An -o target: (path template, extra set-up steps, writable relative paths)."""
    if name == "input" and input_rel:
        return "{root}/" + input_rel, [], ()
    if name == "link to input" and input_rel:
        return "{root}/link." + fmt, [("link", f"link.{fmt}", input_rel)], (f"link.{fmt}",)
    fixed = {"new": (f"{{root}}/out.{fmt}", [], ()),
             "existing file": (f"{{root}}/old.{fmt}", [("bytes", f"old.{fmt}", b"an older export")], (f"old.{fmt}",)),
             "own step checkpoint": (f"{{root}}/run/checkpoints/{STEPS[-1]}", [], ()),
             "own best.pt": ("{root}/run/checkpoints/best.pt", [], ()),
             "own config.json": ("{root}/run/config.json", [], ()),
             "directory": ("{dir}", [], ()), "missing folder": (f"{{root}}/nope/out.{fmt}", [], ()),
             "300-character name": ("{root}/" + "n" * 296 + f".{fmt}", [], ()), "fifo": ("{fifo}", [], ()),
             "/dev/null": ("/dev/null", [], ()), "run directory": ("{root}/run", [], ())}
    return fixed.get(name, fixed["new"])


def export_cases() -> st.SearchStrategy[Case]:
    """`resnetlab export`: every format from every kind of source, to every kind of hostile -o target. The
    judge checks that nothing the command read was replaced (the run's checkpoints, its config, the input),
    that a successful export is whole and holds the right weights, and that a failed one leaves no file."""

    def build(source: str, fmt: str, target: str) -> Case:
        argv_part, steps, input_rel = SOURCES[source]
        out, extra, writable = _target(target, fmt, input_rel)
        return Case("export", ["export", *argv_part, "--format", fmt, "-o", out], steps=(*steps, *extra),
                    writable=writable)

    # a new file half the time, so that successful exports (and their weights) are checked as often as refusals
    targets = st.sampled_from(["new"] * (len(TARGETS) - 1) + TARGETS[1:])
    return st.builds(build, st.sampled_from(sorted(SOURCES)), FORMATS, targets)


PREDICT_NETS: dict[str, tuple[list[str], list[str], list[tuple[Any, ...]]]] = {
    # name: (argv before the images, argv after them, set-up steps)
    "run": (["{root}/run"], [], [_RUN]),
    "run --best": (["{root}/run"], ["--best"], [_RUN]),
    "run --best before the images": (["{root}/run", "--best"], [], [_RUN]),  # as `predict RUN --best IMG`
    "run newest corrupt": (["{root}/run"], [], [("run", "multi", "newest_corrupt")]),
    "folder run": (["{root}/run"], [], [("run", "folder", "none")]),
    "checkpoint": ([f"{{root}}/run/checkpoints/{STEPS[1]}"], [], [_RUN]),
    "safetensors": ([], ["--weights", "{root}/w.safetensors"], [("weights", "w.safetensors", "export", None)]),
}

HOSTILE_METADATA = ["classes: newline", "classes: escape", "classes: 2 names for 10 outputs", "image_size=1",
                    "image_size=0", "image_size=10**9", "image_size='32'", "weights: NaN conv",
                    "norm: mean 1-D", "norm: NaN mean", "weights: Inf bias"]


def predict_cases() -> st.SearchStrategy[Case]:
    """`resnetlab predict` on generated images (every PIL mode, extreme and declared sizes, corruption PIL does not
    notice, hostile file names, nested folders) with every kind of net, text and --json output."""
    # plain RGB a third of the time, so that a case with a hostile name or a second image reaches the output
    kinds = st.sampled_from(["mode RGB"] * (len(IMAGE_KINDS) // 2) + IMAGE_KINDS)
    image = st.tuples(kinds, st.sampled_from(NAMES), st.sampled_from(["arg", "folder", "nested"]),
                      st.integers(0, 2**16))

    def net(name: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        if name in PREDICT_NETS:
            return PREDICT_NETS[name]
        return [], ["--weights", "{root}/w.safetensors"], [_edited(name)]

    # mostly good nets and --top-k values, so that the images are what is tested
    nets = st.sampled_from([n for n in sorted(PREDICT_NETS) if "before" not in n] * 4
                           + ["run --best before the images"] + HOSTILE_METADATA).map(net)
    top_k = st.sampled_from([None] * 4 + ["1", "2", "3", "10", "11", "1000000", "0", "-1"])

    def build(net: tuple[list[str], list[str], list[tuple[Any, ...]]], images: list[tuple[str, str, str, int]],
              k: str | None, as_json: bool) -> Case:
        files, args, invalid = [], [], []
        for i, (kind, name, where, seed) in enumerate(images):
            suffix = image_file(kind, seed)[1]
            folder = {"arg": "in", "folder": "imgs", "nested": "imgs/sub/deeper"}[where]
            rel = f"{folder}/{name}{i}{suffix}"
            files.append((rel, kind, seed))
            if where == "arg":
                args.append("{root}/" + rel)
            if kind in INVALID_IMAGES:
                invalid.append(INVALID_IMAGES[kind])
        if any(w != "arg" for _, _, w, _ in images):
            args.append("{root}/imgs")
        argv = ["predict", *net[0], *args, *net[1], *(["--top-k", k] if k else []), *(["--json"] if as_json else [])]
        return Case("predict", argv, steps=(*net[2], ("images", tuple(files))), writable=(),
                    invalid="; ".join(sorted(set(invalid))))

    return st.builds(build, nets, st.lists(image, min_size=1, max_size=3), top_k, st.booleans())


HUB_WEIGHTS: dict[str, tuple[str | None, list[tuple[Any, ...]], str]] = {
    # name: (weights argument, set-up steps, why it must be refused ("" if it must load))
    "none": (None, [], ""),
    "run": ("{root}/run", [("run", "multi20", "none")], ""),
    "run newest corrupt": ("{root}/run", [("run", "multi20", "newest_corrupt")], ""),
    "run with no steps": ("{root}/run", [("run", "multi20", "summary_no_checkpoints")], "no checkpoint"),
    "checkpoint": (f"{{root}}/run/checkpoints/{STEPS[1]}", [("run", "multi20", "none")], ""),
    "safetensors": ("{root}/w.safetensors", [("weights", "w.safetensors", "export20", None)], ""),
    "safetensors NaN": ("{root}/w.safetensors", [_edited("weights: NaN conv")], "NaN weights"),
    "safetensors nested": ("{root}/w.safetensors", [_edited("info: nested 100000")], "metadata nested beyond reason"),
    "safetensors cut": ("{root}/w.safetensors", [_edited("cut at data/2")], "truncated"),
    "foreign": ("{root}/w.th", [("weights", "w.th", "foreign", None)], ""),
    "garbage": ("{garbage}", [], "garbage"), "missing": ("{missing}", [], "missing"),
    "empty": ("{empty}", [], "empty"), "directory": ("{dir}", [], "a plain folder"),
    "fifo": ("{fifo}", [], "a FIFO"), "devnull": ("/dev/null", [], "a device"), "loop": ("{loop}", [], "a loop"),
}

HUB_OVERRIDES = [{}] * 8 + [{"depth": 8}, {"num_classes": 3}, {"nope": 1}, {"depth": -1}, {"depth": 10**9},
                             {"widths": "x"}, {"shortcut": "nope"}, {"num_classes": 0}]


def hub_cases() -> st.SearchStrategy[Case]:
    """hubconf's entry points called in-process (sometimes through `torch.hub.load`) with weights of every kind and
    spec overrides: a bad input is one line; a good one is a model in eval mode holding the expected weights."""
    names = st.sampled_from(["resnet20"] * 4 + ["resnet56", "plain20", "preact_resnet20", "resnet18"])

    def build(via: str, name: str, weights: str, overrides: dict[str, Any], as_path: bool) -> Case:
        arg, steps, why = HUB_WEIGHTS[weights]
        kwargs = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        if arg is not None:
            kwargs.insert(0, f"weights{':path' if as_path else ''}={arg}")
        invalid = why if arg is not None and name == "resnet20" and not overrides else ""
        return Case("hub", [via, name, *kwargs], steps=tuple(steps), writable=(), invalid=invalid)

    return st.builds(build, st.sampled_from(["hub"] * 3 + ["hub.load"]), names, st.sampled_from(sorted(HUB_WEIGHTS)),
                     st.sampled_from(HUB_OVERRIDES), st.booleans())


def safetensors_cases() -> st.SearchStrategy[Case]:
    """An exported .safetensors with one change of SAFETENSORS_EDITS read by eval, predict, export and train --init:
    where the change makes the file invalid, exit 0 is a finding."""
    commands = {
        "eval": ["eval", "--weights", "{root}/w.safetensors", "--data", "synthetic:8"],
        "predict": ["predict", "--weights", "{root}/w.safetensors", "{root}/img.png"],
        "predict --json": ["predict", "--weights", "{root}/w.safetensors", "{root}/img.png", "--json", "--top-k",
                           "3"],
        "export": ["export", "--weights", "{root}/w.safetensors", "--format", "safetensors", "-o",
                   "{root}/out.safetensors"],
        "train --init": ["train", *TINY, "--init", "{root}/w.safetensors", "--out", "{root}/run2"]}
    # image size and class names matter to predict and export (which write them on); the rest to every reader
    uses_meta = {"predict", "predict --json", "export"}

    def build(edit: str, command: str) -> Case:
        change, why = SAFETENSORS_EDITS[edit]
        if why and change[0] in ("image_size", "classes") and command not in uses_meta:
            why = None
        return Case("safetensors", list(commands[command]),
                    steps=(_edited(edit),
                           ("images", (("img.png", "mode RGB", 0),))), writable=(), invalid=why or "")

    return st.builds(build, st.sampled_from(sorted(SAFETENSORS_EDITS)), st.sampled_from(sorted(commands)))


def rundir_cases() -> st.SearchStrategy[Case]:
    """A run directory in an odd state (RUN_DAMAGES) given to every command that reads one: answers from the newest
    checkpoint that verifies, nothing changed but by a --resume that does not refuse."""
    commands = {
        "eval": ["eval", "{root}/run"], "eval --best": ["eval", "{root}/run", "--best"],
        "export": ["export", "{root}/run", "--format", "safetensors", "-o", "{root}/out.safetensors"],
        "export --best": ["export", "{root}/run", "--best", "--format", "safetensors", "-o", "{root}/out.safetensors"],
        "predict": ["predict", "{root}/run", "{root}/img.png", "--json"],
        "resume": ["train", "--resume", "{root}/run"],
        "report": ["report", "{root}/run", "-o", "{root}/r.html"]}

    def build(damage: str, command: str) -> Case:
        writable = ("run",) if command == "resume" and damage != "locked" else ()
        return Case("rundir", list(commands[command]),
                    steps=(("run", "multi", damage), ("images", (("img.png", "mode RGB", 0),))),
                    writable=writable)

    return st.builds(build, st.sampled_from(list(RUN_DAMAGES)), st.sampled_from(sorted(commands)))


CACHE_VALUES = {"unset": None, "a file": "{root}/cachefile", "below a file": "{root}/cachefile/sub",
                "unwritable (0o500)": "{root}/ro", "missing deep path": "{root}/a/b/c/d", "empty": "",
                "relative": "rel/cache", "~/cache": "~/cache", "normal": "{root}/cache"}

HOME_VALUES = {"unset": None, "a file": "{root}/homefile", "missing": "{root}/nohome/x", "empty": "",
               "normal": "{root}/home"}


def env_cases() -> st.SearchStrategy[Case]:
    """RESNETLAB_CACHE and HOME hostile (a file, below a file, unwritable, missing, empty, relative, unset) around
    commands that use the data cache or `~`; never the real home (HOME unset with no cache variable)."""
    commands = {
        "train folder": ["train", *TINY_NET, "--data", "folder:{root}/data", "--out", "{root}/run2"],
        "train folder:~": ["train", *TINY_NET, "--data", "folder:~/data", "--out", "{root}/run2"],
        "train --out ~": ["train", *TINY, "--out", "~/run2"],
        "eval folder": ["eval", "{root}/run", "--data", "folder:{root}/data"],
        "train digits": ["train", *TINY_NET, "--data", "digits", "--out", "{root}/run2"]}

    def build(cache: str, home: str, command: str) -> Case:
        tilde = cache in ("unset", "empty", "~/cache") or "~" in " ".join(commands[command])
        if home in ("unset", "empty") and tilde:
            home = "normal"  # never the real home directory (nor "/" for an empty HOME)
        steps: list[tuple[Any, ...]] = [("folder", "data"), ("bytes", "cachefile", b"not a folder\n"),
                                        ("bytes", "homefile", b"not a folder\n"), ("mkdir", "ro", 0o500),
                                        ("folder", "home/data")]
        if command == "eval folder":
            steps.insert(0, ("run", "folder", "none"))
        env = {"RESNETLAB_CACHE": CACHE_VALUES[cache], "HOME": HOME_VALUES[home]}
        return Case("env", list(commands[command]), steps=tuple(steps), env=env, writable=())

    return st.builds(build, st.sampled_from(sorted(CACHE_VALUES)), st.sampled_from(sorted(HOME_VALUES)),
                     st.sampled_from(sorted(commands)))


# -- the hub family's command and check ------------------------------------------------------------------
_HUB: dict[str, Any] = {}  # the model the last hub case returned, for `after`


def hub_main(argv: list[str]) -> int:
    """A hub case as a command: `hub|hub.load NAME [weights[:path]=W] [K=JSON]...` calls `hubconf.NAME(...)`; a
    resnetlab error or ValueError is `resnetlab: error:` and exit 2, any other exception escapes (a finding)."""
    import torch

    from resnetlab.errors import ResnetlabError

    _HUB.clear()
    via, name, *pairs = argv
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key.startswith("weights"):
            kwargs["weights"] = Path(value) if key == "weights:path" else value
        else:
            kwargs[key] = json.loads(value)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        if via == "hub.load":
            model = torch.hub.load(str(REPO), name, source="local", trust_repo=True, verbose=False, **kwargs)
        else:
            import hubconf

            model = getattr(hubconf, name)(**kwargs)
    except (ResnetlabError, ValueError) as exc:
        print(f"resnetlab: error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"hubconf.{name} returned a {type(model).__name__}, not a module")
    if "weights" in kwargs and (model.training or not hasattr(model, "pretrained")):
        raise AssertionError(f"hubconf.{name}(weights=...) returned a model in training mode or without .pretrained")
    _HUB["model"] = model
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")
    return 0


def hub_after(ended: Ended) -> str | None:
    """A hub model that loaded must hold the weights the judge expects (the run's newest good checkpoint)."""
    diff = other_weights(_HUB["model"].state_dict(), ended.expected) if ended.rc == 0 and "model" in _HUB else None
    return f"hub model is not the weights of {ended.expected.name}: {diff}" if diff else None


register(Family("export", export_cases, setup), Family("predict", predict_cases, setup),
         Family("hub", hub_cases, setup, after=hub_after, main=hub_main),
         Family("safetensors", safetensors_cases, setup), Family("rundir", rundir_cases, setup),
         Family("env", env_cases, setup))

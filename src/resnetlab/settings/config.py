"""Training configuration: defaults, then a recipe file, then command-line overrides, validated once.

A recipe (`recipes/*.toml`) is data: the papers' schedules (v1 sec. 3.4 and 4.2, v2 sec. 4). The resolved
config is written to the run directory and is all a resumed run or an evaluation needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnetlab.data import DataOptions
from resnetlab.errors import ConfigError, DataError, ResnetlabError
from resnetlab.files.jsondoc import MAX_NESTING, check_nesting
from resnetlab.networks.registry import get_spec
from resnetlab.networks.spec import ResNetSpec
from resnetlab.settings.trackers import check_settings as check_tracking
from resnetlab.settings.trackers import require

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_DIR = Path(__file__).parent / "recipes"


@dataclass
class DataConfig:
    """The data section: the data set (`source`) and the fields of `data.DataOptions` (there they mean what
    they mean and are validated, `options()`; tests/test_reliability.py checks that the two agree field by
    field). A tuple default is a list here, as TOML and JSON write it."""

    source: str = "digits"  # digits | synthetic[:N] | cifar10[:PATH] | cifar100[:PATH] | folder:PATH | imagenet:PATH
    normalize: str = "pixel_mean"
    pad: int = 4
    flip: bool = True
    val_split: int = 0
    split_seed: int = 0
    ten_crop: bool = False
    workers: int = 4
    crop_size: int = 224
    scale: tuple[int, int] = field(default_factory=lambda: [256, 480])  # type: ignore[assignment]
    test_resize: int = 256
    cache_dir: str | None = None

    def options(self) -> DataOptions:
        """These settings as the data loaders' options; a bad value is a one-line ConfigError `data.FIELD`."""
        try:
            return DataOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataOptions)})
        except DataError as exc:
            raise ConfigError(str(exc).replace("DataOptions.", "data.", 1)) from None


@dataclass
class ModelConfig:
    """The model section: a registry name and spec fields that replace its spec's (`model.depth=56`)."""

    name: str = "preact_resnet20"
    fields: dict[str, Any] = field(default_factory=dict)

    def spec(self, channels: int | None = None, classes: int | None = None, data: str = "") -> ResNetSpec:
        """The section's one check: the registry spec with these fields, fitted to the data's `channels` and
        `classes` where given (a field that disagrees with the data is an error); a one-line ConfigError."""
        overrides = dict(self.fields)
        for key, value in (("in_channels", channels), ("num_classes", classes)):
            if value is None:
                continue
            if key in overrides and overrides[key] != value:
                raise ConfigError(f"model.{key}: {overrides[key]} does not match the data ({data}: {value})")
            overrides[key] = value
        try:
            return get_spec(self.name, **overrides)
        except ResnetlabError as exc:  # a bad field (SpecError) or an unknown name: the spec's own message
            raise ConfigError(str(exc)) from None
        except (TypeError, ValueError, OverflowError) as exc:  # a value the spec's checks did not anticipate
            raise ConfigError(f"model: {' '.join(str(exc).split())[:200]}") from None

    def to_dict(self) -> dict[str, Any]:
        """As config.json holds it: {"name": ..., FIELD: value, ...}."""
        return {"name": self.name, **self.fields}


@dataclass
class OptimConfig:
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    accumulate: int = 1  # micro-batches per step, each normalised by BN on its own (as one DDP rank's slice)
    linear_scaling: bool = False  # with N processes: batch_size per process and lr x N (else batch is global)


@dataclass
class ScheduleConfig:
    unit: str = "iter"  # iter | epoch: the unit of total and milestones
    total: int = 64000
    milestones: list[int] = field(default_factory=lambda: [32000, 48000])
    gamma: float = 0.1  # lr factor at each milestone
    epochs: float | None = None  # a shorter (or longer) budget in epochs; milestones keep their fractions
    iters: int | None = None  # the same, in iterations


@dataclass
class WarmupConfig:
    enabled: bool | str = "auto"  # true | false | auto (on for depth >= 110)
    lr: float = 0.01
    iters: int = 400  # warm-up ends after this many iterations ...
    until_error: float = 0.8  # ... or once a batch's training error is below this, whichever comes first


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # deterministic algorithms (bit-identical resume on CPU)
    threads: int = 0  # CPU threads (0 = PyTorch's default)
    eval_every: int = 1  # evaluate (and checkpoint) every N epochs, and after the last step
    checkpoint_every: int = 0  # also checkpoint every N iterations (0 = at evaluations only)
    keep_checkpoints: int = 2  # rolling checkpoints kept besides best.pt
    channels_last: bool | str = "auto"  # memory format (auto: on for CPU and CUDA, measured faster on both)
    amp: str = "none"  # none | bf16 (autocast; CUDA)
    # torch.compile of the training forward: off | default | reduce-overhead | max-autotune | auto (eager on every
    # device: no measured sure gain on CPU, and on CUDA compiled steps would change the numbers; training/fast.py)
    compile: str = "auto"
    tensorboard: bool | str = "auto"  # write TensorBoard events when tensorboard is installed
    progress: bool | str = "auto"  # progress bar (auto: when stderr is a terminal)
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA/NCCL only)
    init: str | None = None  # weights file to start from (resnetlab, pytorch_resnet_cifar10 or torchvision)
    tracker: list[str] = field(default_factory=list)  # experiment trackers: tensorboard, mlflow, wandb
    tracker_tags: list[str] = field(default_factory=list)  # KEY=VALUE tags of the tracker runs (a suite adds its own)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: str = "digits"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model": self.model.to_dict()}


SECTIONS = ("data", "optim", "schedule", "warmup", "run")
# Each setting's own bounds, checked in this order when a config is built; what settings mean together is the
# table in `validate`.
CHOICES = {"schedule.unit": ("iter", "epoch"), "run.amp": ("none", "bf16"),
           "run.compile": ("auto", "off", "default", "reduce-overhead", "max-autotune"),
           **dict.fromkeys(("warmup.enabled", "run.channels_last", "run.tensorboard", "run.progress"),
                           (True, False, "auto"))}
NON_NEGATIVE = ("data.pad", "data.val_split", "data.workers", "optim.weight_decay", "optim.momentum", "run.seed",
                "run.threads", "run.checkpoint_every", "warmup.iters")
# bounds on what would allocate or run without end, far above any real run: a value beyond one is a typo
# or an attack, refused before any work starts
AT_MOST = {"optim.batch_size": 2**20, "optim.accumulate": 2**12, "schedule.total": 10**9, "schedule.iters": 10**9,
           "schedule.epochs": 10**6, "warmup.iters": 10**9, "run.threads": 1024, "run.seed": 2**64 - 1,
           "run.eval_every": 10**6, "run.checkpoint_every": 10**9, "run.keep_checkpoints": 10**6,
           "data.workers": 256, "data.pad": 1024, "data.val_split": 10**8, "data.crop_size": 4096,
           "data.test_resize": 8192}


def default_recipe(source: str) -> str:
    """The recipe that suits a data source: digits -> digits, imagenet -> imagenet, else cifar."""
    scheme = source.split(":", 1)[0]
    return {"digits": "digits", "imagenet": "imagenet"}.get(scheme, "cifar")


def read_named_toml(name: str, directory: Path, kind: str) -> tuple[Path, dict[str, Any]]:
    """A TOML file by name from `directory` (or a path ending in .toml); one-line ConfigError otherwise."""
    path = Path(name) if name.endswith(".toml") else directory / f"{name}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in directory.glob("*.toml"))
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; {kind}s: {', '.join(names)}"
        raise ConfigError(f"{kind} {name!r}: not found{hint}")
    try:
        return path, check_nesting(tomllib.loads(path.read_text()), f"{kind} {path}")
    except RecursionError:
        raise ConfigError(f"{kind} {path}: nests deeper than {MAX_NESTING} levels") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{kind} {path}: not valid TOML ({exc})") from None


def read_recipe(name: str) -> dict[str, Any]:
    """A named recipe or a path to a TOML file."""
    return read_named_toml(name, RECIPE_DIR, "recipe")[1]


def build_config(
    recipe: str | None = None, model: str | None = None, data: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Defaults <- recipe <- explicit arguments <- `section.key=value` overrides; validated. The command line
    beats a recipe: `--data`/`--model` win over a recipe file's `data.source`/`model.name`."""
    cfg = Config()
    cfg.recipe = recipe or default_recipe(data if data is not None else cfg.data.source)
    _apply(cfg, _flatten(read_recipe(cfg.recipe)), origin=f"recipe {cfg.recipe!r}")
    if data is not None:
        cfg.data.source = data
    if model is not None:
        cfg.model.name = model
    _apply(cfg, overrides or {}, origin="override")
    validate(cfg)
    require(cfg.run.tracker)  # a new run's trackers (not a config read back for evaluation)
    return cfg


def config_from_dict(data: Any, where: str | None = None) -> Config:
    """Rebuild a config written to a run directory (or a checkpoint); `where` names that file in errors. A
    document of another shape is a one-line ConfigError naming the file and the field."""
    label = where or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a JSON object of sections, got {type(data).__name__}")
    cfg = Config()
    model, recipe = data.get("model", cfg.model), data.get("recipe", cfg.recipe)
    for name, value, fits, expected in (
        ("model", model, isinstance(model, dict) and isinstance(model.get("name"), str),
         "an object with a registry 'name'"),
        ("recipe", recipe, isinstance(recipe, str), "a name"),
        *((s, data.get(s), isinstance(data.get(s), dict | None), "an object of settings") for s in SECTIONS),
    ):
        if not fits:
            raise ConfigError(f"{label}: field {name!r}: expected {expected}, got {str(value)[:60]}")
    cfg.model = ModelConfig(model["name"], {k: v for k, v in model.items() if k != "name"})
    cfg.recipe = recipe
    flat = {f"{s}.{k}": v for s in SECTIONS for k, v in (data.get(s) or {}).items()}
    try:
        _apply(cfg, flat, origin="config")
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
    return cfg


def check_settings(flat: dict[str, Any], origin: str) -> None:
    """`SECTION.KEY = value` entries (a suite member's `set`): known settings, each of its field's type. The
    cross-field sense is checked when a run's whole config is built. Errors begin with `origin`."""
    try:
        _apply(Config(), flat, origin)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(origin) else f"{origin} {text}") from None


def _flatten(recipe: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for section, values in recipe.items():
        if not isinstance(values, dict):
            raise ConfigError(f"recipe: [{section}] must be a table of settings")
        flat.update({f"{section}.{k}": v for k, v in values.items()})
    return flat


def _apply(cfg: Config, flat: dict[str, Any], origin: str) -> None:
    for key, value in flat.items():
        section, _, name = key.partition(".")
        if section == "model" and name:
            if name != "name":
                cfg.model.fields[name] = value
            elif isinstance(value, str):
                cfg.model.name = value
            else:
                raise ConfigError("model.name: a registry name is required")
            continue
        if section not in SECTIONS or not name:
            close = difflib.get_close_matches(section, [*SECTIONS, "model"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{origin} {key!r}: expected SECTION.KEY with SECTION in "
                              f"{', '.join(SECTIONS)}, model{hint}")
        target = getattr(cfg, section)
        kinds = _kinds(type(target))
        if name not in kinds:
            close = difflib.get_close_matches(name, list(kinds), n=1)
            hint = f" (did you mean {section}.{close[0]}?)" if close else ""
            raise ConfigError(f"{origin} {key!r}: unknown setting{hint}")
        setattr(target, name, _coerce(key, value, kinds[name]))


@functools.cache
def _kinds(section: type) -> dict[str, tuple[Any, ...]]:
    """A section's fields, each as the types it accepts (`int | None`: int and NoneType; `list[str]`)."""
    return {name: typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
            for name, hint in typing.get_type_hints(section).items()}


def _coerce(key: str, value: Any, options: tuple[Any, ...]) -> Any:
    """Check a value against a field's types; ints are accepted where floats are expected."""
    if value is None and type(None) in options:
        return None
    for option in options:
        if typing.get_origin(option) in (list, tuple):
            return _as_list(key, value, typing.get_args(option)[0])
        if option in (bool, int, str) and isinstance(value, option) and not (option is int and isinstance(value, bool)):
            return value  # (a bool is an int to Python, never to a setting)
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                raise ConfigError(f"{key}: {str(value)[:20]}... is too large for a float") from None
            if not math.isfinite(number):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return number
    expected = " or ".join("none" if o is type(None) else o.__name__ for o in options)
    raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def takes_text(key: str, value: Any) -> bool:
    """Whether `value`, parsed from an override `key=TEXT`, is to be TEXT: the setting takes text but not this
    value (`data.normalize=none`, `run.init=true`, `data.source=folder:a,b`; `run.init=none` stays unset)."""
    section, _, name = key.partition(".")
    options = _kinds(_kinds(Config)[section][0]).get(name, ()) if section in SECTIONS else ()
    if isinstance(value, str) or str not in options:
        return False
    try:
        _coerce(key, value, options)
    except ConfigError:
        return True
    return False


def _as_list(key: str, value: Any, item: type) -> list[Any]:
    """A list setting: names (one name alone is a list of one, none an empty list) or integers."""
    if item is str:
        value = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{key}: expected a list of {'strings' if item is str else 'integers'}, got {value!r}")
    return list(value)


def validate(cfg: Config) -> None:
    """Each setting's bounds (the tables above), then the rules on settings together; the first broken is the
    one-line ConfigError. The data options, trackers and model spec are checked by their own code."""
    def value(key: str) -> Any:
        section, _, name = key.partition(".")
        return getattr(getattr(cfg, section), name)

    for key, allowed in CHOICES.items():
        if value(key) not in allowed:
            raise ConfigError(f"{key}: {value(key)!r} is not one of {', '.join(map(str, allowed))}")
    for key in NON_NEGATIVE:
        if value(key) < 0:
            raise ConfigError(f"{key}: must not be negative")
    for key, limit in AT_MOST.items():
        if value(key) is not None and value(key) > limit:
            raise ConfigError(f"{key}: {value(key)} is beyond the largest resnetlab accepts ({limit:,})")
    o, s, w, r = cfg.optim, cfg.schedule, cfg.warmup, cfg.run
    if beyond := [m for m in s.milestones if m > 10**9]:
        raise ConfigError(f"schedule.milestones: {beyond[0]} is beyond the largest resnetlab accepts (10**9)")
    for broken, error in (
        (not s.gamma >= 0, f"schedule.gamma: the lr factor at each milestone must not be negative, got {s.gamma}"),
        (o.accumulate < 1, "optim.accumulate: must be at least 1"),
        (o.batch_size < 1, "optim.batch_size: must be at least 1"),
        (not o.lr > 0, "optim.lr: must be positive"),
        (s.total < 1, "schedule.total: must be at least 1"),
        (sorted(s.milestones) != s.milestones or any(m < 0 for m in s.milestones),
         f"schedule.milestones: must be increasing and non-negative, got {s.milestones}"),
        (s.epochs is not None and s.iters is not None, "schedule.epochs and schedule.iters: give one budget, not both"),
        ((s.epochs is not None and not s.epochs > 0) or (s.iters is not None and s.iters < 1),
         "schedule budget: epochs/iters must be positive"),
        (not 0 < w.until_error <= 1 or not w.lr > 0, "warmup: lr must be positive and until_error in (0, 1]"),
        (r.init is not None and not r.init.strip(),
         "run.init: an empty path (leave it unset to train from the papers' initialisation)"),
        (r.eval_every < 1 or r.keep_checkpoints < 1, "run.eval_every and run.keep_checkpoints: must be at least 1"),
    ):
        if broken:
            raise ConfigError(error)
    cfg.data.options()
    check_tracking(cfg.run)
    cfg.model.spec()  # a bad `model.KEY` fails when the config is built, not when the run starts

"""The papers' experiments as suites, each table or figure a data file: what a suite is (`Suite`, `Member`, read
from `suites/*.toml`) and what one call makes of it (`SuiteRun`); `runner.run_suite` carries a call out."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from resnetlab.errors import ConfigError, ResnetlabError
from resnetlab.networks.registry import get_spec
from resnetlab.settings.config import Config, build_config, check_settings, read_named_toml, read_recipe

SUITE_DIR = Path(__file__).parent / "suites"
SCALES = ("paper", "cpu", "small")
# cpu scale: real images (CIFAR-10) on one 2-core CPU. The default budget was calibrated on that machine
# (docs/experiments.md): 2 epochs per run, the paper's schedule compressed (lr / 10 at 50% and 75%).
CPU_EPOCHS = 2.0


@dataclass(frozen=True)
class Member:
    label: str
    model: str
    override: dict[str, Any] = field(default_factory=dict)  # spec fields
    settings: dict[str, Any] = field(default_factory=dict)  # config fields, e.g. {"optim.lr": 0.05}
    small: dict[str, Any] = field(default_factory=dict)  # small scale: "model" and/or spec fields
    paper: float | str | None = None  # error in percent, "fail", or not printed
    # cpu scale: a table like `small`; true (absent) = the small table's nets, which are CPU-sized;
    # false = the member is left out at cpu scale (the budget does not allow every member)
    cpu: dict[str, Any] | bool = True

    def at(self, scale: str) -> tuple[str, dict[str, Any]]:
        """(registry model, spec overrides) at a scale."""
        if scale == "paper":
            return self.model, dict(self.override)
        if not self.runs_at(scale):
            raise ConfigError(f"member {self.label!r} is not run at cpu scale (cpu = false)")
        table = dict(self.cpu if scale == "cpu" and isinstance(self.cpu, dict) else self.small)
        return table.pop("model", self.model), {**self.override, **table}

    def runs_at(self, scale: str) -> bool:
        return not (scale == "cpu" and self.cpu is False)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-").lower()


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    source: str
    recipe: str
    members: tuple[Member, ...]


@dataclass(frozen=True)
class SuiteRun:
    """One call's work on a suite: the suite at its scale, its --out, data and recipe, and what every member's
    training gets (seeds, budget, device, --set settings); `only` narrows the members it trains."""

    suite: Suite
    out: Path
    scale: str
    data: str
    recipe: str
    seeds: int = 1
    epochs: float | None = None
    iters: int | None = None
    device: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    only: list[str] | None = None
    trainings: str | None = None

    def overrides(self, member: Member, seed: int) -> dict[str, Any]:
        """The `--set` of one member's training: its model fields and settings, this call's, seed and budget."""
        _, override = member.at(self.scale)
        overrides = {f"model.{k}": v for k, v in override.items()}
        overrides.update(member.settings, **self.settings)
        overrides["run.seed"] = seed
        if self.epochs is not None:
            overrides["schedule.epochs"] = self.epochs
        if self.iters is not None:
            overrides["schedule.iters"] = self.iters
        return overrides

    def config(self, member: Member, seed: int, overrides: dict[str, Any] | None = None) -> Config:
        """The config of one member's training (`overrides` as `overrides()` gives them, or those)."""
        model, _ = member.at(self.scale)
        return build_config(recipe=self.recipe, model=model, data=self.data,
                            overrides=self.overrides(member, seed) if overrides is None else overrides)


class SuiteStopped(ResnetlabError):
    """A member was stopped by SIGTERM/SIGINT (checkpoint written): the suite stops too."""

    exit_code = 3


class SuiteFailed(ResnetlabError):
    """Some member runs failed (the others ran, and results were written): the suite exits non-zero, naming
    them; the next call of the same command retries them."""

    exit_code = 1


def select_members(suite: Suite, only: list[str] | None) -> tuple[Member, ...]:
    """The members named in `only` (label or slug), in suite order; all of them when `only` is empty."""
    if not only:
        return suite.members
    known = {m.label: m for m in suite.members} | {m.slug: m for m in suite.members}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ConfigError(f"suite {suite.name}: no member {unknown[0]!r}; members (slugs): "
                          f"{', '.join(m.slug for m in suite.members)}")
    wanted = {known[name].slug for name in only}
    return tuple(m for m in suite.members if m.slug in wanted)


def at_scale(suite: Suite, scale: str) -> Suite:
    """The suite as it runs at `scale`: at cpu scale, without the members marked `cpu = false`."""
    members = tuple(m for m in suite.members if m.runs_at(scale))
    if not members:
        raise ConfigError(f"suite {suite.name}: no member runs at {scale} scale")
    return replace(suite, members=members)


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.toml"))


SUITE_KEYS = ("title", "source", "recipe", "members")
MEMBER_KEYS = ("label", "model", "override", "set", "small", "cpu", "paper")


def load_suite(name: str) -> Suite:
    """A named suite or a path to a suite TOML file, checked for shape before anything runs: known keys of
    the right types, distinct labels, every member's spec at every scale it runs at, and its `set` entries
    (known settings of the right types). Any problem is one ConfigError naming the file and the field."""
    path, data = read_named_toml(name, SUITE_DIR, "suite")
    where = f"suite {path}"
    _known_keys(data, SUITE_KEYS, where)
    for key in ("title", "source", "recipe"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{where}: {key} must be a string, got {_shown(data[key])}")
    recipe = data.get("recipe", "cifar")
    try:
        read_recipe(recipe)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    raw_members = data.get("members")
    if not isinstance(raw_members, list) or not raw_members:
        raise ConfigError(f"{where}: members must be a non-empty array of tables, got {_shown(raw_members)}")
    members = [_read_member(raw, f"{where}, member {i + 1}") for i, raw in enumerate(raw_members)]
    if len({m.slug for m in members}) != len(members):
        raise ConfigError(f"{where}: member labels must be distinct")
    return Suite(path.stem, data.get("title", path.stem), data.get("source", ""), recipe, tuple(members))


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _known_keys(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = [k for k in table if k not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}"
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint}")


def _read_member(raw: Any, where: str) -> Member:
    """One `[[members]]` table of a suite file, type-checked field by field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {_shown(raw)}")
    _known_keys(raw, MEMBER_KEYS, where)
    for key in ("label", "model"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string, got {_shown(raw.get(key))}")
    where = f"{where} ({raw['label']!r})"
    for key in ("override", "set", "small"):
        if not isinstance(raw.get(key, {}), dict):
            raise ConfigError(f"{where}: {key} must be a table, got {_shown(raw[key])}")
    cpu = raw.get("cpu", True)
    if not (isinstance(cpu, dict) or cpu is True or cpu is False):
        raise ConfigError(f"{where}: cpu must be a table or false, got {_shown(cpu)}")
    paper = raw.get("paper")
    percent = isinstance(paper, int | float) and not isinstance(paper, bool) and 0 <= paper <= 100
    if not (paper is None or isinstance(paper, str) or percent):
        raise ConfigError(f"{where}: paper must be an error in percent (0..100) or a note, got {_shown(paper)}")
    for table in ("small", "cpu"):
        model = raw.get(table, {}).get("model") if isinstance(raw.get(table), dict) else None
        if model is not None and not isinstance(model, str):
            raise ConfigError(f"{where}: {table}.model must be a registry name, got {_shown(model)}")
    member = Member(label=raw["label"], model=raw["model"], override=dict(raw.get("override", {})),
                    settings=dict(raw.get("set", {})), small=dict(raw.get("small", {})), paper=paper, cpu=cpu)
    if not member.slug:
        raise ConfigError(f"{where}: label needs a letter or digit (it names the member's directory)")
    check_settings(member.settings, origin=f"{where}: set")  # cross-field sense is checked per run
    for scale in SCALES:
        if not member.runs_at(scale):
            continue
        model, override = member.at(scale)
        try:
            get_spec(model, **override)
        except ResnetlabError as exc:
            raise ConfigError(f"{where} ({scale} scale): {exc}") from None
    return member


def suite_from_dict(data: dict[str, Any]) -> Suite:
    """A suite from `dataclasses.asdict(suite)`: how a worker in another process or machine gets it."""
    return Suite(**{**data, "members": tuple(Member(**m) for m in data["members"])})

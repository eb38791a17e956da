"""What a run writes and everything else reads: a metrics row per evaluation and the run's summary. On disk they
are the JSON of `to_dict()` (metrics.jsonl, a row a line, and summary.json), in the keys and key order of earlier
versions, so old run directories still read."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnetlab.errors import ResnetlabError, one_line
from resnetlab.files.jsondoc import parse_json

FAIL_ERROR = 0.20  # the papers' "fail": test error above 20%
FINAL_KEYS = ("test_error", "test_top5_error", "test_loss", "train_error", "train_loss", "val_error")


def known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(kw_only=True)
class MetricsRow:
    """One evaluation: the epoch's training sums, the test (and held-out) errors, the throughput.

    `epoch` is a whole number at an epoch's end and a fraction (3 decimals) at a run's last, partial one.
    The val_* fields exist only when the run holds out a validation split (`data.val_split`)."""

    epoch: int | float
    step: int
    lr: float
    train_loss: float | None  # None: not finite
    train_error: float
    test_loss: float
    test_error: float
    test_top5_error: float
    val_loss: float | None = None
    val_error: float | None = None
    val_top5_error: float | None = None
    images_per_s: float = 0.0
    eval_images_per_s: float = 0.0
    epoch_time_s: float = 0.0
    wall_time_s: float = 0.0

    @property
    def has_val(self) -> bool:
        return self.val_error is not None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if self.has_val or not k.startswith("val_")}

    def final(self) -> dict[str, Any]:
        """The errors summary.json reports as "final"."""
        return {k: getattr(self, k) for k in FINAL_KEYS if k != "val_error" or self.has_val}


@dataclass(kw_only=True)
class DivergenceRow:
    """The row that ends a diverged run: where it was and at which step the loss stopped being finite."""

    epoch: int
    step: int
    diverged: bool = True
    diverged_at_step: int | None
    lr: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def row_from_dict(data: dict[str, Any]) -> MetricsRow | DivergenceRow | None:
    """A line of metrics.jsonl as its record; None for a line that is neither (skipped by readers)."""
    if not isinstance(data, dict):
        return None
    try:
        if data.get("diverged"):
            return DivergenceRow(**known_fields(DivergenceRow, data))
        if "test_error" in data:
            row = known_fields(MetricsRow, data)
            if not all(_fits(k, v) for k, v in row.items()):
                return None  # a field of another shape: skipped like a cut line
            return MetricsRow(**row)
    except TypeError:  # a required key is missing
        return None
    return None


_NULLABLE = {f.name for f in dataclasses.fields(MetricsRow) if "None" in str(f.type)}


def _fits(key: str, value: Any) -> bool:
    """A row's field as resnetlab writes it: a number (null only where the row allows it), the step a whole
    number, an error a fraction in [0, 1]."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return value is None and key in _NULLABLE
    if key == "step":
        return isinstance(value, int) and value >= 0
    return 0 <= value <= 1 if key.endswith("_error") else True


def evaluation_rows(rows: list[dict[str, Any]]) -> list[MetricsRow]:
    return [r for r in map(row_from_dict, rows) if isinstance(r, MetricsRow)]


def best_of(row: MetricsRow) -> dict[str, Any]:
    """The record of the best evaluation so far (kept in the checkpointed progress as plain data):
    selected on the held-out split when there is one, else on the test set."""
    val = {"val_error": row.val_error} if row.has_val else {}
    return {"epoch": row.epoch, "step": row.step, "test_error": row.test_error, "test_top5_error": row.test_top5_error,
            **val, "selected_on": "val" if row.has_val else "test"}


@dataclass(kw_only=True)
class Summary:
    """summary.json: the run's outcome (final and best errors, the paper's "fail" verdict, divergence)."""

    model: str | None = None
    data: str | None = None
    recipe: str | None = None
    status: str | None = None  # finished | stopped | diverged
    diverged: bool = False
    diverged_at_step: int | None = None
    steps: int | None = None
    total_steps: int | None = None
    epochs: float | None = None
    final: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    fail: bool = False
    params: int | None = None
    wall_time_s: float | None = None
    images_per_s: float | None = None
    device: str | None = None
    torch: str | None = None
    resnetlab: str | None = None
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """A summary.json as written by this or an earlier version (missing keys read as unknown, and a null
        `final` or `best` as none)."""
        if not isinstance(data, dict):
            return cls()
        return cls(**{k: v for k, v in known_fields(cls, data).items() if v is not None or k not in ("final", "best")})

    @classmethod
    def checked(cls, data: Any, where: str) -> Summary:
        """`from_dict` of a document read back from disk, checked for shape first: a document that is not an
        object, or a known field of another type, is a one-line error naming `where` and the field."""
        if not isinstance(data, dict):
            raise ResnetlabError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for name, hint in typing.get_type_hints(cls).items():  # each field as its type says (`X | None`: X)
            declared = typing.get_args(hint)[0] if isinstance(hint, types.UnionType) else hint
            kinds, words = _KINDS[typing.get_origin(declared) or declared]
            value = data.get(name)
            if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool)
                                                                        and bool not in kinds)):
                raise ResnetlabError(f"{where}: field {name!r}: expected {words}, got {type(value).__name__}")
        for name in ("final", "best"):  # numbers, but for the name of the split the best was selected on
            for key, value in (data.get(name) or {}).items():
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if value is not None and not number and not (key == "selected_on" and isinstance(value, str)):
                    raise ResnetlabError(f"{where}: field '{name}.{key}': expected a number, got "
                                         f"{type(value).__name__}")
                if number and key.endswith("_error") and not 0 <= value <= 1:
                    raise ResnetlabError(f"{where}: field '{name}.{key}': expected an error in [0, 1], got {value}")
        return cls.from_dict(data)


# what a summary field's declared type accepts in a document (an int where a float is declared), and its words
_KINDS: dict[type, tuple[tuple[type, ...], str]] = {
    str: ((str,), "a string"), bool: ((bool,), "true or false"), int: ((int,), "an integer"),
    float: ((int, float), "a number"), dict: ((dict,), "an object")}


def read_summary(path: Path) -> Summary:
    """A run's summary.json, checked for shape (`Summary.checked`); unreadable or not JSON: one line."""
    try:
        data = parse_json(path.read_bytes(), str(path))
    except OSError as exc:
        raise ResnetlabError(f"{path}: unreadable ({one_line(exc, 120)})") from None
    return Summary.checked(data, str(path))


@dataclass
class WorkerResult:
    """What a non-zero rank of a multi-process run returns: rank 0 writes and reports the summary."""

    status: str
    diverged: bool
    rank: int

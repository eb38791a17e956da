"""Parsing `key=value` overrides from the command line into plain values, one rule for every command: a word
(`none`, `true`), a number or a list where the setting takes one, its text where the setting takes only text
(`data.normalize=none`, `config.takes_text`)."""

from __future__ import annotations

import json
from typing import Any

from resnetlab.errors import ConfigError
from resnetlab.settings.config import takes_text

_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(text: str) -> Any:
    """`0.1` -> 0.1, `-6` -> -6, `true` -> True, `none` -> None, `[3,4,6,3]` or `3,4,6,3` -> list, else a string."""
    raw = text.strip()
    if raw.lower() in _WORDS:
        return _WORDS[raw.lower()]
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        pass
    if "," in raw:
        return [parse_value(part) for part in raw.split(",") if part.strip()]
    return raw


def parse_assignments(items: list[str] | None, what: str = "override") -> dict[str, Any]:
    """Parse `["a.b=1", "c=x"]` into `{"a.b": 1, "c": "x"}`; a malformed item is a one-line ConfigError."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        parsed = parse_value(value)
        out[key] = value.strip() if takes_text(key, parsed) else parsed
    return out

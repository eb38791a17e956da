"""JSON documents read from files resnetlab did not necessarily write (config.json, summary.json, results,
safetensors metadata): parsed with a bound on nesting, so a hostile file is a one-line error, not Python's
RecursionError (a few thousand nested brackets exhaust the parser's stack) and not a deep structure that a
later recursive step (copying, printing, validating) trips over.
"""

from __future__ import annotations

import json
from typing import Any

from resnetlab.errors import ResnetlabError, one_line

MAX_NESTING = 64  # far above any document resnetlab writes (config.json nests 3 levels)


class JSONDocError(ResnetlabError, ValueError):
    """A document that is not JSON, or nests deeper than MAX_NESTING."""


def nesting(value: Any) -> int:
    """How deep lists and objects nest in `value` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_nesting(value: Any, where: str) -> Any:
    if nesting(value) > MAX_NESTING:
        raise JSONDocError(f"{where}: nests deeper than {MAX_NESTING} levels")
    return value


def parse_json(text: str | bytes, where: str) -> Any:
    """`json.loads(text)`; a JSONDocError naming `where` for text that is not JSON or nests too deeply."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONDocError(f"{where}: nests deeper than {MAX_NESTING} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JSONDocError(f"{where}: not valid JSON ({one_line(exc, 120)})") from None
    return check_nesting(value, where)

"""Model configs as JSON text from untrusted files: size and nesting depth bounded before anything walks them.

Keras writes configs about 20 levels deep; a forged one nested 100,000 deep would make every recursive walk
(json's own decoder included) fail with RecursionError, so depth is checked once here and later walks may recurse.
"""

from __future__ import annotations

import json
from typing import Any

from errors import ConversionError
from limits import MAX_JSON_BYTES, MAX_JSON_DEPTH


def nesting_depth(value: Any) -> int:
    """Depth of nested lists/dicts, computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item if isinstance(child, (list, dict)))
    return deepest


def parse_config_json(text: str | bytes, subject: str) -> Any:
    """The JSON value of `text`; ConversionError naming `subject` when it is too big, too deep or not JSON."""
    MAX_JSON_BYTES.check(len(text), subject, ConversionError, "bytes")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConversionError(
            f"{subject}: the JSON is nested too deeply to be a Keras config (more than "
            f"{MAX_JSON_DEPTH.value:.0f} levels)."
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        raise ConversionError(f"{subject}: is not valid JSON ({str(exc)[:200]}).") from exc
    if nesting_depth(value) > MAX_JSON_DEPTH.value:
        raise ConversionError(
            f"{subject}: the JSON is nested too deeply to be a Keras config (more than "
            f"{MAX_JSON_DEPTH.value:.0f} levels; raise {MAX_JSON_DEPTH.env} if it is real)."
        )
    return value

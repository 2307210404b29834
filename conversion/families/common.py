"""Small helpers shared by the layer converters."""

from __future__ import annotations

import math
from typing import Any

from conversion.registry import LayerProblem

# Keys every Keras layer config may hold (Keras 2 and 3), besides its class's own options
KERAS_LAYER_KEYS = frozenset({"name", "trainable", "dtype", "batch_input_shape", "batch_shape"})


def refuse_unknown_options(config: dict[str, Any], known: set[str] | frozenset[str], writer: str) -> None:
    """A config key outside `known` is an option this converter does not reproduce: whether it changes the
    output cannot be told, so the layer is refused rather than converted without it."""
    unknown = sorted(str(key)[:40] for key in set(config) - known - KERAS_LAYER_KEYS)
    if unknown:
        raise LayerProblem(
            f"config option(s) {', '.join(unknown[:8])} unknown to this converter (written by a newer "
            f"{writer}?): whether they change the output cannot be told"
        )


def single(value: Any, what: str) -> int:
    """Keras stores 1-D sizes as an int or a one-element list."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise LayerProblem(f"{what} {value} is not one-dimensional")
        value = value[0]
    return int(value)


def number(config: dict[str, Any], key: str, default: float, minimum: float | None = None) -> float:
    """A finite float setting of a layer (`default` when absent or null); an epsilon of NaN or -1 in a file
    would otherwise pass through and give NaN outputs that look like a conversion fault."""
    value = config.get(key)
    if value is None:
        return default
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise LayerProblem(f"{key} {value!r} is not a number") from None
    if not math.isfinite(result) or (minimum is not None and result < minimum):
        raise LayerProblem(
            f"{key} {value!r} must be a finite number" + (f" >= {minimum:g}" if minimum is not None else "")
        )
    return result


def pair(value: Any) -> tuple[int, int]:
    """Padding/cropping amounts: an int (both sides) or a pair."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def require_channels_last(config: dict[str, Any]) -> None:
    data_format = config.get("data_format", "channels_last")
    if data_format not in (None, "channels_last"):
        raise LayerProblem(f"data_format {data_format!r} is not supported (only channels_last)")


def axis_list(value: Any) -> list[int]:
    return [int(a) for a in value] if isinstance(value, (list, tuple)) else [int(value)]

"""Keras activation functions by the names Keras writes into model files, with Keras's exact definitions.

`hard_sigmoid` changed meaning between Keras 2 (0.2·x + 0.5, clipped) and Keras 3 (x/6 + 0.5, clipped): the
converter records which one the file needs as `hard_sigmoid_keras2` or `hard_sigmoid`.

A spec stores an activation as its name, or as `{"name": ..., <parameters>}` for one with parameters
(`{"name": "leaky_relu", "negative_slope": 0.25}`: fit_CNN.py's 'lrelu', resolved from a training record).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
KERAS3_LEAKY_RELU_SLOPE = 0.2


def _hard_sigmoid_keras2(x: Tensor) -> Tensor:
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def _hard_sigmoid_keras3(x: Tensor) -> Tensor:
    return F.relu6(x + 3.0) / 6.0


def _selu(x: Tensor) -> Tensor:
    return SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * torch.expm1(x))


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda x: x,
    "relu": torch.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "selu": _selu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "silu": F.silu,
    "exponential": torch.exp,
    "hard_sigmoid": _hard_sigmoid_keras3,
    "hard_sigmoid_keras2": _hard_sigmoid_keras2,
    "leaky_relu": lambda x: F.leaky_relu(x, KERAS3_LEAKY_RELU_SLOPE),
    "mish": lambda x: x * torch.tanh(F.softplus(x)),
    "softmax": lambda x: torch.softmax(x, dim=-1),
}


# Names that exist only inside specs (the converter chooses them); never offered as Keras activation names.
INTERNAL_NAMES = {"hard_sigmoid_keras2"}
KERAS_NAMES = sorted(set(ACTIVATIONS) - INTERNAL_NAMES)

ActivationSpec = str | dict[str, Any]


def leaky_relu_spec(negative_slope: float) -> dict[str, Any]:
    return {"name": "leaky_relu", "negative_slope": float(negative_slope)}


def get_activation(spec: ActivationSpec) -> Callable[[Tensor], Tensor]:
    """The activation a spec names; a KeyError names the known ones."""
    if isinstance(spec, dict):
        if spec.get("name") == "leaky_relu" and set(spec) == {"name", "negative_slope"}:
            slope = float(spec["negative_slope"])
            return lambda x: F.leaky_relu(x, slope)
        raise KeyError(f"unknown parametrized activation {spec!r}; known: leaky_relu with negative_slope")
    try:
        return ACTIVATIONS[spec]
    except (KeyError, TypeError):
        raise KeyError(f"unknown activation {spec!r}; known: {', '.join(sorted(ACTIVATIONS))}") from None


def keras_relu(x: Tensor, negative_slope: float, max_value: float | None, threshold: float) -> Tensor:
    """Keras's ReLU layer, step by step as Keras computes it (so that edge cases agree too)."""
    out = x * (x > threshold).to(x.dtype) if threshold != 0 else torch.relu(x)
    if max_value is not None:
        out = torch.clamp(out, 0.0, max_value)
    if negative_slope != 0:
        out = out - negative_slope * torch.relu(threshold - x)
    return out

"""One converter per Keras layer family, found by class name.

A converter is a function `(layer: KerasLayer) -> ConvertedLayer`: it reads the Keras config, takes every
weight it needs from `layer.weights` by name, and returns the module type, its plain-typed config and its
parameters (keyed like the module's state_dict). Raising `LayerProblem` reports a layer that cannot be
converted exactly; the orchestrator collects all problems before refusing.

Users add converters for their own layer classes with `register_layer_converter` (or the decorator form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import numpy as np

from errors import listed
from models.activations import ActivationSpec
from named_parts import Registry


class LayerProblem(Exception):
    """This layer cannot be converted exactly (unsupported option, missing or mis-shaped weight, ...)."""


class WeightBag:
    """A layer's weights by name; tracks what was taken so that leftovers can be reported."""

    def __init__(self, layer_name: str, weights: dict[str, np.ndarray]):
        self.layer_name = layer_name
        self._weights = dict(weights)
        self._taken: set[str] = set()  # names as stored (a view's own names map to them by _stored)
        self._stored: dict[str, str] = {}  # a view's name -> the name as stored, where they differ
        self.non_finite: dict[str, int] = {}  # weight name -> count of NaN/Inf values taken

    def _is_taken(self, name: str) -> bool:
        return self._stored.get(name, name) in self._taken

    def _match(self, suffix: str) -> list[str]:
        return [n for n in self._weights if n == suffix or n.endswith("/" + suffix)]

    def has(self, suffix: str) -> bool:
        return bool(self._match(suffix))

    def take(self, suffix: str, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
        """The one weight whose name ends with `/suffix`; checks the shape where given (None = any size)."""
        matches = [n for n in self._match(suffix) if not self._is_taken(n)]
        if len(matches) != 1:
            found = ", ".join(self._weights) or "none"
            what = "is missing" if not matches else f"is ambiguous ({', '.join(matches)})"
            raise LayerProblem(f"weight '{suffix}' {what}; weights stored for this layer: {found}")
        name = matches[0]
        stored = np.asarray(self._weights[name])
        if shape is not None and (
            len(shape) != stored.ndim or any(s is not None and s != v for s, v in zip(shape, stored.shape))
        ):
            raise LayerProblem(f"weight '{name}' has shape {stored.shape}, expected {shape_text(shape)}")
        if stored.dtype.kind not in "fiub":  # complex numbers, strings, objects: no float32 equals them
            raise LayerProblem(f"weight '{name}' is stored as {stored.dtype}, not as real numbers")
        with np.errstate(over="ignore", invalid="ignore"):
            value = stored.astype(np.float32)
        bad = ~np.isfinite(value)
        if bad.any():
            overflowed = bad & np.isfinite(stored) if stored.dtype.kind == "f" else bad
            if overflowed.any():
                raise LayerProblem(
                    f"weight '{name}' holds {stored[overflowed].flat[0]:.3g}, beyond the range of float32"
                )
            self.non_finite[name] = int(bad.sum())
        self._taken.add(self._stored.get(name, name))
        return value

    def leftovers(self) -> list[str]:
        return [n for n in self._weights if not self._is_taken(n)]

    def shape_of(self, suffix: str) -> tuple[int, ...] | None:
        """The shape of the one weight `take(suffix)` would take; None where there is not exactly one."""
        matches = [n for n in self._match(suffix) if not self._is_taken(n)]
        return tuple(np.shape(self._weights[matches[0]])) if len(matches) == 1 else None

    def _view(self, names: dict[str, str]) -> WeightBag:
        """A bag of some of these weights ({view name: name here}); what it takes counts as taken here too."""
        view = WeightBag(self.layer_name, {})
        view._weights = {new: self._weights[old] for new, old in names.items()}
        view._stored = {new: self._stored.get(old, old) for new, old in names.items()}
        view._taken, view.non_finite = self._taken, self.non_finite
        return view

    def part(self, segment: str) -> WeightBag:
        """The weights below the sublayer `segment` (a path component of their names), for a wrapper's inner
        layer."""
        return self._view({n: n for n in self._weights if n.startswith(segment + "/") or f"/{segment}/" in n})

    def renamed(self, rename: Callable[[str], str]) -> WeightBag:
        """The same weights under the names `rename` gives (a layout that names sublayers otherwise)."""
        return self._view({rename(n): n for n in self._weights})


@dataclass
class KerasLayer:
    name: str
    class_name: str
    config: dict[str, Any]
    weights: WeightBag
    keras_major: int  # 2 or 3: some definitions changed between versions (hard_sigmoid)
    # the activation resolved from the training record where the file stores a Python function (lambdas.py)
    resolved_activation: ActivationSpec | None = None


@dataclass
class ConvertedLayer:
    type: str  # a key of models.layers.MODULE_TYPES
    config: dict[str, Any]
    params: dict[str, np.ndarray] = field(default_factory=dict)


LayerConverter = Callable[[KerasLayer], ConvertedLayer]
# Layers that compute in these convert exactly (float64 differs from the float32 module by float32 rounding)
EXACT_COMPUTE_DTYPES = ("float32", "float64")
LAYER_CONVERTERS: Registry[LayerConverter] = Registry("layer converter for Keras class")
_Converter = TypeVar("_Converter", bound=LayerConverter)


@overload
def register_layer_converter(
    *class_names: str, converter: None = None, replace: bool = False
) -> Callable[[_Converter], _Converter]: ...
@overload
def register_layer_converter(*class_names: str, converter: _Converter, replace: bool = False) -> _Converter: ...
def register_layer_converter(
    *class_names: str, converter: LayerConverter | None = None, replace: bool = False
) -> LayerConverter | Callable[[LayerConverter], LayerConverter]:
    """Register `converter` for Keras class names; without `converter`, return a decorator. A class name that
    has a converter already is refused unless `replace=True`."""

    def add(fn: LayerConverter) -> LayerConverter:
        for class_name in class_names:
            LAYER_CONVERTERS.add(class_name, fn, replace)
        return fn

    return add(converter) if converter is not None else add


# other names Keras and TensorFlow take for dtypes
DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "int": "int64"}


def dtype_policy(config: Any) -> str:
    """The name of a layer's dtype policy: a dtype name, or the name inside a Keras 2 `Policy` / Keras 3
    `DTypePolicy` entry; float32 where the config names none (Keras then takes its default policy; a config
    that is not a dict is the converter's to refuse)."""
    value = config.get("dtype") if isinstance(config, dict) else None
    if isinstance(value, dict) and value.get("class_name") in ("Policy", "DTypePolicy", "FloatDTypePolicy"):
        value = value["config"].get("name") if isinstance(value.get("config"), dict) else None
    name = "float32" if value is None else str(value)
    return DTYPE_ALIASES.get(name, name)


def inexact_dtype_problem(policy: str, layer_names: list[str]) -> str:
    """Why layers under a policy other than float32/float64 are refused: under a 16-bit one (mixed_float16,
    bfloat16) Keras rounds their inputs and results to 16 bits, which a float32 module does not reproduce."""
    subject = (
        f"{'layer' if len(layer_names) == 1 else 'layers'} {listed([repr(n) for n in layer_names])} "
        f"{'computes' if len(layer_names) == 1 else 'compute'} under the dtype policy {policy[:60]!r}"
    )
    if "float16" not in policy:
        return f"{subject}, which this converter does not reproduce (it takes float32 and float64 layers)"
    return (
        f"{subject}, in Keras not in float32: a float32 module differs by more than float32 rounding. Rebuild "
        "the model under the float32 policy, load these weights into it and save that copy"
    )


def bare_class_name(class_name: str) -> str:
    """The class name without the `Custom>` / `package>` prefix that Keras 3 files put before it."""
    return class_name.rsplit(">", 1)[-1]


def find_converter(class_name: str) -> LayerConverter | None:
    """Converters are looked up by the class name, also without its prefix."""
    return LAYER_CONVERTERS.get(class_name) or LAYER_CONVERTERS.get(bare_class_name(class_name))


def shape_text(shape: tuple[int | None, ...]) -> str:
    """An expected shape as the messages print it: None (any size) as '?'."""
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"

"""Activations stored as Python functions, resolved from the training record — never executed.

fit_CNN.py (SelfishGene/neuron_as_deep_net) passes `'lrelu'` to Conv1D as `lambda x: LeakyReLU(alpha=0.25)(x)`.
Keras writes such a function into `model_config` as marshalled bytecode, `{"value": [<base64 code>, <defaults>,
<closure>]}` (older Keras: the string `"<lambda>"`); neither Keras can load that file, and the code must never
run. The training parameters pickle says what the function was: `architecture_dict['activation_function_per_layer']
[k - 1]` for layer `layer_k` (`'lrelu'` = LeakyReLU with slope 0.25, other entries Keras activation names).

What the file stores must agree with that record, else the layer is refused naming both: the closure and
defaults are read as JSON, the code's names and constants by conversion.marshal_reader (plain data, nothing
unmarshalled). For 'lrelu' the function must call LeakyReLU (or leaky_relu) and hold the slope 0.25 and no other
number; for a Keras name it must call that function and hold no number. Only the bare `"<lambda>"` string stores
nothing to check: the record alone decides, and the resolution says so (`checked_against_file: false`).
"""

from __future__ import annotations

import binascii
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conversion.families.activations import activation_name
from conversion.marshal_reader import Unreadable, code_facts
from conversion.pairing import PARAMS_SUFFIX, model_stem
from conversion.registry import LayerProblem
from errors import ConversionError, listed
from models.activations import ActivationSpec, leaky_relu_spec

LAMBDA_STRING = "<lambda>"
LEAKY_RELU_NAME = "lrelu"
LEAKY_RELU_SLOPE = 0.25  # fit_CNN.py's 'lrelu': a lambda around LeakyReLU(0.25)
TRAINING_LAYER_NAME = re.compile(r"^layer_(\d+)$")
ACTIVATION_LIST_KEY = "activation_function_per_layer"
LEAKY_RELU_CALLS = {"LeakyReLU", "leaky_relu"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedActivation:
    """How one layer's stored function was resolved: the training record's name and what the module computes."""

    layer: str
    recorded: str  # the architecture_dict's entry, e.g. 'lrelu'
    module: ActivationSpec  # e.g. {"name": "leaky_relu", "negative_slope": 0.25}
    checked: bool  # whether the file stored anything to check the record against

    def as_record(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "recorded": self.recorded,
            "activation": self.module,
            "activation_source": "architecture_dict",
            "checked_against_file": self.checked,
        }


@dataclass(frozen=True)
class StoredFunction:
    """What a file stores of a Python function in place of an activation name."""

    numbers: list[float]  # in its closure and defaults (JSON) and its code's constants
    calls: set[str] | None  # the names its code refers to; None when only "<lambda>" is stored
    unreadable: str = ""  # why its stored form could not be read (then it is refused)


def _plain_numbers(value: Any) -> list[float]:
    """Numbers (not booleans) in a stored closure or defaults list, nested lists and dicts included."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, list):
        return [number for item in value for number in _plain_numbers(item)]
    if isinstance(value, dict):
        return [number for item in value.values() for number in _plain_numbers(item)]
    return []


def stored_function(value: Any) -> StoredFunction | None:
    """The Python function an activation setting stores (Keras's `{"value": [code, defaults, closure]}`, also
    wrapped as `{"class_name": "__lambda__", "config": ...}`, or the bare `"<lambda>"` string); None for a name
    or a Keras 3 dict naming a function."""
    if value == LAMBDA_STRING:
        return StoredFunction([], None)
    if isinstance(value, dict) and value.get("class_name") == "__lambda__":
        value = value.get("config")
    if not (isinstance(value, dict) and "value" in value):
        return None
    parts = value["value"]
    if not (isinstance(parts, list) and parts and isinstance(parts[0], str)):
        return StoredFunction([], set(), unreadable="its stored form is not [code, defaults, closure]")
    numbers = _plain_numbers(parts[1:])
    try:
        facts = code_facts(binascii.a2b_base64(parts[0]))
    except (binascii.Error, Unreadable) as exc:
        return StoredFunction(numbers, set(), unreadable=f"its code cannot be read ({exc})")
    return StoredFunction(numbers + facts.numbers, facts.names)


def _exact(number: float) -> str:
    return repr(float(number))


def _module_activation(
    layer: str, recorded: Any, stored: StoredFunction, keras_major: int
) -> tuple[ActivationSpec | None, str | None]:
    """(spec, None) when the record and what the file stores agree, or (None, why not)."""
    if stored.unreadable:
        return None, f"layer '{layer}': the stored function is refused: {stored.unreadable}"
    calls = "" if stored.calls is None else f" (its code refers to {', '.join(sorted(stored.calls)) or 'nothing'})"
    if recorded == LEAKY_RELU_NAME:
        if stored.calls is not None and not stored.calls & LEAKY_RELU_CALLS:
            return None, (
                f"layer '{layer}': the architecture_dict names 'lrelu' but the stored function does not "
                f"call LeakyReLU{calls}"
            )
        wrong = [n for n in stored.numbers if n != LEAKY_RELU_SLOPE]
        if wrong or (stored.calls is not None and not stored.numbers):
            held = f"holds {_exact(wrong[0])}" if wrong else "holds no slope (it reads it from elsewhere)"
            return None, (
                f"layer '{layer}': the stored function {held} but the architecture_dict names 'lrelu' "
                f"(LeakyReLU with slope {LEAKY_RELU_SLOPE:g}){calls}; refused rather than guessing which "
                "is right"
            )
        return leaky_relu_spec(LEAKY_RELU_SLOPE), None
    try:
        spec = activation_name(recorded if isinstance(recorded, str) else repr(recorded), keras_major)
    except LayerProblem as exc:
        return None, f"layer '{layer}': the architecture_dict names {recorded!r}, which is not 'lrelu'; {exc}"
    if stored.numbers:
        return None, (
            f"layer '{layer}': the stored function holds {_exact(stored.numbers[0])} but the "
            f"architecture_dict names {recorded!r}, which takes no parameter; refused rather than "
            "guessing which is right"
        )
    if stored.calls is not None and recorded not in stored.calls:
        return None, (
            f"layer '{layer}': the architecture_dict names {recorded!r} but the stored function does not call it{calls}"
        )
    return spec, None


def _recorded_activations(params: dict[str, Any] | None) -> list | None:
    architecture = (params or {}).get("architecture_dict")
    entries = architecture.get(ACTIVATION_LIST_KEY) if isinstance(architecture, dict) else None
    return list(entries) if isinstance(entries, (list, tuple)) else None


def _layers_with_activation(model_config: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(name, class name, stored activation) of the top-level layers that have an `activation` setting."""
    layers = (model_config.get("config") or {}).get("layers") if isinstance(model_config, dict) else None
    found = []
    for entry in layers if isinstance(layers, list) else []:
        config = entry.get("config") if isinstance(entry, dict) else None
        if isinstance(config, dict) and "activation" in config:
            found.append(
                (str(entry.get("name") or config.get("name")), str(entry.get("class_name")), config["activation"])
            )
    return found


def resolve_stored_functions(
    path: Path,
    model_config: dict[str, Any],
    keras_major: int,
    params: dict[str, Any] | None,
    params_path: str | Path | None = None,
) -> dict[str, ResolvedActivation]:
    """The resolution of every activation stored as a Python function, by layer name; {} when there is none.

    One ConversionError lists every layer that cannot be resolved, with the remedy.
    """
    stored = [
        (name, class_name, function)
        for name, class_name, value in _layers_with_activation(model_config)
        if (function := stored_function(value)) is not None
    ]
    if not stored:
        return {}
    recorded = _recorded_activations(params)
    resolved: dict[str, ResolvedActivation] = {}
    unresolved: list[str] = []
    conflicts: list[str] = []
    training_layers = [name for name, _, _ in _layers_with_activation(model_config) if TRAINING_LAYER_NAME.match(name)]
    if recorded is not None and len(recorded) != len(training_layers):
        conflicts.append(
            f"the architecture_dict lists {len(recorded)} activation(s) but the model has "
            f"{len(training_layers)} layer(s) named layer_k: it describes another model"
        )
    for name, class_name, function in stored:
        match = TRAINING_LAYER_NAME.match(name)
        index = int(match.group(1)) - 1 if match else None
        if recorded is None or index is None or not 0 <= index < len(recorded):
            unresolved.append(f"'{name}' ({class_name})")
            continue
        spec, problem = _module_activation(name, recorded[index], function, keras_major)
        if problem:
            conflicts.append(problem)
        else:
            assert spec is not None  # _module_activation gives a spec or a problem
            resolved[name] = ResolvedActivation(name, str(recorded[index]), spec, function.calls is not None)
            if function.calls is None:
                log.warning(
                    "%s: layer '%s' stores its activation only as '<lambda>': taken from the "
                    "architecture_dict as %r, with nothing in the file to check it against",
                    path.name,
                    name,
                    recorded[index],
                )
    if unresolved:
        pickle_name = f"the parameters pickle {params_path}" if params_path else "the parameters pickle"
        if recorded is not None:
            remedy = (
                f"{pickle_name} has no {ACTIVATION_LIST_KEY} entry for them ({len(recorded)} entries): only "
                "layers named layer_k (entry k-1) can be resolved from a training record"
            )
        else:
            given = (
                f"{pickle_name} has no architecture_dict['{ACTIVATION_LIST_KEY}']"
                if params is not None
                else "no parameters pickle was given"
            )
            remedy = (
                f"{given}. The training parameters pickle resolves it: its architecture_dict"
                f"['{ACTIVATION_LIST_KEY}'] names the activation of layer_k at entry k-1 ('lrelu' = "
                "LeakyReLU with slope 0.25). Give it as the second argument: python model_converter.py "
                f"{path.name} {model_stem(path)}{PARAMS_SUFFIX} (main.py and folder conversion use the "
                "<stem>.pickle beside the model)"
            )
        raise ConversionError(
            f"{path}: layer(s) {listed(unresolved)} store their activation as a Python function (Keras saves a "
            "lambda such as fit_CNN.py's 'lrelu' as marshalled bytecode, older Keras as the string '<lambda>'), "
            f"which is never run; {remedy}. Nothing was written."
        )
    if conflicts:
        raise ConversionError(f"{path}: " + listed(conflicts, separator="; ") + ". Nothing was written.")
    return resolved

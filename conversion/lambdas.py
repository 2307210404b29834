"""Activations stored as Python functions, resolved from the training record — never executed.

fit_CNN.py (SelfishGene/neuron_as_deep_net) passes `'lrelu'` to Conv1D as `lambda x: LeakyReLU(alpha=0.25)(x)`.
Keras writes such a function into `model_config` as marshalled bytecode, `{"value": [<base64 code>, <defaults>,
<closure>]}` (older Keras: the string `"<lambda>"`); neither Keras can load that file, and unmarshalling the code
would run whatever a file holds. The training parameters pickle says what the function was:
`architecture_dict['activation_function_per_layer'][k - 1]` for layer `layer_k` (`'lrelu'` = LeakyReLU with slope
0.25, other entries Keras activation names). Plain numbers in the stored closure and defaults are read as JSON and
must agree with that name (the slope 0.25 for 'lrelu'), else the layer is refused naming both values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conversion.families.activations import activation_name
from conversion.pairing import PARAMS_SUFFIX, model_stem
from conversion.registry import LayerProblem
from errors import ConversionError
from models.activations import ActivationSpec, leaky_relu_spec

LAMBDA_STRING = "<lambda>"
LEAKY_RELU_NAME = "lrelu"
LEAKY_RELU_SLOPE = 0.25          # fit_CNN.py's 'lrelu': a lambda around LeakyReLU(0.25)
TRAINING_LAYER_NAME = re.compile(r"^layer_(\d+)$")
ACTIVATION_LIST_KEY = "activation_function_per_layer"


@dataclass(frozen=True)
class ResolvedActivation:
    """How one layer's stored function was resolved: the training record's name and what the module computes."""

    layer: str
    recorded: str             # the architecture_dict's entry, e.g. 'lrelu'
    module: ActivationSpec    # e.g. {"name": "leaky_relu", "negative_slope": 0.25}

    def as_record(self) -> dict[str, Any]:
        return {"layer": self.layer, "recorded": self.recorded, "activation": self.module,
                "activation_source": "architecture_dict"}


def stored_function(value: Any) -> list | None:
    """[code, defaults, closure] of an activation stored as a Python function (`[]` for the bare `"<lambda>"`
    string); None for anything else (a name, a Keras 3 dict naming a built-in, nothing)."""
    if value == LAMBDA_STRING:
        return []
    if isinstance(value, dict) and isinstance(value.get("value"), list):
        parts = value["value"]
        return parts if parts and isinstance(parts[0], str) else None
    return None


def _plain_numbers(value: Any) -> list[float]:
    """Numbers (not booleans) in a stored closure or defaults list, depth-first."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, list):
        return [number for item in value for number in _plain_numbers(item)]
    return []


def _module_activation(layer: str, recorded: Any, numbers: list[float], keras_major: int
                       ) -> tuple[ActivationSpec | None, str | None]:
    """(spec, None) for a name the record may give, or (None, why not)."""
    if recorded == LEAKY_RELU_NAME:
        wrong = [n for n in numbers if n != LEAKY_RELU_SLOPE]
        if wrong:
            return None, (f"layer '{layer}': the stored function holds {wrong[0]:g} but the architecture_dict names "
                          f"'lrelu' (LeakyReLU with slope {LEAKY_RELU_SLOPE:g}); refused rather than guessing which "
                          "is right")
        return leaky_relu_spec(LEAKY_RELU_SLOPE), None
    try:
        spec = activation_name(recorded if isinstance(recorded, str) else repr(recorded), keras_major)
    except LayerProblem as exc:
        return None, f"layer '{layer}': the architecture_dict names {recorded!r}, which is not 'lrelu'; {exc}"
    if numbers:
        return None, (f"layer '{layer}': the stored function holds {numbers[0]:g} but the architecture_dict names "
                      f"{recorded!r}, which takes no parameter; refused rather than guessing which is right")
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
            found.append((str(entry.get("name") or config.get("name")), str(entry.get("class_name")),
                          config["activation"]))
    return found


def resolve_stored_functions(path: Path, model_config: dict[str, Any], keras_major: int,
                             params: dict[str, Any] | None, params_path: str | Path | None = None
                             ) -> dict[str, ResolvedActivation]:
    """The resolution of every activation stored as a Python function, by layer name; {} when there is none.

    One ConversionError lists every layer that cannot be resolved, with the remedy.
    """
    stored = [(name, class_name, parts) for name, class_name, value in _layers_with_activation(model_config)
              if (parts := stored_function(value)) is not None]
    if not stored:
        return {}
    recorded = _recorded_activations(params)
    resolved: dict[str, ResolvedActivation] = {}
    unresolved: list[str] = []
    conflicts: list[str] = []
    for name, class_name, parts in stored:
        match = TRAINING_LAYER_NAME.match(name)
        index = int(match.group(1)) - 1 if match else None
        if recorded is None or index is None or not 0 <= index < len(recorded):
            unresolved.append(f"'{name}' ({class_name})")
            continue
        spec, problem = _module_activation(name, recorded[index], _plain_numbers(parts[1:]), keras_major)
        if problem:
            conflicts.append(problem)
        else:
            resolved[name] = ResolvedActivation(name, str(recorded[index]), spec)
    if unresolved:
        pickle_name = f"the parameters pickle {params_path}" if params_path else "the parameters pickle"
        given = (f"{pickle_name} has no {ACTIVATION_LIST_KEY} entry for them ({len(recorded)} entries)"
                 if recorded is not None else
                 f"{pickle_name} has no architecture_dict['{ACTIVATION_LIST_KEY}']"
                 if params is not None else "no parameters pickle was given")
        raise ConversionError(
            f"{path}: layer(s) {', '.join(unresolved)} store their activation as a Python function (Keras saves a "
            "lambda such as fit_CNN.py's 'lrelu' as marshalled bytecode, older Keras as the string '<lambda>'), "
            f"which is never run; {given}. "
            "The training parameters pickle resolves it: its architecture_dict['activation_function_per_layer'] "
            "names the activation of layer_k at entry k-1 ('lrelu' = LeakyReLU with slope 0.25). Give it as "
            f"the second argument: python model_converter.py {path.name} {model_stem(path)}{PARAMS_SUFFIX} (main.py "
            "and folder conversion use the <stem>.pickle beside the model). Nothing was written.")
    if conflicts:
        raise ConversionError(f"{path}: " + "; ".join(conflicts) + ". Nothing was written.")
    return resolved

"""TimeDistributed and Bidirectional: the wrapped layer's own converter, on the wrapper's weights.

A wrapper's config holds the wrapped layer as `{"class_name": ..., "config": ...}`; its weights lie below the
wrapper's name: TimeDistributed's directly (Keras 2: `td/kernel`) or under the inner layer (Keras 3:
`td/dense/kernel`); Bidirectional's under the forward and backward layers, named `forward_<name>` and
`backward_<name>` (Keras 2 keeps the inner layer's own name in the config, Keras 3 the prefixed one;
a `.keras` archive without stored names calls them `forward_layer` and `backward_layer`).
"""

from __future__ import annotations

import copy
from typing import Any

from conversion.families.common import refuse_unknown_options
from conversion.families.recurrent import RECURRENT_KINDS
from conversion.registry import (
    EXACT_COMPUTE_DTYPES,
    ConvertedLayer,
    KerasLayer,
    LayerProblem,
    WeightBag,
    bare_class_name,
    dtype_policy,
    find_converter,
    inexact_dtype_problem,
    register_layer_converter,
)
from models.sequence import MERGE_MODES

BIDIRECTIONAL_LAYERS = {*RECURRENT_KINDS, "TCN"}


def inner_entry(config: dict[str, Any], key: str) -> dict[str, Any]:
    entry = config.get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise LayerProblem(f"'{key}' does not describe a layer ({str(entry)[:80]})")
    if not isinstance(entry.get("config"), dict):
        raise LayerProblem(f"'{key}' ({entry['class_name']}) has no config")
    return entry


def registered_name(entry: dict[str, Any]) -> str:
    """The class a nested entry names (Keras 3 writes custom classes such as keras-tcn's as `Custom>TCN`)."""
    return str(entry.get("registered_name") or entry["class_name"])


def convert_inner(outer: KerasLayer, entry: dict[str, Any], bag: WeightBag) -> ConvertedLayer:
    """Convert the wrapped layer `entry` with the weights `bag`; its problems are the wrapper's."""
    class_name = entry["class_name"]
    converter = find_converter(registered_name(entry)) or find_converter(class_name)
    if converter is None:
        raise LayerProblem(f"the wrapped layer is a {class_name}, for which no converter is registered")
    name = str(entry["config"].get("name", class_name))
    if (policy := dtype_policy(entry["config"])) not in EXACT_COMPUTE_DTYPES:
        raise LayerProblem(inexact_dtype_problem(policy, [name]))
    if entry["config"].get("mask_zero"):
        raise LayerProblem(
            f"wrapped layer '{name}' ({class_name}) has mask_zero=True: a mask made inside a wrapper is not "
            "reproduced (Keras 2 passes it on, Keras 3 drops it)"
        )
    try:
        return converter(KerasLayer(name, class_name, entry["config"], bag, outer.keras_major))
    except LayerProblem as exc:
        raise LayerProblem(f"wrapped layer '{name}' ({class_name}): {exc}") from None


def as_spec(converted: ConvertedLayer) -> dict[str, Any]:
    return {"type": converted.type, "config": converted.config}


def prefixed(params: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}.{key}": value for key, value in params.items()}


@register_layer_converter("TimeDistributed")
def convert_time_distributed(layer: KerasLayer) -> ConvertedLayer:
    refuse_unknown_options(layer.config, {"layer"}, "Keras")
    inner = convert_inner(layer, inner_entry(layer.config, "layer"), layer.weights)
    return ConvertedLayer("time_distributed", {"layer": as_spec(inner)}, prefixed(inner.params, "layer"))


@register_layer_converter("Bidirectional")
def convert_bidirectional(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    refuse_unknown_options(c, {"layer", "backward_layer", "merge_mode"}, "Keras")
    merge_mode = c.get("merge_mode", "concat")
    if merge_mode not in MERGE_MODES:
        raise LayerProblem(f"merge_mode {merge_mode!r} is not one Keras has ({', '.join(map(str, MERGE_MODES))})")
    forward = copy.deepcopy(inner_entry(c, "layer"))  # copies: the file's config stays as read
    backward = (
        copy.deepcopy(inner_entry(c, "backward_layer"))
        if c.get("backward_layer") is not None
        else _reversed_copy(forward)
    )
    entries = {"forward": forward, "backward": backward}
    for entry in entries.values():
        wrapped = bare_class_name(registered_name(entry))
        if wrapped not in BIDIRECTIONAL_LAYERS:
            raise LayerProblem(
                f"wrapping a {entry['class_name']} is not supported "
                f"(supported: {', '.join(sorted(BIDIRECTIONAL_LAYERS))})"
            )
        if wrapped in RECURRENT_KINDS and layer.keras_major < 3 and "zero_output_for_mask" not in entry["config"]:
            # Keras 2's Bidirectional sets it on its copies without writing it into the config
            entry["config"]["zero_output_for_mask"] = bool(entry["config"].get("return_sequences", False))
    converted = {
        role: convert_inner(layer, entry, layer.weights.part(_segment(layer.weights, role, entry)))
        for role, entry in entries.items()
    }
    if converted["forward"].config.get("go_backwards") == converted["backward"].config.get("go_backwards"):
        raise LayerProblem("the backward layer runs in the same direction as the forward layer")
    for key in ("return_sequences", "return_state"):
        if bool(converted["forward"].config.get(key)) != bool(converted["backward"].config.get(key)):
            raise LayerProblem(f"the forward and backward layers differ in {key}")

    return ConvertedLayer(
        "bidirectional",
        {
            "forward_layer": as_spec(converted["forward"]),
            "backward_layer": as_spec(converted["backward"]),
            "merge_mode": merge_mode,
            "return_state": bool(converted["forward"].config.get("return_state", False)),
        },
        {
            **prefixed(converted["forward"].params, "forward_layer"),
            **prefixed(converted["backward"].params, "backward_layer"),
        },
    )


def _reversed_copy(entry: dict[str, Any]) -> dict[str, Any]:
    """Keras 2 writes no backward layer unless one was given: it is the forward one running backwards."""
    backward = copy.deepcopy(entry)
    backward["config"]["go_backwards"] = not bool(entry["config"].get("go_backwards", False))
    return backward


def _segment(bag: WeightBag, role: str, entry: dict[str, Any]) -> str:
    """The path component that the weights of the `role` ('forward' or 'backward') layer lie below."""
    name = str(entry["config"].get("name", ""))
    candidates = [f"{role}_{name}", name, f"{role}_layer"]
    found = [segment for segment in candidates if segment and bag.part(segment).leftovers()]
    return found[0] if found else candidates[0]

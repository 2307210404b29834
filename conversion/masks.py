"""Where an Embedding's `mask_zero` mask goes, and whether the conversion reproduces its effect.

Keras derives the mask from the token input (positions that are not 0) and passes it along the graph: layers
whose values it does not change hand it on (Dense, activations, normalizations, training-only layers), a
recurrent layer (or a Bidirectional one) uses it — a masked step keeps the states — and hands it on only with
its sequence (return_sequences). Those uses are reproduced: the call carries `mask`, the token tensor (see
models.graph). Any other layer that receives a mask may use it in a way not reproduced here: the model is
refused, naming it.

A Keras 3 Functional config records instead each mask a call was given (`mask=` the output of a
`NotEqual(tokens, 0)` op layer; a recurrent layer given an `initial_state` gets none): those are the masks, the
same rules apply to the layers that get one, and the op layers, used for nothing else, are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conversion.graph import ModelGraph
from conversion.registry import bare_class_name
from models.graph import tensor_base

MASK_PASSING = {
    "Dense",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "PReLU",
    "BatchNormalization",
    "LayerNormalization",
    "Dropout",
    "SpatialDropout1D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
}
MASK_USING = {"LSTM", "GRU", "SimpleRNN"}
MASK_OP = "NotEqual"  # Keras 3's op layer that computes an Embedding's mask


@dataclass
class MaskPlan:
    calls: list[tuple[str, list[str], str]]  # the graph's calls without the mask op layers
    masks: dict[int, str] = field(default_factory=dict)  # index into `calls` -> token tensor of its mask
    dropped: set[str] = field(default_factory=set)  # mask op layers left out
    problems: list[str] = field(default_factory=list)


def _inner(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("layer")
    return inner if isinstance(inner, dict) else {}


def _uses_masks(class_name: str, config: dict[str, Any]) -> bool:
    if class_name == "Bidirectional":
        return bare_class_name(str(_inner(config).get("class_name"))) in MASK_USING
    return class_name in MASK_USING


def _returns_sequences(class_name: str, config: dict[str, Any]) -> bool:
    settings = _inner(config).get("config") if class_name == "Bidirectional" else config
    return isinstance(settings, dict) and bool(settings.get("return_sequences", False))


def _mask_op_input(graph: ModelGraph, name: str) -> str | None:
    """The token tensor of a `NotEqual(tokens, 0)` layer called once; None for any other layer."""
    record = next((layer for layer in graph.layers if layer.name == name), None)
    if record is None or bare_class_name(str(record.class_name)) != MASK_OP or len(record.calls) != 1:
        return None
    args = record.call_args[0] if record.call_args else []
    if len(record.calls[0]) != 1 or len(args) != 2 or args[1] != 0:
        return None
    return record.calls[0][0]


def plan_masks(graph: ModelGraph) -> MaskPlan:
    records = {layer.name: layer for layer in graph.layers}
    plan = MaskPlan(calls=[])
    used_positionally = {tensor_base(ref) for _, refs, _ in graph.calls for ref in refs}
    plan.dropped = {
        tensor_base(mask).split(":")[0]
        for mask in graph.mask_arguments.values()
        if _mask_op_input(graph, mask.split(":")[0]) is not None and tensor_base(mask) not in used_positionally
    }
    mask_of: dict[str, str] = {}  # tensor name -> token tensor of its mask
    embeddings: dict[str, str] = {}  # token tensor -> the Embedding whose mask it gives
    for name, refs, output in graph.calls:
        if name in plan.dropped:
            continue
        index = len(plan.calls)
        plan.calls.append((name, refs, output))
        record = records[name]
        class_name = bare_class_name(str(record.class_name))
        if class_name == "Embedding" and record.config.get("mask_zero") and refs:
            mask_of[output] = refs[0]
            embeddings.setdefault(refs[0], name)
            continue
        if graph.masks_recorded:
            given = graph.mask_arguments.get(output)
            source = _mask_op_input(graph, given.split(":")[0]) if given is not None else None
            if given is not None and source not in embeddings:
                plan.problems.append(
                    f"layer '{name}' ({record.class_name}) is given a mask ('{given.split(':')[0]}') that is not "
                    "an Embedding's mask_zero mask; such masks are not reproduced"
                )
                continue
            sources = [source] + [None] * (len(refs) - 1)
        else:
            sources = [mask_of.get(ref) for ref in refs]
            source = next((s for s in sources if s is not None), None)
        if source is None:
            continue
        if class_name in MASK_PASSING and len(refs) == 1:
            mask_of[output] = source
        elif (
            _uses_masks(class_name, record.config) and sources[0] is not None and set(filter(None, sources)) == {source}
        ):
            plan.masks[index] = source
            if _returns_sequences(class_name, record.config):
                mask_of[output] = source
                if class_name == "Bidirectional" and record.config.get("merge_mode", "concat") is None:
                    mask_of[f"{tensor_base(output)}:1"] = source  # both sequences; states have no mask
        else:
            plan.problems.append(
                f"layer '{name}' ({record.class_name}) receives the mask of Embedding '{embeddings[source]}' "
                "(mask_zero=True); how this layer applies a mask is not reproduced, so the model cannot be "
                "converted exactly (converted: masks into LSTM, GRU, SimpleRNN and Bidirectional of them, "
                "through Dense, activation, normalization and dropout layers)"
            )
    return plan

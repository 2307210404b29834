"""Turn a Keras model config (Functional or Sequential, Keras 2 or 3 style) into layers and ordered calls.

Keras 2 writes inbound nodes as nested lists `[[["layer_1", 0, 0, {}]]]`; Keras 3 as dicts whose `args` hold
`__keras_tensor__` entries with a `keras_history` of (layer, node, tensor). Tensors are named
`"<layer>:<node>:<tensor>"`, where node is the index of the producing layer's call and tensor the index of its
outputs (a recurrent layer's states follow its output).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from conversion.registry import DTYPE_ALIASES
from errors import ConversionError, listed
from limits import MAX_LAYERS
from models.graph import tensor_base

INPUT_LAYER = "InputLayer"
SEQUENTIAL = "Sequential"
FUNCTIONAL = {"Functional", "Model"}


@dataclass
class LayerRecord:
    name: str
    class_name: Any  # as the config gives it: a str in a well-formed file (build_conversion checks)
    config: dict[str, Any]
    calls: list[list[str]] = field(default_factory=list)  # input tensor names of each call
    call_args: list[list[Any]] = field(default_factory=list)  # Keras 3: each call's positional arguments as stored


@dataclass
class ModelGraph:
    layers: list[LayerRecord]
    inputs: list[tuple[str, list[int | None]]]  # (tensor name, shape without batch)
    outputs: list[str]
    output_names: list[str]
    calls: list[tuple[str, list[str], str]]  # (layer name, input tensors, output tensor), topological order
    problems: list[str] = field(default_factory=list)  # reported with the layers' problems
    # Keras 3: output tensor of a call -> the tensor it was given as `mask=` (see conversion.masks)
    mask_arguments: dict[str, str] = field(default_factory=dict)
    masks_recorded: bool = False  # a Keras 3 Functional config: every call's `mask=` is in it
    input_dtypes: dict[str, str] = field(default_factory=dict)  # input tensor -> the dtype its InputLayer declares


def tensor_name(layer: str, node: int = 0, index: int = 0) -> str:
    return f"{layer}:{node}:{index}"


def _class_name(entry: dict[str, Any]) -> Any:
    return entry.get("registered_name") if entry.get("class_name") == "function" else entry["class_name"]


def _batch_shape(config: dict[str, Any]) -> list[int | None] | None:
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    return list(shape) if shape is not None else None


def _declared_dtype(config: dict[str, Any]) -> str:
    """The dtype an input layer declares (Keras casts what it is given to it); float32 where none is named."""
    dtype = config.get("dtype")
    return DTYPE_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else "float32"


def _history_refs(value: Any) -> list[str]:
    """Tensor names referenced by a Keras 3 call argument (nested lists/dicts of `__keras_tensor__`)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            layer, node, index = value["config"]["keras_history"]
            return [tensor_name(layer, node, index)]
        return [ref for v in value.values() for ref in _history_refs(v)]
    if isinstance(value, (list, tuple)):
        return [ref for v in value for ref in _history_refs(v)]
    return []


RECURRENT = {"LSTM", "GRU", "SimpleRNN"}


def _node_inputs(node: Any, layer_name: str, class_name: Any) -> list[str]:
    """The tensors of one call, positional first. Keras 3 passes a recurrent layer's `initial_state=` as a
    keyword; it follows the input, as Keras 2 stores it. `mask=` is read by _node_mask."""
    if isinstance(node, dict):  # Keras 3
        keywords = dict(node.get("kwargs") or {})
        keywords.pop("mask", None)
        states = keywords.pop("initial_state", None) if str(class_name).rsplit(">", 1)[-1] in RECURRENT else None
        if _history_refs(keywords):
            raise ConversionError(
                f"layer {layer_name!r} receives a tensor as a keyword argument; "
                "only positional tensor inputs, a mask and a recurrent layer's initial_state are supported."
            )
        return _history_refs(node.get("args", [])) + _history_refs(states)
    return [tensor_name(entry[0], entry[1], entry[2]) for entry in node]  # Keras 2


def _node_mask(node: Any) -> str | None:
    """The tensor a Keras 3 call was given as `mask=`, if any."""
    refs = _history_refs((node.get("kwargs") or {}).get("mask")) if isinstance(node, dict) else []
    if len(refs) > 1:
        raise ConversionError(f"a layer call is given {len(refs)} masks; one per call is supported.")
    return refs[0] if refs else None


def _refs(value: Any) -> list[str]:
    """`input_layers` / `output_layers`: a list of [layer, node, tensor] triples, or one triple."""
    if value and isinstance(value[0], str):
        value = [value]
    return [tensor_name(*triple[:3]) for triple in value]


def parse_model_config(model_config: dict[str, Any]) -> ModelGraph:
    class_name = model_config.get("class_name")
    config = model_config.get("config", {})
    if class_name == SEQUENTIAL:
        return _parse_sequential(config)
    if class_name in FUNCTIONAL:
        return _parse_functional(config)
    raise ConversionError(
        f"the top-level model is a {class_name!r}; only Functional and Sequential models are supported."
    )


def _layer_entries(config: dict[str, Any]) -> list[LayerRecord]:
    entries = config.get("layers", [])
    MAX_LAYERS.check(len(entries), "the model config", ConversionError, " layers")
    records = [
        LayerRecord(
            name=entry.get("name") or entry["config"]["name"],
            class_name=_class_name(entry),
            config=entry.get("config", {}),
        )
        for entry in entries
    ]
    twice = sorted(str(name) for name, count in Counter(record.name for record in records).items() if count > 1)
    if twice:
        raise ConversionError(
            f"layer name(s) {listed(map(repr, twice))} occur more than once in the model "
            "config; Keras gives every layer its own name, so which weights belong where is "
            "not clear."
        )
    return records


def _parse_sequential(config: dict[str, Any]) -> ModelGraph:
    layers = _layer_entries(config)
    if not layers:
        raise ConversionError("the Sequential model has no layers.")
    if layers[0].class_name == INPUT_LAYER:
        input_layer, layers = layers[0], layers[1:]
        shape = _batch_shape(input_layer.config)
        input_name = input_layer.name
        dtype = _declared_dtype(input_layer.config)
    else:  # Keras 2 made the input with the first layer's dtype
        shape = _batch_shape(layers[0].config) or config.get("build_input_shape")
        input_name = "input"
        dtype = _declared_dtype(layers[0].config)
    if shape is None:
        raise ConversionError("the Sequential model records no input shape (it was saved before being built).")
    current = tensor_name(input_name)
    calls = []
    for layer in layers:
        layer.calls = [[current]]
        calls.append((layer.name, [current], tensor_name(layer.name)))
        current = tensor_name(layer.name)
    return ModelGraph(
        layers=layers,
        inputs=[(tensor_name(input_name), list(shape[1:]))],
        outputs=[current],
        output_names=[layers[-1].name] if layers else [input_name],
        calls=calls,
        input_dtypes={tensor_name(input_name): dtype},
    )


def _parse_functional(config: dict[str, Any]) -> ModelGraph:
    records = _layer_entries(config)
    raw = {entry.get("name") or entry["config"]["name"]: entry for entry in config.get("layers", [])}
    inputs: list[tuple[str, list[int | None]]] = []
    layers: list[LayerRecord] = []
    pending: list[tuple[str, list[str], str]] = []
    mask_arguments: dict[str, str] = {}
    input_dtypes: dict[str, str] = {}
    for record in records:
        if record.class_name == INPUT_LAYER:
            shape = _batch_shape(record.config)
            if shape is None:
                raise ConversionError(f"input layer {record.name!r} records no shape.")
            inputs.append((tensor_name(record.name), list(shape[1:])))
            input_dtypes[tensor_name(record.name)] = _declared_dtype(record.config)
            continue
        nodes = raw[record.name].get("inbound_nodes", [])
        record.calls = [_node_inputs(node, record.name, record.class_name) for node in nodes]
        record.call_args = [list(node.get("args", [])) if isinstance(node, dict) else [] for node in nodes]
        for index, node in enumerate(nodes):
            if (mask := _node_mask(node)) is not None:
                mask_arguments[tensor_name(record.name, index)] = mask
        layers.append(record)
        pending.extend((record.name, refs, tensor_name(record.name, i)) for i, refs in enumerate(record.calls))
    input_order = _refs(config.get("input_layers", []))
    inputs.sort(key=lambda item: input_order.index(item[0]) if item[0] in input_order else len(input_order))
    outputs = _refs(config.get("output_layers", []))
    calls, problems = _topological(pending, {name for name, _ in inputs})
    return ModelGraph(
        layers=layers,
        inputs=inputs,
        outputs=outputs,
        output_names=output_names(outputs),
        calls=calls,
        problems=problems,
        mask_arguments=mask_arguments,
        input_dtypes=input_dtypes,
        masks_recorded=any(isinstance(node, dict) for entry in raw.values() for node in entry.get("inbound_nodes", [])),
    )


def output_names(outputs: list[str]) -> list[str]:
    """Keras names an output by its layer; an output whose layer name is taken already (a layer's states, a
    shared layer's second call) is named by its tensor, `layer:node:index`, so that every figure has its name."""
    names: list[str] = []
    for tensor in outputs:
        layer = tensor.split(":")[0]
        names.append(tensor if layer in names else layer)
    return names


def _topological(
    pending: list[tuple[str, list[str], str]], available: set[str]
) -> tuple[list[tuple[str, list[str], str]], list[str]]:
    """The calls in an order where every input exists before use (Kahn's algorithm, linear in calls and
    references; ready calls keep the config's order); a problem for references nothing produces, or a cycle."""
    consumers: dict[str, list[int]] = {}
    waiting = []
    for index, (_, refs, _) in enumerate(pending):
        missing = {tensor_base(ref) for ref in refs if ref not in available}
        waiting.append(len(missing))
        for ref in missing:
            consumers.setdefault(ref, []).append(index)
    ready = deque(index for index, count in enumerate(waiting) if count == 0)
    ordered = []
    while ready:
        index = ready.popleft()
        ordered.append(pending[index])
        for consumer in consumers.pop(tensor_base(pending[index][2]), []):
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                ready.append(consumer)
    if len(ordered) == len(pending):
        return ordered, []
    produced = {tensor_base(output) for _, _, output in pending}
    stuck = [call for index, call in enumerate(pending) if waiting[index] > 0]
    unproduced = sorted(
        {ref for _, refs, _ in stuck for ref in refs if ref not in available and tensor_base(ref) not in produced}
    )
    if unproduced:
        return ordered, [f"the model graph references tensors that no layer produces: {listed(map(repr, unproduced))}"]
    return ordered, [
        f"the model graph has a cycle: layer(s) {listed(sorted({c[0] for c in stuck}))} wait on each other's outputs"
    ]

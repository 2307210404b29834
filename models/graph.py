"""`KerasGraphModule`: runs a Keras model's graph (Functional or Sequential) from a plain-data spec.

The spec (stored in every `.pth`) lists the inputs, the layers (module key, type, config) and the calls in
topological order; tensors are named by strings. Inputs and outputs keep the Keras layout (batch, time,
channels) and the Keras order: one output is returned as a tensor, several as a tuple.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

import models.keras_tcn  # noqa: F401  (registers the keras-tcn module type)
from models.layers import MODULE_TYPES


def build_layer(layer_spec: dict[str, Any]) -> nn.Module:
    """A module from one layer entry of a spec ({'type': ..., 'config': {...}})."""
    module_type = MODULE_TYPES.get(layer_spec["type"])
    if module_type is None:
        raise KeyError(f"layer {layer_spec.get('name')!r} has unknown module type {layer_spec['type']!r}")
    return module_type(**layer_spec["config"])


class KerasGraphModule(nn.Module):
    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleDict({layer["key"]: build_layer(layer) for layer in spec["layers"]})
        self.input_names = [inp["name"] for inp in spec["inputs"]]
        self._input_tensors = [inp["tensor"] for inp in spec["inputs"]]
        self.input_shapes = [tuple(inp["shape"]) for inp in spec["inputs"]]
        self.output_names = list(spec["output_names"])
        self.metadata: dict = {}  # the conversion record (see conversion.converter), set by the converter or loader
        self._calls = [(call["layer"], list(call["inputs"]), call["output"]) for call in spec["calls"]]

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"model expects {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}")
        tensors: dict[str, Tensor] = {}
        for name, tensor, shape, x in zip(self.input_names, self._input_tensors, self.input_shapes, inputs):
            if x.shape[-1] != shape[-1]:
                raise ValueError(
                    f"input {name!r} expects {shape[-1]} channels on its last axis "
                    f"(Keras layout: batch, time, channels), got shape {tuple(x.shape)}"
                )
            tensors[tensor] = x
        return self.run_calls(tensors)

    def run_calls(self, tensors: dict[str, Tensor], skip: int | None = None) -> Tensor | tuple[Tensor, ...]:
        """Run the calls (all but call number `skip`, whose output is then given) on the named tensors."""
        for index, (layer_key, input_names, output_name) in enumerate(self._calls):
            if index != skip:
                tensors[output_name] = self.layers[layer_key](*(tensors[n] for n in input_names))
        outputs = tuple(tensors[name] for name in self.spec["outputs"])
        return outputs[0] if len(outputs) == 1 else outputs

    def trace(self, *inputs: Tensor) -> list[tuple[str, tuple[int, ...]]]:
        """Run once and return (layer key, output shape) per call; a failure names the layer that raised."""
        tensors = dict(zip(self._input_tensors, inputs))
        shapes = []
        for layer_key, input_names, output_name in self._calls:
            args = [tensors[n] for n in input_names]
            try:
                tensors[output_name] = self.layers[layer_key](*args)
            except RuntimeError as exc:
                arg_shapes = ", ".join(str(tuple(a.shape)) for a in args)
                raise ValueError(f"layer {layer_key!r} fails on input shape(s) {arg_shapes}: {exc}") from exc
            shapes.append((layer_key, tuple(tensors[output_name].shape)))
        return shapes

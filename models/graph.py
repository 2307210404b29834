"""`KerasGraphModule`: runs a Keras model's graph (Functional or Sequential) from a plain-data spec.

The spec (stored in every `.pth`) lists the inputs, the layers (module key, type, config) and the calls in
topological order; tensors are named by strings. Inputs and outputs keep the Keras layout (batch, time,
channels) and the Keras order: one output is returned as a tensor, several as a tuple.

A layer that returns several tensors (a recurrent layer with its states, Bidirectional with merge_mode None)
names them `<layer>:<node>:0`, `:1`, ... as Keras does. A call may carry `"mask": <tensor>`: the layer then
also gets `mask=` the positions where that tensor (the token input of an Embedding with `mask_zero`) is not 0.
An input with `"tokens": n` feeds Embeddings: it holds indices in [0, n), as integers or whole floats.
An input with `"dtype"` is cast as Keras's InputLayer casts what it is given to its declared dtype: float
values to an integer dtype truncate toward zero (before any mask is taken), to float16/bfloat16 they round.
Inputs other than token inputs are then cast to the parameters' dtype, as Keras layers cast their inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import models.keras_tcn  # noqa: F401  (registers the keras-tcn module type)
import models.sequence  # noqa: F401  (registers the sequence module types)
from models.layers import MODULE_TYPES


def build_layer(layer_spec: dict[str, Any]) -> nn.Module:
    """A module from one layer entry of a spec ({'type': ..., 'config': {...}})."""
    module_type = MODULE_TYPES.get(layer_spec["type"])
    if module_type is None:
        raise KeyError(f"layer {layer_spec.get('name')!r} has unknown module type {layer_spec['type']!r}")
    return module_type(**layer_spec["config"])


INTEGER_DTYPES = frozenset(f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64))
ROUNDED_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
CAST_DTYPES = INTEGER_DTYPES | set(ROUNDED_DTYPES)  # declared input dtypes that change the values given


def integer_range(dtype: str) -> tuple[int, int]:
    """The values an integer dtype (`int8` … `uint64`) holds."""
    bits = int(dtype.removeprefix("u").removeprefix("int"))
    return (0, 2**bits - 1) if dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def as_declared(x: Tensor, dtype: str | None, name: str) -> Tensor:
    """`x` as Keras's cast to the declared `dtype` leaves it: to an integer dtype truncated toward zero, to a
    16-bit float rounded. A value an integer dtype cannot hold (NaN, or beyond its range, which Keras's cast
    wraps or saturates depending on the platform) is an error, as is an index outside an Embedding's table."""
    if dtype in INTEGER_DTYPES:
        values = x.trunc() if x.is_floating_point() else x
        if values.numel():
            low, high = integer_range(dtype)
            smallest, largest = torch.stack(torch.aminmax(values)).tolist()  # one device sync
            if not (low <= smallest and largest <= high):  # NaN fails both
                raise ValueError(
                    f"input {name!r} is declared {dtype} in Keras, which holds whole numbers in [{low}, {high}]; "
                    f"got values from {smallest:.6g} to {largest:.6g}"
                    + (" (NaN among them)" if x.is_floating_point() and bool(values.isnan().any()) else "")
                )
        return values
    return x.to(ROUNDED_DTYPES[dtype]) if dtype in ROUNDED_DTYPES else x


def tensor_base(name: str) -> str:
    """`layer:node:k` → `layer:node`: the call that produced the tensor."""
    return name.rsplit(":", 1)[0]


class KerasGraphModule(nn.Module):
    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleDict({layer["key"]: build_layer(layer) for layer in spec["layers"]})
        self.input_names = [inp["name"] for inp in spec["inputs"]]
        self._input_tensors = [inp["tensor"] for inp in spec["inputs"]]
        self.input_shapes = [tuple(inp["shape"]) for inp in spec["inputs"]]
        # per input: the number of tokens of the Embeddings it feeds (integer indices), None for real values
        self.input_tokens: list[int | None] = [inp.get("tokens") for inp in spec["inputs"]]
        self._input_dtypes: list[str | None] = [inp.get("dtype") for inp in spec["inputs"]]
        self.output_names = list(spec["output_names"])
        self.metadata: dict = {}  # the conversion record (see conversion.converter), set by the converter or loader
        self._calls = [
            (call["layer"], list(call["inputs"]), call["output"], call.get("mask")) for call in spec["calls"]
        ]

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"model expects {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}")
        tensors: dict[str, Tensor] = {}
        compute_dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)
        for name, tensor, shape, dtype, tokens, x in zip(
            self.input_names, self._input_tensors, self.input_shapes, self._input_dtypes, self.input_tokens, inputs
        ):
            if x.ndim != len(shape) + 1 or (shape and shape[-1] is not None and x.shape[-1] != shape[-1]):
                raise ValueError(
                    f"input {name!r} expects shape (batch, {', '.join('?' if s is None else str(s) for s in shape)}) "
                    f"(Keras layout: batch, time, channels), got shape {tuple(x.shape)}"
                )
            x = as_declared(x, dtype, name)
            if tokens is None and x.dtype != compute_dtype:  # layers compute in their own dtype, as Keras casts
                x = x.to(compute_dtype)
            tensors[tensor] = x
        return self.run_calls(tensors)

    def _call(self, index: int, tensors: dict[str, Tensor]) -> None:
        layer_key, input_names, output_name, mask = self._calls[index]
        extra = {"mask": tensors[mask] != 0} if mask is not None else {}
        result = self.layers[layer_key](*(tensors[n] for n in input_names), **extra)
        if isinstance(result, tuple):
            base = tensor_base(output_name)
            tensors.update({f"{base}:{k}": t for k, t in enumerate(result)})
        else:
            tensors[output_name] = result

    def run_calls(self, tensors: dict[str, Tensor], skip: int | None = None) -> Tensor | tuple[Tensor, ...]:
        """Run the calls (all but call number `skip`, whose output is then given) on the named tensors."""
        for index in range(len(self._calls)):
            if index != skip:
                self._call(index, tensors)
        outputs = tuple(tensors[name] for name in self.spec["outputs"])
        return outputs[0] if len(outputs) == 1 else outputs

    def trace(self, *inputs: Tensor) -> dict[str, tuple[int, ...]]:
        """Run once and return the shape of every named tensor; a failure names the layer that raised."""
        tensors = dict(zip(self._input_tensors, inputs))
        for index, (layer_key, input_names, _, _) in enumerate(self._calls):
            try:
                self._call(index, tensors)
            except (RuntimeError, ValueError, IndexError) as exc:
                arg_shapes = ", ".join(str(tuple(tensors[n].shape)) for n in input_names if n in tensors)
                raise ValueError(f"layer {layer_key!r} fails on input shape(s) {arg_shapes}: {exc}") from exc
        return {name: tuple(t.shape) for name, t in tensors.items()}

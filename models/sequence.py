"""Keras's sequence layers at inference: Embedding, RepeatVector, the recurrent layers and the wrappers.

Layout as everywhere in `models`: (batch, time, features). The recurrent layers follow Keras's cells step by
step (gate order i, f, c, o for LSTM and z, r, h for GRU; `kernel` acts on the input, `recurrent_kernel` on the
previous output); their states start at zero unless given as extra inputs (Keras 2's `initial_state`).

A mask (the positions of an Embedding's input that are not 0, with `mask_zero=True`) reaches a recurrent layer
as the keyword `mask` (batch, time), as in Keras: a masked step leaves the states as they were, and its output
is zero (`zero_output_for_mask`) or the previous step's output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.activations import ActivationSpec, get_activation
from models.layers import MODULE_TYPES, check_time_extent, register_module_type

RECURRENT_KINDS = ("lstm", "gru", "simple_rnn")
MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def build_sublayer(spec: dict[str, Any]) -> nn.Module:
    """The module a wrapper holds ({'type': ..., 'config': {...}}, as a spec's layer entries)."""
    module_type = MODULE_TYPES.get(spec["type"])
    if module_type is None:
        raise KeyError(f"unknown module type {spec['type']!r} inside a wrapper")
    return module_type(**spec["config"])


class Embedding(nn.Module):
    """Keras Embedding: rows of a table by index. Indices come as integers, or as floats holding integers
    (Keras casts them to int32 first, truncating); an index outside [0, input_dim) is an error, as in Keras."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(input_dim, output_dim))

    def forward(self, x: Tensor) -> Tensor:
        indices = x if not x.is_floating_point() else x.to(torch.int64)
        indices = indices.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.weight.shape[0]):
            raise ValueError(
                f"token indices must lie in [0, {self.weight.shape[0]}) (the Embedding's input_dim); "
                f"got values from {int(indices.min())} to {int(indices.max())}"
            )
        return self.weight[indices]


class RepeatVector(nn.Module):
    """(batch, features) → (batch, n, features)."""

    def __init__(self, n: int):
        super().__init__()
        check_time_extent(n, "a RepeatVector")
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1).expand(x.shape[0], self.n, *x.shape[1:])


class TimeDistributed(nn.Module):
    """The wrapped layer applied to every time step alone: (batch, time, ...) folded into (batch·time, ...)."""

    def __init__(self, layer: dict[str, Any]):
        super().__init__()
        self.layer = build_sublayer(layer)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 3:
            raise ValueError(
                f"TimeDistributed takes (batch, time, ...) with at least 3 axes, got shape {tuple(x.shape)}"
            )
        batch, steps = x.shape[:2]
        y = self.layer(x.reshape(batch * steps, *x.shape[2:]))
        return y.reshape(batch, steps, *y.shape[1:])


class Recurrent(nn.Module):
    """Keras LSTM, GRU (reset_after either way) and SimpleRNN over (batch, time, features).

    Returns the last output (batch, units) or every output (return_sequences, in the order processed: reversed
    for go_backwards, as Keras does), followed by the final states (return_state: h for GRU and SimpleRNN,
    h and c for LSTM)."""

    def __init__(
        self,
        kind: str,
        input_size: int,
        units: int,
        activation: ActivationSpec = "tanh",
        recurrent_activation: ActivationSpec = "sigmoid",
        use_bias: bool = True,
        reset_after: bool = True,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        zero_output_for_mask: bool = False,
    ):
        super().__init__()
        if kind not in RECURRENT_KINDS:
            raise ValueError(f"unknown recurrent layer kind {kind!r} ({', '.join(RECURRENT_KINDS)})")
        gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
        self.kind, self.units, self.reset_after = kind, units, kind == "gru" and reset_after
        self.return_sequences, self.return_state = return_sequences, return_state
        self.go_backwards, self.zero_output_for_mask = go_backwards, zero_output_for_mask
        self.activation, self.recurrent_activation = activation, recurrent_activation
        self._act, self._recurrent_act = get_activation(activation), get_activation(recurrent_activation)
        self.kernel = nn.Parameter(torch.empty(input_size, gates * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, gates * units))
        bias_shape = (2, gates * units) if self.reset_after else (gates * units,)
        self.bias = nn.Parameter(torch.empty(bias_shape)) if use_bias else None

    @property
    def state_count(self) -> int:
        return 2 if self.kind == "lstm" else 1

    def forward(self, x: Tensor, *initial_state: Tensor, mask: Tensor | None = None) -> Tensor | tuple[Tensor, ...]:
        if x.ndim != 3:
            raise ValueError(f"a recurrent layer takes (batch, time, features), got shape {tuple(x.shape)}")
        batch, steps = x.shape[:2]
        if initial_state and len(initial_state) != self.state_count:
            raise ValueError(f"{self.kind} takes {self.state_count} initial state(s), got {len(initial_state)}")
        states = list(initial_state) or [x.new_zeros(batch, self.units) for _ in range(self.state_count)]
        if self.go_backwards:
            x = x.flip(1)
            mask = mask.flip(1) if mask is not None else None
        input_bias = self.bias[0] if self.reset_after and self.bias is not None else self.bias
        projected = x @ self.kernel + (input_bias if input_bias is not None else 0.0)
        output = x.new_zeros(batch, self.units)
        outputs = []
        for t in range(steps):
            new_output, new_states = self._step(projected[:, t], states)
            if mask is None:
                output, states = new_output, new_states
                outputs.append(output)
                continue
            keep = mask[:, t].unsqueeze(-1)
            states = [torch.where(keep, new, old) for new, old in zip(new_states, states)]
            output = torch.where(keep, new_output, output)
            outputs.append(
                torch.where(keep, new_output, torch.zeros_like(output)) if self.zero_output_for_mask else output
            )
        result = torch.stack(outputs, 1) if self.return_sequences else (outputs[-1] if outputs else output)
        return (result, *states) if self.return_state else result

    def _step(self, projected: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h = states[0]
        u = self.units
        if self.kind == "simple_rnn":
            h = self._act(projected + h @ self.recurrent_kernel)
            return h, [h]
        if self.kind == "lstm":
            z = projected + h @ self.recurrent_kernel
            i, f = self._recurrent_act(z[:, :u]), self._recurrent_act(z[:, u : 2 * u])
            c = f * states[1] + i * self._act(z[:, 2 * u : 3 * u])
            h = self._recurrent_act(z[:, 3 * u :]) * self._act(c)
            return h, [h, c]
        if self.reset_after:
            inner = h @ self.recurrent_kernel
            if self.bias is not None:
                inner = inner + self.bias[1]
            z = self._recurrent_act(projected[:, :u] + inner[:, :u])
            r = self._recurrent_act(projected[:, u : 2 * u] + inner[:, u : 2 * u])
            candidate = self._act(projected[:, 2 * u :] + r * inner[:, 2 * u :])
        else:
            inner = h @ self.recurrent_kernel[:, : 2 * u]
            z = self._recurrent_act(projected[:, :u] + inner[:, :u])
            r = self._recurrent_act(projected[:, u : 2 * u] + inner[:, u:])
            candidate = self._act(projected[:, 2 * u :] + (r * h) @ self.recurrent_kernel[:, 2 * u :])
        h = z * h + (1 - z) * candidate
        return h, [h]


class Bidirectional(nn.Module):
    """Keras Bidirectional: the forward layer and the backward one (go_backwards, its sequence flipped back into
    time order), merged by concat (last axis), sum, mul, ave or None (both returned); then the forward layer's
    final states and the backward one's (return_state)."""

    def __init__(
        self, forward_layer: dict[str, Any], backward_layer: dict[str, Any], merge_mode: str | None, return_state: bool
    ):
        super().__init__()
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"unknown merge_mode {merge_mode!r} ({', '.join(map(str, MERGE_MODES))})")
        self.forward_layer, self.backward_layer = build_sublayer(forward_layer), build_sublayer(backward_layer)
        self.merge_mode, self.return_state = merge_mode, return_state
        self.return_sequences = bool(forward_layer["config"].get("return_sequences", False))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor | tuple[Tensor, ...]:
        extra = {"mask": mask} if mask is not None else {}
        y, y_rev = self.forward_layer(x, **extra), self.backward_layer(x, **extra)
        states: tuple[Tensor, ...] = ()
        if self.return_state:
            states = (*y[1:], *y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:
            y_rev = y_rev.flip(1)
        if self.merge_mode is None:
            return (y, y_rev, *states)
        if self.merge_mode == "concat":
            merged = torch.cat([y, y_rev], dim=-1)
        elif self.merge_mode == "sum":
            merged = y + y_rev
        elif self.merge_mode == "mul":
            merged = y * y_rev
        else:
            merged = (y + y_rev) / 2
        return (merged, *states) if states else merged


for _module_class, _name in (
    (Embedding, "embedding"),
    (RepeatVector, "repeat_vector"),
    (TimeDistributed, "time_distributed"),
    (Recurrent, "recurrent"),
    (Bidirectional, "bidirectional"),
):
    register_module_type(_name, _module_class)

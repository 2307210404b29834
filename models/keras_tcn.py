"""keras-tcn's `TCN` layer (package `keras-tcn`, module `tcn`) at inference, operation for operation.

keras-tcn stacks residual blocks, one per dilation and stack (block b has dilation `dilations[b % len]` and
`nb_filters[b % len]` filters). Each block computes

    h = x
    twice:  h = activation(norm(conv_k(h)))          conv → optional batch/layer norm → activation → dropout
    h = activation(h)                                "Act_Conv_Blocks", applied once more
    block output = activation(matching(x) + h)       matching: 1×1 conv ('same') when channels differ, else x
    skip output  = h

The layer returns the sum of all blocks' skip outputs (use_skip_connections) or the last block's output,
either as a sequence or one step of it: the last step for causal padding, step T//2 for `same` padding.
`go_backwards` reverses the input in time and returns the result in that reversed order, as keras-tcn does.
Dropout is the identity at inference; weight normalization (older keras-tcn) is folded into the conv weights
by the converter, so this module never sees it.
"""

from __future__ import annotations

from torch import Tensor, nn

from limits import MAX_LAYERS
from models.layers import Activation, BatchNorm, Conv1d, LayerNorm, register_module_type

# Keras's default epsilon: keras-tcn builds BatchNormalization() / LayerNormalization() without arguments.
KERAS_NORM_EPSILON = 1e-3
NORMS = (None, "batch", "layer")


def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind == "batch":
        return BatchNorm(channels, axis=-1, epsilon=KERAS_NORM_EPSILON)
    if kind == "layer":
        return LayerNorm(axes=[-1], shape=[channels], epsilon=KERAS_NORM_EPSILON)
    return nn.Identity()


class ResidualBlock(nn.Module):
    """One keras-tcn residual block; returns (block output, skip output)."""

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel_size: int,
        dilation: int,
        padding: str,
        activation: str,
        norm: str | None,
    ):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                Conv1d(in_channels, filters, kernel_size, dilation=dilation, padding=padding),
                Conv1d(filters, filters, kernel_size, dilation=dilation, padding=padding),
            ]
        )
        self.norms = nn.ModuleList([_norm(norm, filters), _norm(norm, filters)])
        self.matching = Conv1d(in_channels, filters, 1, padding="same") if in_channels != filters else None
        self.activation = Activation(activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = self.activation(norm(conv(h)))
        h = self.activation(h)
        residual = x if self.matching is None else self.matching(x)
        return self.activation(residual + h), h


class KerasTCN(nn.Module):
    """keras-tcn's TCN layer; input and output in Keras layout (batch, time, channels)."""

    def __init__(
        self,
        in_channels: int,
        nb_filters: list[int],
        kernel_size: int,
        nb_stacks: int,
        dilations: list[int],
        padding: str = "causal",
        use_skip_connections: bool = True,
        return_sequences: bool = False,
        activation: str = "relu",
        norm: str | None = None,
        go_backwards: bool = False,
    ):
        super().__init__()
        if padding not in ("causal", "same"):
            raise ValueError(f"keras-tcn padding must be 'causal' or 'same', not {padding!r}")
        if norm not in NORMS:
            raise ValueError(f"unknown normalization {norm!r}; expected one of {NORMS}")
        if len(nb_filters) != len(dilations):
            raise ValueError(f"{len(nb_filters)} filter counts for {len(dilations)} dilations")
        if not 1 <= nb_stacks * len(dilations) <= MAX_LAYERS.value:  # a number in a file: checked before building
            raise ValueError(
                f"{nb_stacks} stacks of {len(dilations)} blocks: not between 1 and {MAX_LAYERS.env} "
                f"({MAX_LAYERS.value:,.0f}) residual blocks"
            )
        self.padding, self.use_skip_connections = padding, use_skip_connections
        self.return_sequences, self.go_backwards = return_sequences, go_backwards
        blocks, channels = [], in_channels
        for _ in range(nb_stacks):
            for filters, dilation in zip(nb_filters, dilations):
                blocks.append(ResidualBlock(channels, filters, kernel_size, dilation, padding, activation, norm))
                channels = filters
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        if self.go_backwards:
            x = x.flip(1)
        skip_sum: Tensor | None = None
        for block in self.blocks:
            x, skip = block(x)
            if self.use_skip_connections:
                skip_sum = skip if skip_sum is None else skip_sum + skip
        if skip_sum is not None:  # use_skip_connections (there is at least one block)
            x = skip_sum
        if self.return_sequences:
            return x
        return x[:, -1] if self.padding == "causal" else x[:, x.shape[1] // 2]


register_module_type("keras_tcn", KerasTCN)

"""Torch modules with Keras semantics, built from plain-typed configs.

Every module takes and returns tensors in Keras layout (batch, time, channels). `MODULE_TYPES` maps the type
names stored in a `.pth` spec to these classes, so a converted model is rebuilt without the converter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limits import MAX_INPUT_LENGTH
from models.activations import ActivationSpec, get_activation, keras_relu
from named_parts import Registry


def tf_same_padding(length: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding: output length ceil(length/stride); the odd element goes to the right."""
    out_length = math.ceil(length / stride)
    total = max((out_length - 1) * stride + (kernel - 1) * dilation + 1 - length, 0)
    return total // 2, total - total // 2


def check_time_extent(steps: int, what: str) -> None:
    """A kernel span, padding, crop or pool window is at most MAX_INPUT_LENGTH time steps: a layer's padding is
    allocated for every input, so a dilation of 10⁹ (one number in a small file) would ask for gigabytes."""
    if not 0 <= steps <= MAX_INPUT_LENGTH.value:
        raise ValueError(
            f"{what} spans {steps:,} time steps, more than the {MAX_INPUT_LENGTH.value:,.0f} of "
            f"{MAX_INPUT_LENGTH.env} ({MAX_INPUT_LENGTH.what})"
        )


class Activation(nn.Module):
    def __init__(self, activation: ActivationSpec):
        super().__init__()
        self.activation = activation
        self._fn = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)


class Conv1d(nn.Module):
    """Keras Conv1D: causal (left pad (k−1)·d), same (TensorFlow's split) or valid padding, then the activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        padding: str = "valid",
        bias: bool = True,
        activation: ActivationSpec = "linear",
    ):
        super().__init__()
        check_time_extent(
            (kernel_size - 1) * dilation + 1, f"a convolution (kernel {kernel_size}, dilation {dilation})"
        )
        check_time_extent(stride, "a convolution's stride")
        self.kernel_size, self.stride, self.dilation, self.groups = kernel_size, stride, dilation, groups
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.activation = Activation(activation)

    def time_padding(self, length: int) -> tuple[int, int]:
        """Zeros added (left, right) to a time axis of `length` steps before the convolution."""
        if self.padding == "causal":
            return (self.kernel_size - 1) * self.dilation, 0
        if self.padding == "same":
            return tf_same_padding(length, self.kernel_size, self.stride, self.dilation)
        return 0, 0

    def forward_channels_first(self, x: Tensor) -> Tensor:
        """The convolution on (batch, channels, time), without the activation."""
        padding = self.time_padding(x.shape[-1])
        if any(padding):
            x = F.pad(x, padding)
        return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.forward_channels_first(x.transpose(1, 2)).transpose(1, 2))


class Dense(nn.Module):
    """Keras Dense on the last axis of a tensor of any rank."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: ActivationSpec = "linear"):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.activation = Activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(F.linear(x, self.weight, self.bias))


def _broadcast_shape(ndim: int, axes: Sequence[int], sizes: Sequence[int]) -> list[int]:
    shape = [1] * ndim
    for axis, size in zip(axes, sizes):
        shape[axis] = size
    return shape


class BatchNorm(nn.Module):
    """Keras BatchNormalization at inference: moving statistics, the file's epsilon, optional gamma/beta."""

    running_mean: Tensor  # buffers (register_buffer below)
    running_var: Tensor

    def __init__(
        self, num_features: int, axis: int = -1, epsilon: float = 1e-3, center: bool = True, scale: bool = True
    ):
        super().__init__()
        self.axis, self.epsilon = axis, epsilon
        self.weight = nn.Parameter(torch.empty(num_features)) if scale else None
        self.bias = nn.Parameter(torch.empty(num_features)) if center else None
        self.register_buffer("running_mean", torch.empty(num_features))
        self.register_buffer("running_var", torch.empty(num_features))

    def forward(self, x: Tensor) -> Tensor:
        shape = _broadcast_shape(x.ndim, [self.axis], [x.shape[self.axis]])
        inv = torch.rsqrt(self.running_var + self.epsilon)
        if self.weight is not None:
            inv = inv * self.weight
        shift = -self.running_mean * inv
        if self.bias is not None:
            shift = shift + self.bias
        return x * inv.reshape(shape) + shift.reshape(shape)


class LayerNorm(nn.Module):
    """Keras LayerNormalization over the given axes (gamma/beta shaped like those axes), or RMS scaling."""

    def __init__(
        self,
        axes: list[int],
        shape: list[int],
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        rms_scaling: bool = False,
    ):
        super().__init__()
        self.axes, self.epsilon, self.rms_scaling = list(axes), epsilon, rms_scaling
        self.weight = nn.Parameter(torch.empty(shape)) if scale else None
        self.bias = nn.Parameter(torch.empty(shape)) if center else None

    def forward(self, x: Tensor) -> Tensor:
        axes = [a % x.ndim for a in self.axes]
        param_shape = _broadcast_shape(x.ndim, axes, [x.shape[a] for a in axes])
        if self.rms_scaling:
            inv = torch.rsqrt(torch.mean(x * x, dim=axes, keepdim=True) + self.epsilon)
            return x * inv * self.weight.reshape(param_shape) if self.weight is not None else x * inv
        mean = torch.mean(x, dim=axes, keepdim=True)
        var = torch.mean(torch.square(x - mean), dim=axes, keepdim=True)
        inv = torch.rsqrt(var + self.epsilon)
        if self.weight is not None:
            inv = inv * self.weight.reshape(param_shape)
        out = x * inv - mean * inv
        return out + self.bias.reshape(param_shape) if self.bias is not None else out


class ReLU(nn.Module):
    def __init__(self, negative_slope: float = 0.0, max_value: float | None = None, threshold: float = 0.0):
        super().__init__()
        self.negative_slope, self.max_value, self.threshold = negative_slope, max_value, threshold

    def forward(self, x: Tensor) -> Tensor:
        return keras_relu(x, self.negative_slope, self.max_value, self.threshold)


class LeakyReLU(nn.Module):
    def __init__(self, negative_slope: float):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)


class ELU(nn.Module):
    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, self.alpha * torch.expm1(x))


class PReLU(nn.Module):
    """Keras PReLU: a learned slope per element of the (non-batch) shape, shared along `shared_axes`."""

    def __init__(self, alpha_shape: list[int]):
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(alpha_shape))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x) - self.alpha * torch.relu(-x)


class Identity(nn.Module):
    """Layers that only act during training (Dropout, SpatialDropout1D, GaussianNoise, ...)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class Merge(nn.Module):
    """Keras merge layers: add, subtract, multiply, average, maximum, minimum, concatenate (on `axis`)."""

    def __init__(self, op: str, axis: int = -1):
        super().__init__()
        if op not in {"add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate"}:
            raise ValueError(f"unknown merge operation {op!r}")
        self.op, self.axis = op, axis

    def forward(self, *xs: Tensor) -> Tensor:
        if self.op == "concatenate":
            return torch.cat(xs, dim=self.axis)
        if self.op == "subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            if self.op in ("add", "average"):
                out = out + x
            elif self.op == "multiply":
                out = out * x
            elif self.op == "maximum":
                out = torch.maximum(out, x)
            else:
                out = torch.minimum(out, x)
        return out / len(xs) if self.op == "average" else out


class TimePad(nn.Module):
    """ZeroPadding1D (positive amounts) and Cropping1D (negative amounts) on the time axis."""

    def __init__(self, left: int, right: int):
        super().__init__()
        check_time_extent(abs(left) + abs(right), "a padding or cropping")
        self.left, self.right = left, right

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, (0, 0, self.left, self.right))


class Reshape(nn.Module):
    """Flatten (target_shape [-1]), Reshape and Permute (dims, batch axis excluded, 1-based as in Keras)."""

    def __init__(self, target_shape: list[int] | None = None, permute: list[int] | None = None):
        super().__init__()
        self.target_shape, self.permute = target_shape, permute

    def forward(self, x: Tensor) -> Tensor:
        if self.permute is not None:
            return x.permute(0, *self.permute)
        if self.target_shape is None:
            raise ValueError("a reshape needs target_shape or permute")
        return x.reshape(x.shape[0], *self.target_shape)


class Pool1d(nn.Module):
    """MaxPooling1D / AveragePooling1D; with `same` padding the average counts only real elements, as in TF."""

    def __init__(self, kind: str, pool_size: int, stride: int, padding: str = "valid"):
        super().__init__()
        check_time_extent(pool_size, "a pooling window")
        check_time_extent(stride, "a pooling stride")
        self.kind, self.pool_size, self.stride, self.padding = kind, pool_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)
        pad = tf_same_padding(x.shape[-1], self.pool_size, self.stride) if self.padding == "same" else (0, 0)
        if self.kind == "max":
            out = F.max_pool1d(F.pad(x, pad, value=-math.inf), self.pool_size, self.stride)
        else:
            sums = F.avg_pool1d(F.pad(x, pad), self.pool_size, self.stride) * self.pool_size
            ones = F.pad(torch.ones_like(x[:1, :1]), pad)
            counts = F.avg_pool1d(ones, self.pool_size, self.stride) * self.pool_size
            out = sums / counts
        return out.transpose(1, 2)


class GlobalPool1d(nn.Module):
    def __init__(self, kind: str, keepdims: bool = False):
        super().__init__()
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "max":
            return torch.amax(x, dim=1, keepdim=self.keepdims)
        return torch.mean(x, dim=1, keepdim=self.keepdims)


MODULE_TYPES: Registry[type[nn.Module]] = Registry("module type")
for _module_class, _name in (
    (Activation, "activation"),
    (Conv1d, "conv1d"),
    (Dense, "dense"),
    (BatchNorm, "batch_norm"),
    (LayerNorm, "layer_norm"),
    (ReLU, "relu"),
    (LeakyReLU, "leaky_relu"),
    (ELU, "elu"),
    (PReLU, "prelu"),
    (Identity, "identity"),
    (Merge, "merge"),
    (TimePad, "time_pad"),
    (Reshape, "reshape"),
    (Pool1d, "pool1d"),
    (GlobalPool1d, "global_pool1d"),
):
    MODULE_TYPES.add(_name, _module_class)


def unusable_normalizations(model: nn.Module) -> str:
    """'' or which BatchNorm layers have a moving variance + epsilon that is not positive: every output through
    them is NaN (in Keras too), so such a model is refused rather than run."""
    bad = [
        name
        for name, module in model.named_modules()
        if isinstance(module, BatchNorm) and not bool((module.running_var + module.epsilon > 0).all())
    ]
    if not bad:
        return ""
    return (
        f"the moving variance + epsilon is not positive in BatchNorm {', '.join(bad[:5])}"
        f"{', ...' if len(bad) > 5 else ''} (its outputs would be NaN)"
    )


def register_module_type(name: str, module_class: type[nn.Module], replace: bool = False) -> None:
    """Make a module class available to specs (used by custom-layer converters); a taken name is refused
    unless `replace=True`."""
    MODULE_TYPES.add(name, module_class, replace)

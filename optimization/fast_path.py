"""Both copies of each spike train through the model, computing the first layer once (the fast path).

The stimulated copy is the control copy plus the stimulus spikes s. When the model's only input feeds exactly
one Conv1d and nothing else, that layer's pre-activation is linear in its input:

    conv(control + s) = conv(control) + conv_without_bias(s)

so the first layer runs once per sample, the fixed stimulus response (computed once) is added for the
stimulated copy, and the rest of the network runs on both copies. For the neuron TCNs (about 1279 inputs,
kernel 54) the first layer holds most of the arithmetic, and forward and backward now pass it once instead of
twice. Its backward also computes only the input channels whose rates move (the excitatory ones when only
they move), as a convolution of the output gradient with the flipped, transposed kernel.

Models where the identity does not apply (not a converted Keras graph, several inputs, the input used by
anything but one Conv1d) take the plain path — both copies concatenated through the model — and the log says
why. `precision: auto` on CUDA times, on the first batch, fp32 and bf16 autocast, each with the first layer
as cuDNN's convolution or as one bf16 matrix product plus a shifted sum (cuDNN's bf16 convolutions can be
several times slower than fp32 for some shapes), keeps the fastest whose spike probabilities stay within
BF16_TOLERANCE of fp32's, and caches the choice per device, model (its weights) and batch shape for the
process. On other devices auto means fp32 with the convolution.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.graph import KerasGraphModule
from models.layers import Conv1d
from optimization.network import SpikeProbability
from optimization.runtime import autocast
from optimization.stimulus import PairedStimulus

BF16_TOLERANCE = 0.01  # largest |p_bf16 - p_fp32| of a spike probability for bf16 to be eligible
_TIMED_PASSES = 3
_SETTINGS: dict[tuple, tuple[str, str]] = {}


def first_conv_call(model: nn.Module) -> tuple[int | None, str]:
    """(index of the call that is the only consumer of the model's single input, '') or (None, why not)."""
    if not isinstance(model, KerasGraphModule):
        return None, f"the model is a {type(model).__name__}, not a converted Keras graph"
    if len(model.spec["inputs"]) != 1:
        return None, f"the model has {len(model.spec['inputs'])} inputs"
    source = model.spec["inputs"][0]["tensor"]
    if source in model.spec["outputs"]:
        return None, "the model returns its input"
    consumers = [index for index, call in enumerate(model.spec["calls"]) if source in call["inputs"]]
    if len(consumers) != 1:
        return None, f"the input feeds {len(consumers)} layers, not one"
    call = model.spec["calls"][consumers[0]]
    layer = model.layers[call["layer"]]
    if not isinstance(layer, Conv1d) or len(call["inputs"]) != 1:
        return None, f"the input feeds layer {call['layer']!r} ({type(layer).__name__}), not a Conv1d alone"
    return consumers[0], ""


class _FirstConv(torch.autograd.Function):
    """Stride-1 ungrouped convolution of padded input; backward: input gradient of the first channels only."""

    @staticmethod
    def forward(
        ctx: Any,  # torch's context object, which carries our own attributes to backward
        padded: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        dilation: int,
        backward_weight: torch.Tensor,
    ) -> torch.Tensor:
        ctx.dilation, ctx.backward_weight, ctx.channels = dilation, backward_weight, padded.shape[1]
        return F.conv1d(padded, weight, bias, 1, 0, dilation)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        weight = ctx.backward_weight.to(grad_output.dtype)
        reach = (weight.shape[-1] - 1) * ctx.dilation
        grad = F.conv1d(F.pad(grad_output, (reach, reach)), weight, None, 1, 0, ctx.dilation)
        if grad.shape[1] < ctx.channels:  # channels whose rates do not move get no gradient
            grad = F.pad(grad, (0, 0, 0, ctx.channels - grad.shape[1]))
        return grad, None, None, None, None


class _ShiftedMatmul(torch.autograd.Function):
    """The same convolution as one bf16 matrix product and a shifted sum (for GPUs where cuDNN's bf16 is slow).

    y[n, s, k, o] = sum_c x[n, c, s] W[o, c, k];  out[n, o, t] = bias[o] + sum_k y[n, t + k d, k, o].
    Backward: gy[n, t + k d, k, o] = grad[n, o, t] (the positions never collide), grad_x = gy @ W_first^T.
    """

    @staticmethod
    def forward(
        ctx: Any,  # torch's context object, which carries our own attributes to backward
        padded: torch.Tensor,
        matrix: torch.Tensor,
        bias: torch.Tensor | None,
        outputs: int,
        dilation: int,
        backward_matrix: torch.Tensor,
    ) -> torch.Tensor:
        batch, _, padded_length = padded.shape
        kernel_outputs = matrix.shape[1]
        kernel = kernel_outputs // outputs
        length = padded_length - (kernel - 1) * dilation
        products = padded.transpose(1, 2).to(matrix.dtype) @ matrix  # (n, padded length, kernel * outputs)
        windows = (batch, length, kernel, outputs)
        strides = (padded_length * kernel_outputs, kernel_outputs, dilation * kernel_outputs + outputs, 1)
        out = products.as_strided(windows, strides).sum(dim=2, dtype=torch.float32)
        if bias is not None:
            out = out + bias
        ctx.save_for_backward(backward_matrix)
        ctx.shape, ctx.windows, ctx.strides, ctx.channels = products.shape, windows, strides, padded.shape[1]
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None, None]:
        (backward_matrix,) = ctx.saved_tensors
        spread = grad_output.new_zeros(ctx.shape, dtype=backward_matrix.dtype)
        spread.as_strided(ctx.windows, ctx.strides).copy_(
            grad_output.transpose(1, 2)[:, :, None, :].expand(ctx.windows)
        )
        grad = (spread @ backward_matrix.T).transpose(1, 2)
        if grad.shape[1] < ctx.channels:
            grad = F.pad(grad, (0, 0, 0, ctx.channels - grad.shape[1]))
        return grad, None, None, None, None, None


class PairedForward:
    """control spikes (n, time, segments) -> spike probability (2n, time) of [control copies; stimulated copies].

    `grad_channels`: how many leading input channels need a gradient (None: all).
    """

    def __init__(
        self,
        model: SpikeProbability,
        paired: PairedStimulus,
        fast_path: str,
        precision: str,
        grad_channels: int | None,
        logger: logging.Logger,
    ):
        self.model = model
        self.paired = paired
        self.requested_precision = precision
        self.precision: str | None = None  # resolved on the first batch, with first_layer
        self.first_layer = "conv"  # or "matmul": _ShiftedMatmul, a candidate of precision auto on CUDA
        self.matrices: tuple[torch.Tensor, torch.Tensor] | None = None
        self.logger = logger
        self.first_call: int | None = None
        reason = "loop.fast_path is off"
        if fast_path == "auto":
            self.first_call, reason = first_conv_call(model.model)
        if self.first_call is None:
            logger.info("plain path (both copies through the whole model): %s", reason)
            return
        graph = model.model
        assert isinstance(graph, KerasGraphModule)  # first_conv_call finds calls in converted graphs only
        self.graph = graph
        call = graph.spec["calls"][self.first_call]
        self.first_output = call["output"]
        layer = graph.layers[call["layer"]]
        assert isinstance(layer, Conv1d)  # first_conv_call checked it
        self.layer = layer
        mask = paired.mask.T[None]  # (1, segments, time)
        with torch.no_grad():
            # conv(s) - conv(0) removes the bias: the response of the stimulus spikes alone.
            self.stimulus_response = self.layer.forward_channels_first(mask) - self.layer.forward_channels_first(
                torch.zeros_like(mask)
            )
        self.backward_weight: torch.Tensor | None = None
        if self.layer.stride == 1 and self.layer.groups == 1:
            channels = self.layer.weight.shape[1] if grad_channels is None else grad_channels
            self.backward_weight = self.layer.weight[:, :channels].transpose(0, 1).flip(-1).contiguous()
        logger.info(
            "fast path: first layer %r computed once for both copies%s",
            call["layer"],
            "" if grad_channels is None else f", input gradient for the first {grad_channels} channels",
        )

    @property
    def fast(self) -> bool:
        return self.first_call is not None

    def __call__(self, control: torch.Tensor) -> torch.Tensor:
        if self.precision is None:
            self.precision, self.first_layer = choose_setting(
                self, control.detach(), self.requested_precision, self.logger
            )
        with autocast(control.device, self.precision):
            if not self.fast:
                return self.model(torch.cat([control, control + self.paired.mask]))
            return self._fast(control)

    def _fast(self, control: torch.Tensor) -> torch.Tensor:
        pre = self._first_layer(control.transpose(1, 2))
        stimulated = pre + self.stimulus_response.to(pre.dtype)
        first = self.layer.activation(torch.cat([pre, stimulated]).transpose(1, 2))
        return self.model.select(self.graph.run_calls({self.first_output: first}, skip=self.first_call))

    @property
    def matmul_possible(self) -> bool:
        return self.fast and self.backward_weight is not None

    def _first_layer(self, x: torch.Tensor) -> torch.Tensor:
        if not self.matmul_possible:
            return self.layer.forward_channels_first(x)
        padded = F.pad(x, self.layer.time_padding(x.shape[-1]))
        if self.first_layer == "matmul":
            matrix, backward_matrix = self._matrices()
            return _ShiftedMatmul.apply(
                padded, matrix, self.layer.bias, self.layer.weight.shape[0], self.layer.dilation, backward_matrix
            )
        return _FirstConv.apply(padded, self.layer.weight, self.layer.bias, self.layer.dilation, self.backward_weight)

    def _matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel as a bf16 (channels, kernel * outputs) matrix, and its rows that need a gradient."""
        if self.matrices is None:
            assert self.backward_weight is not None  # matmul_possible
            weight = self.layer.weight
            matrix = weight.permute(1, 2, 0).reshape(weight.shape[1], -1).to(torch.bfloat16)
            self.matrices = matrix, matrix[: self.backward_weight.shape[0]]
        return self.matrices

    def signature(self) -> tuple:
        """What makes two measurements comparable: the path, the gradient channels, and the weights: their shapes
        (the timings) and a fingerprint of their values (the accuracy check), so that two models of one
        architecture, such as those of a sweep, are measured each."""
        tensors = list(self.model.state_dict().values())
        shapes = tuple(tuple(t.shape) for t in tensors)
        with torch.no_grad():  # one float64 sum per tensor, fetched at once
            sums = tuple(torch.stack([t.detach().double().sum() for t in tensors]).tolist()) if tensors else ()
        grad = None if not self.fast or self.backward_weight is None else self.backward_weight.shape[0]
        return self.fast, shapes, sums, grad


def choose_setting(
    forward: PairedForward, control: torch.Tensor, requested: str, logger: logging.Logger
) -> tuple[str, str]:
    """(precision, first-layer formulation): as requested with cuDNN's convolution unless precision is auto;
    auto: fp32 off CUDA, else the fastest accurate candidate measured on this batch (cached)."""
    if requested != "auto":
        return requested, "conv"
    device = control.device
    if device.type != "cuda":
        return "fp32", "conv"
    key = (
        torch.cuda.get_device_name(device),
        torch.backends.cudnn.benchmark,
        tuple(control.shape),
        forward.signature(),
    )
    if key not in _SETTINGS:
        _SETTINGS[key] = _measure_settings(forward, control, logger)
    return _SETTINGS[key]


def _measure_settings(forward: PairedForward, control: torch.Tensor, logger: logging.Logger) -> tuple[str, str]:
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        logger.info("precision fp32: this GPU has no native bf16")
        return "fp32", "conv"
    try:
        return _compare_settings(forward, control, logger)
    except RuntimeError as error:  # no bf16 kernel for some operation, or out of memory: the loop copes in fp32
        logger.info("precision fp32: measuring bf16 failed (%s)", error)
        return "fp32", "conv"
    finally:
        forward.precision, forward.first_layer = None, "conv"


def _compare_settings(forward: PairedForward, control: torch.Tensor, logger: logging.Logger) -> tuple[str, str]:
    """The fastest of fp32 and bf16 autocast, each with the first layer as cuDNN convolution or as a bf16 matrix
    product (fast path only), among those whose spike probabilities stay within BF16_TOLERANCE of fp32's."""
    candidates = [("fp32", "conv"), ("bf16", "conv")]
    if forward.matmul_possible:
        candidates += [("fp32", "matmul"), ("bf16", "matmul")]
    outputs = {}
    with torch.no_grad():
        for setting in candidates:
            forward.precision, forward.first_layer = setting
            outputs[setting] = forward(control)
    deviations = {setting: float((output - outputs[candidates[0]]).abs().max()) for setting, output in outputs.items()}
    accurate = [setting for setting in candidates if deviations[setting] <= BF16_TOLERANCE]
    milliseconds = {setting: _time_step(forward, control, setting) for setting in accurate}
    chosen = min(milliseconds, key=milliseconds.__getitem__)
    logger.info(
        "precision %s, first layer as %s: forward+backward of %d pairs in ms: %s; rejected as inaccurate "
        "(max deviation > %g): %s",
        *chosen,
        control.shape[0],
        ", ".join(f"{p}/{f} {t:.1f}" for (p, f), t in milliseconds.items()),
        BF16_TOLERANCE,
        ", ".join(f"{p}/{f} ({deviations[(p, f)]:.2g})" for p, f in candidates if (p, f) not in accurate) or "none",
    )
    return chosen


def _time_step(forward: PairedForward, control: torch.Tensor, setting: tuple[str, str]) -> float:
    """Median milliseconds of one forward+backward pass (after two untimed passes for warm-up and autotuning)."""
    forward.precision, forward.first_layer = setting
    times = []
    for attempt in range(2 + _TIMED_PASSES):
        leaf = control.clone().requires_grad_(True)
        synchronize(control.device)
        started = time.perf_counter()
        forward(leaf).sum().backward()
        synchronize(control.device)
        if attempt >= 2:
            times.append(1e3 * (time.perf_counter() - started))
    return statistics.median(times)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

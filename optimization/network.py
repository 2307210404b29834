"""The model as the optimization sees it: spikes (batch, time, segments) in, spike probability (batch, time) out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from errors import ConfigError, OptimizationError
from optimization.config import OptimizationConfig


@dataclass(frozen=True)
class InputLayout:
    """Segments and duration of the optimized input: excitatory channels first, then inhibitory."""

    num_excitatory: int
    num_inhibitory: int
    duration_ms: int

    @property
    def num_segments(self) -> int:
        return self.num_excitatory + self.num_inhibitory


def _model_input_shape(model: nn.Module) -> tuple[int | None, int | None]:
    """(time, channels) from a converted model's `input_shapes`, or (None, None) when it does not carry them."""
    shapes = getattr(model, "input_shapes", None)
    if not shapes:
        return None, None
    time, channels = shapes[0]
    return time, channels


def resolve_layout(model: nn.Module, config: OptimizationConfig, logger: logging.Logger) -> InputLayout:
    """Segment counts and duration from the config, falling back on (and checked against) the model's input."""
    model_time, channels = _model_input_shape(model)
    excitatory, inhibitory = config.num_excitatory, config.num_inhibitory
    if channels is None:
        if excitatory is None or inhibitory is None:
            raise ConfigError(
                "the model does not state its input channels (no input_shapes): set optimization.num_excitatory "
                "and optimization.num_inhibitory"
            )
    elif excitatory is None:
        if inhibitory is None:
            excitatory = channels // 2
            inhibitory = channels - excitatory
            if channels % 2:
                logger.warning(
                    "the model has an odd number of input channels (%d): assuming %d excitatory then %d inhibitory; "
                    "set optimization.num_excitatory/num_inhibitory if that is wrong",
                    channels,
                    excitatory,
                    inhibitory,
                )
        else:
            excitatory = channels - inhibitory
    elif inhibitory is None:
        inhibitory = channels - excitatory
    if channels is not None and (excitatory < 1 or inhibitory < 0 or excitatory + inhibitory != channels):
        raise ConfigError(
            f"num_excitatory ({excitatory}) + num_inhibitory ({inhibitory}) must equal the model's "
            f"{channels} input channels, with at least one excitatory segment"
        )
    duration = config.duration_ms if config.duration_ms is not None else model_time
    if duration is None:
        raise ConfigError(
            "the model has no fixed input window (input_shapes missing or time None): set optimization.duration_ms"
        )
    return InputLayout(excitatory, inhibitory, duration)


class SpikeProbability(nn.Module):
    """Wraps the frozen model and returns its spike-probability output as (batch, time)."""

    def __init__(self, model: nn.Module, output_index: int):
        super().__init__()
        self.model = model
        self.output_index = output_index

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.select(self.model(spikes))

    def select(self, outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The spike probability (batch, time) among the model's outputs."""
        if isinstance(outputs, (tuple, list)):
            outputs = outputs[self.output_index]
        elif self.output_index != 0:
            raise OptimizationError(f"spike_output_index is {self.output_index} but the model returns a single tensor")
        return outputs[..., 0].float()


def prepare_model(
    model: nn.Module, config: OptimizationConfig, layout: InputLayout, device: torch.device
) -> SpikeProbability:
    """Freeze the model on `device` (in place: eval mode, no parameter gradients) and check its output once."""
    model.to(device).eval()
    model.requires_grad_(False)
    wrapped = SpikeProbability(model, config.spike_output_index)
    # Silence and saturation: a non-probability output rarely stays inside [0, 1] for both.
    probe = torch.stack(
        [
            torch.zeros(layout.duration_ms, layout.num_segments, device=device),
            torch.ones(layout.duration_ms, layout.num_segments, device=device),
        ]
    )
    try:
        with torch.no_grad():
            outputs = model(probe)
    except Exception as error:  # the model's own error is the reason: report it with the input we gave
        raise OptimizationError(
            f"the model rejects an input of shape (2, {layout.duration_ms}, {layout.num_segments}) "
            f"(batch, time, segments): {error}"
        ) from error
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    if config.spike_output_index >= len(outputs):
        raise ConfigError(
            f"spike_output_index is {config.spike_output_index} but the model has {len(outputs)} output(s)"
        )
    spike = outputs[config.spike_output_index]
    if spike.shape != (2, layout.duration_ms, 1):
        raise OptimizationError(
            f"model output {config.spike_output_index} has shape {tuple(spike.shape)}; a spike probability of "
            f"shape (2, {layout.duration_ms}, 1) was expected"
        )
    if not bool(torch.isfinite(spike).all()):
        raise OptimizationError(
            f"model output {config.spike_output_index} is NaN/Inf for silent and for saturated input: the model "
            "computes nothing finite (are its weights finite? a diverged training run leaves them NaN)"
        )
    if not bool(((spike >= 0) & (spike <= 1)).all()):
        raise OptimizationError(
            f"model output {config.spike_output_index} is not a probability (values outside [0, 1]); "
            "check spike_output_index"
        )
    return wrapped

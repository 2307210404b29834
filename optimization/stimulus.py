"""The paired stimulus: every sampled spike train becomes a control copy and a stimulated copy.

Both copies share all spikes except at the stimulus time on the stimulus segments: silent in the control copy,
one spike each in the stimulated copy. The response is read in the window [time_ms, time_ms + window_ms).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from errors import ConfigError
from optimization.config import StimulusConfig
from optimization.network import InputLayout


@dataclass(frozen=True)
class Stimulus:
    segments: tuple[int, ...]
    time_ms: int
    window_ms: int

    def response_window(self) -> slice:
        return slice(self.time_ms, self.time_ms + self.window_ms)


def choose_stimulus(config: StimulusConfig, layout: InputLayout, seed: int) -> Stimulus:
    """The configured stimulus, its segments drawn (seeded) from the candidates when not given; all checked."""
    time_ms = layout.duration_ms // 2 if config.time_ms is None else config.time_ms
    if time_ms + config.response_window_ms > layout.duration_ms:
        raise ConfigError(
            f"stimulus time {time_ms} plus response window {config.response_window_ms} ms exceeds the "
            f"duration of {layout.duration_ms} ms"
        )
    if config.segments is not None:
        segments = list(config.segments)
    else:
        candidates = list(range(layout.num_excitatory)) if config.candidates is None else list(config.candidates)
        _check_indices("stimulus.candidates", candidates, layout)
        if config.count > len(candidates):
            raise ConfigError(f"stimulus.count={config.count} exceeds the {len(candidates)} distinct candidates")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(candidates), generator=generator)[: config.count]
        segments = [candidates[i] for i in order.tolist()]
    _check_indices("stimulus.segments", segments, layout)
    inhibitory = [i for i in segments if i >= layout.num_excitatory]
    if inhibitory and not config.allow_inhibitory:
        raise ConfigError(
            f"stimulus segments {inhibitory} are inhibitory (the first {layout.num_excitatory} segments are "
            "excitatory): the stimulus is one excitatory spike per segment; set stimulus.allow_inhibitory=true "
            "to stimulate inhibitory segments on purpose"
        )
    return Stimulus(tuple(sorted(segments)), time_ms, config.response_window_ms)


def _check_indices(name: str, indices: list[int], layout: InputLayout) -> None:
    if not indices:
        raise ConfigError(f"{name} is empty")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"{name} repeats segments: {indices}")
    outside = [i for i in indices if not 0 <= i < layout.num_segments]
    if outside:
        raise ConfigError(f"{name} {outside} outside the {layout.num_segments} segments (0..{layout.num_segments - 1})")


class PairedStimulus:
    """Builds control and stimulated copies of spike trains (batch, time, segments) on their device."""

    def __init__(self, stimulus: Stimulus, layout: InputLayout, device: torch.device):
        mask = torch.zeros(layout.duration_ms, layout.num_segments, device=device)
        mask[stimulus.time_ms, list(stimulus.segments)] = 1.0
        self.mask = mask
        self.stimulus = stimulus

    def control(self, spikes: torch.Tensor) -> torch.Tensor:
        """The control copy: the stimulus segments silent at the stimulus time."""
        return spikes * (1.0 - self.mask)

    def pair(self, spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        control = self.control(spikes)
        return control, control + self.mask

"""The optimized quantity: rates (patterns, time, segments) kept in [0, max_rate], some of them moving.

Moving segments:
  excitatory  only the excitatory rates move; the inhibitory ones stay at their initial values.
  all         every rate moves.
  tied        the excitatory rates move; inhibitory segment j follows excitatory segment
              floor(j * num_excitatory / num_inhibitory) (spread evenly when the counts differ) with a delay:
              inh[t, j] = mean_inh * exc[t - delay, source(j)] / mean(exc), mean(exc) over all excitatory
              segments and times of the pattern; before the delay exc[t - delay] is taken as mean(exc), so the
              inhibitory rate starts at mean_inh. Clamped to max_rate.
Bounds: `projection` optimizes the rates and clamps them after each step; `sigmoid` optimizes logits with
rate = max_rate * sigmoid(logit) (initial rates at 0 or max_rate start a hair inside the interval).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from errors import ConfigError

from .config import ConstraintsConfig

_SIGMOID_MARGIN = 1e-4


class RateParameters(nn.Module):
    def __init__(self, initial_rates: torch.Tensor, num_excitatory: int, config: ConstraintsConfig):
        super().__init__()
        if config.moving_segments == "tied" and config.tied_delay_ms >= initial_rates.shape[1]:
            raise ConfigError(
                f"constraints.tied_delay_ms={config.tied_delay_ms} must be shorter than the duration "
                f"({initial_rates.shape[1]} ms)"
            )
        self.num_excitatory = num_excitatory
        self.config = config
        moving_all = config.moving_segments == "all"
        moving = initial_rates if moving_all else initial_rates[..., :num_excitatory]
        self.free = nn.Parameter(self._encode(moving.clone()))
        self.register_buffer("fixed_inhibitory", initial_rates[..., num_excitatory:].clone())
        self.register_buffer("inhibitory_source", self._tied_sources(initial_rates.shape[-1] - num_excitatory))
        self.register_buffer("inhibitory_mean", self._tied_mean(initial_rates, config.tied_inhibitory_mean_rate))

    def _encode(self, rates: torch.Tensor) -> torch.Tensor:
        if self.config.method == "projection":
            return rates
        fraction = (rates / self.config.max_rate).clamp(_SIGMOID_MARGIN, 1 - _SIGMOID_MARGIN)
        return torch.logit(fraction)

    def _decode(self, free: torch.Tensor) -> torch.Tensor:
        if self.config.method == "projection":
            return free
        return self.config.max_rate * torch.sigmoid(free)

    def _tied_sources(self, num_inhibitory: int) -> torch.Tensor:
        return torch.arange(num_inhibitory) * self.num_excitatory // max(num_inhibitory, 1)

    def _tied_mean(self, initial_rates: torch.Tensor, configured: Optional[float]) -> torch.Tensor:
        """(patterns,) mean inhibitory rate of the tied mode: configured, or each pattern's initial mean."""
        inhibitory = initial_rates[..., self.num_excitatory :]
        if configured is not None:
            return torch.full(initial_rates.shape[:1], configured, dtype=initial_rates.dtype)
        if inhibitory.numel() == 0:
            return initial_rates.new_zeros(initial_rates.shape[:1])
        return inhibitory.mean(dim=(1, 2))

    def tied_inhibitory(self, excitatory: torch.Tensor) -> torch.Tensor:
        delay = self.config.tied_delay_ms
        mean_excitatory = excitatory.mean(dim=(1, 2), keepdim=True)
        lead_in = mean_excitatory.expand(-1, delay, excitatory.shape[-1])
        delayed = torch.cat([lead_in, excitatory[:, : excitatory.shape[1] - delay]], dim=1)
        ratio = delayed[..., self.inhibitory_source] / mean_excitatory.clamp_min(torch.finfo(excitatory.dtype).tiny)
        return (self.inhibitory_mean[:, None, None] * ratio).clamp_max(self.config.max_rate)

    def rates(self) -> torch.Tensor:
        moving = self._decode(self.free)
        mode = self.config.moving_segments
        if mode == "all":
            return moving
        inhibitory = self.fixed_inhibitory if mode == "excitatory" else self.tied_inhibitory(moving)
        return torch.cat([moving, inhibitory], dim=-1)

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp projected rates back into [0, max_rate] after an optimizer step (sigmoid needs nothing)."""
        if self.config.method == "projection":
            self.free.clamp_(0.0, self.config.max_rate)

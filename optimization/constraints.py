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

import torch
from torch import nn

from errors import ConfigError
from named_parts import Registry
from optimization.config import ConstraintsConfig

_SIGMOID_MARGIN = 1e-4


class Projection:
    """The rates themselves are optimized and clamped into [0, max_rate] after each step."""

    def __init__(self, max_rate: float):
        self.max_rate = max_rate

    def encode(self, rates: torch.Tensor) -> torch.Tensor:
        return rates

    def decode(self, free: torch.Tensor) -> torch.Tensor:
        return free

    def project_(self, free: torch.Tensor) -> None:
        free.clamp_(0.0, self.max_rate)


class Sigmoid(Projection):
    """Logits are optimized, rate = max_rate * sigmoid(logit): always inside the bounds, no projection."""

    def encode(self, rates: torch.Tensor) -> torch.Tensor:
        return torch.logit((rates / self.max_rate).clamp(_SIGMOID_MARGIN, 1 - _SIGMOID_MARGIN))

    def decode(self, free: torch.Tensor) -> torch.Tensor:
        return self.max_rate * torch.sigmoid(free)

    def project_(self, free: torch.Tensor) -> None:
        pass


BOUNDS: Registry[type[Projection]] = Registry("rate bound (constraints.method)")
BOUNDS.add("projection", Projection)
BOUNDS.add("sigmoid", Sigmoid)


class Moving:
    """Which rates move: the excitatory ones, the inhibitory ones staying at their initial values."""

    moves_inhibitory = False  # the inhibitory rates are parameters themselves
    inhibitory_fixed = True  # the inhibitory rates never change (no gradient reaches them)

    def rates(self, parameters: RateParameters, moving: torch.Tensor) -> torch.Tensor:
        return torch.cat([moving, parameters.fixed_inhibitory], dim=-1)


class MovingAll(Moving):
    """Every rate moves."""

    moves_inhibitory, inhibitory_fixed = True, False

    def rates(self, parameters: RateParameters, moving: torch.Tensor) -> torch.Tensor:
        return moving


class MovingTied(Moving):
    """The excitatory rates move and the inhibitory ones follow them (RateParameters.tied_inhibitory)."""

    inhibitory_fixed = False

    def rates(self, parameters: RateParameters, moving: torch.Tensor) -> torch.Tensor:
        return torch.cat([moving, parameters.tied_inhibitory(moving)], dim=-1)


MOVING: Registry[type[Moving]] = Registry("moving segments (constraints.moving_segments)")
MOVING.add("excitatory", Moving)
MOVING.add("all", MovingAll)
MOVING.add("tied", MovingTied)


class RateParameters(nn.Module):
    fixed_inhibitory: torch.Tensor  # buffers (register_buffer below)
    inhibitory_source: torch.Tensor
    inhibitory_mean: torch.Tensor

    def __init__(self, initial_rates: torch.Tensor, num_excitatory: int, config: ConstraintsConfig):
        super().__init__()
        self.moving = MOVING[config.moving_segments]()
        if isinstance(self.moving, MovingTied) and config.tied_delay_ms >= initial_rates.shape[1]:
            raise ConfigError(
                f"constraints.tied_delay_ms={config.tied_delay_ms} must be shorter than the duration "
                f"({initial_rates.shape[1]} ms)"
            )
        self.num_excitatory = num_excitatory
        self.config = config
        self.max_rate = config.resolved_max_rate()
        self.bound = BOUNDS[config.method](self.max_rate)
        moving = initial_rates if self.moving.moves_inhibitory else initial_rates[..., :num_excitatory]
        self.free = nn.Parameter(self.bound.encode(moving.clone()))
        self.register_buffer("fixed_inhibitory", initial_rates[..., num_excitatory:].clone())
        self.register_buffer("inhibitory_source", self._tied_sources(initial_rates.shape[-1] - num_excitatory))
        self.register_buffer("inhibitory_mean", self._tied_mean(initial_rates, config.tied_inhibitory_mean_rate))

    def _tied_sources(self, num_inhibitory: int) -> torch.Tensor:
        return torch.arange(num_inhibitory) * self.num_excitatory // max(num_inhibitory, 1)

    def _tied_mean(self, initial_rates: torch.Tensor, configured: float | None) -> torch.Tensor:
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
        return (self.inhibitory_mean[:, None, None] * ratio).clamp_max(self.max_rate)

    def rates(self) -> torch.Tensor:
        return self.moving.rates(self, self.bound.decode(self.free))

    @torch.no_grad()
    def project_(self) -> None:
        """Back into [0, max_rate] after an optimizer step (where the bound needs it)."""
        self.bound.project_(self.free)

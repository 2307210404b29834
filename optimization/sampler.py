"""Spike trains from rates with a gradient back to the rates.

Straight-through estimator (kinds `bernoulli` and `poisson`): the forward pass returns hard spikes in {0, 1};
the backward pass treats d spikes / d rate as 1 (identity surrogate), so the gradient of the loss with respect to
a spike is passed unchanged to the rate that produced it. `relaxed_bernoulli` instead returns a Gumbel-sigmoid
relaxation sigmoid((logit(rate) - logit(noise)) / temperature) in (0, 1) and differentiates it exactly; as the
temperature goes to 0 it becomes the Bernoulli spike of the same noise.
All kinds draw from the same uniform noise, drawn on the rates' device.
"""

from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx

from named_parts import Registry
from optimization.config import SamplerConfig


class _StraightThrough(torch.autograd.Function):
    """Forward: the given hard spikes. Backward: the incoming gradient goes to the rates unchanged."""

    @staticmethod
    def forward(ctx: FunctionCtx, rates: torch.Tensor, hard_spikes: torch.Tensor) -> torch.Tensor:
        return hard_spikes

    @staticmethod
    def backward(ctx: FunctionCtx, grad_spikes: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_spikes, None


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform noise in [0, 1) that a sampler turns into spike trains."""
    return torch.rand(shape, generator=generator, device=device)


class SpikeSampler:
    """Turns rates (spikes/ms) and uniform noise of the same shape into spike trains (straight-through: hard
    spikes forward, the identity backward)."""

    def __init__(self, config: SamplerConfig):
        self.config = config

    def spike_probability(self, rates: torch.Tensor) -> torch.Tensor:
        """P(at least one spike in the bin)."""
        return rates

    def spikes(self, rates: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        hard = (noise < self.spike_probability(rates.detach())).to(rates.dtype)
        return _StraightThrough.apply(rates, hard)

    def hard_spikes(self, rates: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Spikes for evaluation: the same draw without a gradient."""
        return (noise < self.spike_probability(rates)).to(rates.dtype)


SAMPLERS: Registry[type[SpikeSampler]] = Registry("spike sampler (sampler.kind)")
SAMPLERS.add("bernoulli", SpikeSampler)


@SAMPLERS.register("poisson")
class PoissonSampler(SpikeSampler):
    """A Poisson count clipped to one spike per bin: P(spike) = 1 - exp(-rate)."""

    def spike_probability(self, rates: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(-rates)


@SAMPLERS.register("relaxed_bernoulli")
class RelaxedBernoulliSampler(SpikeSampler):
    """A Gumbel-sigmoid relaxation in (0, 1), differentiated exactly; evaluation draws Bernoulli spikes."""

    def spikes(self, rates: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        tiny = torch.finfo(rates.dtype).tiny
        # -logit(noise) is logistic noise; with this sign, temperature -> 0 gives the Bernoulli spike noise < rate.
        logistic = torch.log1p(-noise) - torch.log(noise.clamp_min(tiny))
        logits = torch.log(rates.clamp_min(tiny)) - torch.log1p(-rates.clamp_max(1 - 1e-6))
        return torch.sigmoid((logits + logistic) / self.config.temperature)


def make_sampler(config: SamplerConfig) -> SpikeSampler:
    """The sampler `config.kind` names."""
    return SAMPLERS[config.kind](config)

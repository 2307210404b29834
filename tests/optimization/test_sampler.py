"""The spike sampler: discrete forward pass, identity-surrogate backward pass, correct spike probabilities."""

import pytest
import torch

from optimization.config import SamplerConfig
from optimization.sampler import draw_noise, make_sampler


def _rates(shape=(3, 50, 8), seed=0) -> torch.Tensor:
    return (0.3 * torch.rand(shape, generator=torch.Generator().manual_seed(seed))).requires_grad_(True)


@pytest.mark.parametrize("kind", ["bernoulli", "poisson"])
def test_straight_through_forward_is_discrete_and_backward_is_identity(kind):
    sampler = make_sampler(SamplerConfig(kind=kind))
    rates = _rates()
    noise = draw_noise(rates.shape, torch.Generator().manual_seed(1), torch.device("cpu"))
    spikes = sampler.spikes(rates, noise)
    assert set(spikes.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(spikes, sampler.hard_spikes(rates.detach(), noise))
    upstream = torch.randn(rates.shape, generator=torch.Generator().manual_seed(2))
    (spikes * upstream).sum().backward()
    assert torch.equal(rates.grad, upstream)  # d spikes / d rate = 1, element by element


@pytest.mark.parametrize(
    ("kind", "probability"), [("bernoulli", lambda r: r), ("poisson", lambda r: 1 - torch.exp(-r))]
)
def test_spike_frequency_matches_the_kind(kind, probability):
    sampler = make_sampler(SamplerConfig(kind=kind))
    rates = torch.tensor([0.02, 0.1, 0.5, 0.9]).expand(200_000, 4)
    noise = draw_noise(rates.shape, torch.Generator().manual_seed(3), torch.device("cpu"))
    frequency = sampler.hard_spikes(rates, noise).mean(dim=0)
    assert torch.allclose(frequency, probability(rates[0]), atol=4e-3)


def test_relaxed_bernoulli_is_continuous_differentiable_and_sharpens_with_temperature():
    rates = _rates()
    noise = draw_noise(rates.shape, torch.Generator().manual_seed(4), torch.device("cpu"))
    warm = make_sampler(SamplerConfig(kind="relaxed_bernoulli", temperature=1.0)).spikes(rates, noise)
    assert ((warm > 0) & (warm < 1)).all()
    warm.sum().backward()
    assert (rates.grad > 0).all()  # a higher rate always raises the relaxed spike
    cold = make_sampler(SamplerConfig(kind="relaxed_bernoulli", temperature=0.01)).spikes(rates.detach(), noise)
    hard = make_sampler(SamplerConfig(kind="bernoulli")).hard_spikes(rates.detach(), noise)
    assert (cold.round() == hard).float().mean() > 0.99

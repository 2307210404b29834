"""Each constraint mode: bounds by projection or sigmoid, and which segments move."""

import pytest
import torch

from errors import ConfigError
from optimization.config import ConstraintsConfig
from optimization.constraints import RateParameters

EXCITATORY, INHIBITORY, DURATION = 4, 3, 12


def _initial(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.01 + 0.05 * torch.rand(2, DURATION, EXCITATORY + INHIBITORY, generator=generator)


def _push(parameters: RateParameters, direction: torch.Tensor, steps: int = 5, lr: float = 1.0) -> None:
    """Plain gradient steps that try to move every rate along `direction`, then project."""
    optimizer = torch.optim.SGD(parameters.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        (-(parameters.rates() * direction).sum()).backward()
        optimizer.step()
        parameters.project_()


@pytest.mark.parametrize("method", ["projection", "sigmoid"])
def test_rates_stay_within_bounds_and_start_at_the_initial_rates(method):
    initial = _initial()
    parameters = RateParameters(
        initial, EXCITATORY, ConstraintsConfig(method=method, max_rate=0.1, moving_segments="all")
    )
    assert torch.allclose(parameters.rates(), initial, atol=1e-6)
    direction = torch.where(torch.rand(initial.shape, generator=torch.Generator().manual_seed(1)) < 0.5, 1.0, -1.0)
    _push(parameters, direction, lr=100.0)
    rates = parameters.rates()
    assert (rates >= 0).all() and (rates <= 0.1).all()
    moved_up = rates[direction > 0] > initial[direction > 0]
    assert moved_up.all()
    if method == "projection":  # projection reaches the bounds exactly
        assert (rates[direction > 0] == 0.1).all() and (rates[direction < 0] == 0).all()


def test_excitatory_mode_moves_only_excitatory_rates():
    initial = _initial()
    parameters = RateParameters(initial, EXCITATORY, ConstraintsConfig(moving_segments="excitatory"))
    _push(parameters, torch.ones_like(initial), lr=0.01)
    rates = parameters.rates()
    assert torch.equal(rates[..., EXCITATORY:], initial[..., EXCITATORY:])
    assert (rates[..., :EXCITATORY] > initial[..., :EXCITATORY]).all()


def test_all_mode_moves_every_rate():
    initial = _initial()
    parameters = RateParameters(initial, EXCITATORY, ConstraintsConfig(moving_segments="all"))
    _push(parameters, torch.ones_like(initial), lr=0.01)
    assert (parameters.rates() > initial).all()


def test_tied_mode_by_hand():
    """Two excitatory, three inhibitory segments (sources 0, 0, 1), delay 2 ms, mean inhibitory rate 0.03."""
    excitatory = torch.tensor([[0.01, 0.02], [0.03, 0.04], [0.05, 0.06], [0.07, 0.08]])  # (time 4, segments 2)
    initial = torch.cat([excitatory, torch.full((4, 3), 0.02)], dim=1)[None]
    config = ConstraintsConfig(moving_segments="tied", tied_delay_ms=2, tied_inhibitory_mean_rate=0.03)
    rates = RateParameters(initial, 2, config).rates()[0]
    mean = excitatory.mean()  # 0.045
    delayed = torch.cat([torch.full((2, 2), mean.item()), excitatory[:2]])
    expected = 0.03 * delayed[:, [0, 0, 1]] / mean
    assert torch.allclose(rates[:, :2], excitatory)
    assert torch.allclose(rates[:, 2:], expected)


def test_tied_mode_follows_excitation_and_keeps_the_initial_inhibitory_mean_by_default():
    initial = _initial()
    parameters = RateParameters(initial, EXCITATORY, ConstraintsConfig(moving_segments="tied", tied_delay_ms=0))
    rates = parameters.rates()
    assert torch.allclose(
        rates[..., EXCITATORY:].mean(dim=(1, 2)), initial[..., EXCITATORY:].mean(dim=(1, 2)), rtol=0.2
    )
    before = rates[..., EXCITATORY:].detach().clone()
    direction = torch.zeros_like(initial)
    direction[:, :, 0] = 1.0  # raise excitatory segment 0 only
    _push(parameters, direction, lr=0.01)
    after = parameters.rates()[..., EXCITATORY:]
    assert not torch.allclose(after, before)  # inhibition follows the excitatory change
    assert parameters.free.shape[-1] == EXCITATORY  # only excitatory rates are parameters


def test_tied_delay_must_fit_the_duration():
    with pytest.raises(ConfigError, match="tied_delay_ms"):
        RateParameters(_initial(), EXCITATORY, ConstraintsConfig(moving_segments="tied", tied_delay_ms=DURATION))

"""The objective on hand-computable cases."""

import math

import pytest
import torch

from errors import ConfigError
from optimization.config import ObjectiveConfig
from optimization.objective import Objective, binary_cross_entropy, outside_window_mask, window_max
from optimization.regime import QUANTILE_NAMES, InputRegime


def test_window_max_reads_only_the_response_window():
    probability = torch.tensor([[0.9, 0.1, 0.3, 0.2, 0.95], [0.0, 0.4, 0.1, 0.6, 0.0]])
    assert torch.equal(window_max(probability, slice(1, 4)), torch.tensor([0.3, 0.6]))


def test_response_loss_by_hand():
    objective = Objective(ObjectiveConfig(target_spike_prob=0.8, control_target=0.0), max_rate=0.1, num_excitatory=1)
    control_window = torch.tensor([[0.2, 0.1], [0.3, 0.5]])  # (pairs, window): maxima 0.2 and 0.5
    stimulated_window = torch.tensor([[0.6, 0.4], [0.1, 0.9]])  # maxima 0.6 and 0.9
    losses = objective.response_losses(control_window, stimulated_window)
    stim = [-(0.8 * math.log(p) + 0.2 * math.log(1 - p)) for p in (0.6, 0.9)]
    control = [-math.log(1 - p) for p in (0.2, 0.5)]
    expected = [0.5 * (s + c) for s, c in zip(stim, control)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_any_spike_control_response_by_hand():
    objective = Objective(
        ObjectiveConfig(target_spike_prob=0.8, control_response="any_spike"), max_rate=0.1, num_excitatory=1
    )
    control_window = torch.tensor([[0.2, 0.1], [0.3, 0.5]])
    stimulated_window = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    losses = objective.response_losses(control_window, stimulated_window)
    stim = [-(0.8 * math.log(p) + 0.2 * math.log(1 - p)) for p in (0.6, 0.9)]
    any_spike = [1 - (1 - 0.2) * (1 - 0.1), 1 - (1 - 0.3) * (1 - 0.5)]  # 0.28 and 0.65
    expected = [0.5 * (s - math.log(1 - c)) for s, c in zip(stim, any_spike)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-5)


def test_penalties_by_hand():
    objective = Objective(
        ObjectiveConfig(l1_weight=2.0, smoothness_weight=3.0, initial_distance_weight=5.0),
        max_rate=0.1,
        num_excitatory=1,
    )
    rates = torch.tensor([[[0.02], [0.06], [0.04]]])  # 1 pattern, 3 ms, 1 segment
    initial = torch.tensor([[[0.02], [0.02], [0.02]]])
    terms = objective.weighted_penalties(rates, initial)
    assert terms["l1"].item() == pytest.approx(2.0 * (0.2 + 0.6 + 0.4) / 3)
    assert terms["smoothness"].item() == pytest.approx(3.0 * (0.4**2 + 0.2**2) / 2)
    assert terms["initial_distance"].item() == pytest.approx(5.0 * (0.0 + 0.4**2 + 0.2**2) / 3)


def test_zero_weights_give_zero_terms():
    terms = Objective(ObjectiveConfig(), max_rate=0.1, num_excitatory=1).weighted_penalties(
        torch.rand(2, 5, 3), torch.rand(2, 5, 3)
    )
    assert all(term.item() == 0.0 for term in terms.values())


def test_bce_stays_finite_at_certainty_and_propagates_nan():
    probability = torch.tensor([0.0, 1.0, float("nan")], requires_grad=True)
    loss = binary_cross_entropy(probability, 0.8)
    loss.sum().backward()
    assert torch.isfinite(loss[:2]).all() and torch.isfinite(probability.grad[:2]).all()
    assert math.isnan(loss[2].item())


def regime_with_population_p99(excitatory: float, inhibitory: float) -> InputRegime:
    """A regime whose only figures that matter here are the p99 population rates."""

    def quantiles(p99: float) -> dict[str, float]:
        return dict(zip(QUANTILE_NAMES, (p99 / 4, p99 / 2, p99, p99)))

    return InputRegime(
        excitatory_rate=quantiles(0.05),
        inhibitory_rate=quantiles(0.05),
        excitatory_population_rate=quantiles(excitatory),
        inhibitory_population_rate=quantiles(inhibitory),
        excitatory_synchrony=quantiles(4.0),
        num_excitatory=2,
        num_inhibitory=1,
        source="by hand",
    )


def test_specificity_term_by_hand():
    objective = Objective(
        ObjectiveConfig(specificity_weight=3.0), max_rate=0.1, num_excitatory=1, specificity_floor=0.1
    )
    outside = outside_window_mask(4, slice(1, 3), torch.device("cpu"))
    assert outside.tolist() == [True, False, False, True]
    # 2 pairs: control copies first, then the stimulated ones; the window (ms 1, 2) never counts.
    probability = torch.tensor(
        [
            [0.3, 0.9, 0.9, 0.05],  # control 1: excess 0.2 and 0 -> sum 0.2
            [0.1, 0.0, 0.0, 0.5],  # control 2: 0 and 0.4 -> 0.4
            [0.0, 0.9, 0.9, 0.7],  # stimulated 1: 0 and 0.6 -> 0.6
            [0.05, 0.9, 0.9, 0.05],
        ]
    )  # stimulated 2: 0
    losses = objective.specificity_losses(probability, outside)
    assert losses.tolist() == pytest.approx([3.0 * 0.5 * (0.2 + 0.6), 3.0 * 0.5 * (0.4 + 0.0)])


def test_regime_term_by_hand():
    regime = regime_with_population_p99(excitatory=0.02, inhibitory=0.03)
    objective = Objective(ObjectiveConfig(regime_weight=2.0), max_rate=0.1, num_excitatory=2, regime=regime)
    # 1 pattern, 2 ms, 2 excitatory + 1 inhibitory segments
    rates = torch.tensor(
        [
            [
                [0.01, 0.05, 0.02],  # ms 0: excitatory mean 0.03 (0.01 over), inhibitory 0.02 (under)
                [0.00, 0.02, 0.07],
            ]
        ]
    )  # ms 1: excitatory 0.01 (under), inhibitory 0.07 (0.04 over)
    terms = objective.weighted_penalties(rates, rates)
    excitatory = ((0.01 / 0.1) ** 2 + 0.0) / 2
    inhibitory = (0.0 + (0.04 / 0.1) ** 2) / 2
    assert terms["regime"].item() == pytest.approx(2.0 * (excitatory + inhibitory) / 2, rel=1e-5)
    assert terms["l1"].item() == 0.0


def test_regime_term_needs_a_regime():
    with pytest.raises(ConfigError, match="regime_weight needs the statistics"):
        Objective(ObjectiveConfig(regime_weight=1.0), max_rate=0.1, num_excitatory=2)


def test_any_spike_stimulated_response_by_hand():
    objective = Objective(
        ObjectiveConfig(target_spike_prob=1.0, stimulated_response="any_spike", control_response="any_spike"),
        max_rate=0.1,
        num_excitatory=1,
    )
    control_window = torch.tensor([[0.2, 0.1]])
    stimulated_window = torch.tensor([[0.4, 0.5]])  # no ms reaches 0.6, but a spike comes with 1 - 0.6 * 0.5 = 0.7
    (loss,) = objective.response_losses(control_window, stimulated_window).tolist()
    assert loss == pytest.approx(0.5 * (-math.log(0.7) - math.log(1 - 0.28)), rel=1e-5)

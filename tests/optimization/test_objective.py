"""The objective on hand-computable cases."""

import math

import pytest
import torch

from optimization.config import ObjectiveConfig
from optimization.objective import Objective, binary_cross_entropy, window_max


def test_window_max_reads_only_the_response_window():
    probability = torch.tensor([[0.9, 0.1, 0.3, 0.2, 0.95], [0.0, 0.4, 0.1, 0.6, 0.0]])
    assert torch.equal(window_max(probability, slice(1, 4)), torch.tensor([0.3, 0.6]))


def test_response_loss_by_hand():
    objective = Objective(ObjectiveConfig(target_spike_prob=0.8, control_target=0.0), max_rate=0.1)
    control_window = torch.tensor([[0.2, 0.1], [0.3, 0.5]])  # (pairs, window): maxima 0.2 and 0.5
    stimulated_window = torch.tensor([[0.6, 0.4], [0.1, 0.9]])  # maxima 0.6 and 0.9
    losses = objective.response_losses(control_window, stimulated_window)
    stim = [-(0.8 * math.log(p) + 0.2 * math.log(1 - p)) for p in (0.6, 0.9)]
    control = [-math.log(1 - p) for p in (0.2, 0.5)]
    expected = [0.5 * (s + c) for s, c in zip(stim, control)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_any_spike_control_response_by_hand():
    objective = Objective(ObjectiveConfig(target_spike_prob=0.8, control_response="any_spike"), max_rate=0.1)
    control_window = torch.tensor([[0.2, 0.1], [0.3, 0.5]])
    stimulated_window = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    losses = objective.response_losses(control_window, stimulated_window)
    stim = [-(0.8 * math.log(p) + 0.2 * math.log(1 - p)) for p in (0.6, 0.9)]
    any_spike = [1 - (1 - 0.2) * (1 - 0.1), 1 - (1 - 0.3) * (1 - 0.5)]  # 0.28 and 0.65
    expected = [0.5 * (s - math.log(1 - c)) for s, c in zip(stim, any_spike)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-5)


def test_penalties_by_hand():
    objective = Objective(
        ObjectiveConfig(l1_weight=2.0, smoothness_weight=3.0, initial_distance_weight=5.0), max_rate=0.1
    )
    rates = torch.tensor([[[0.02], [0.06], [0.04]]])  # 1 pattern, 3 ms, 1 segment
    initial = torch.tensor([[[0.02], [0.02], [0.02]]])
    terms = objective.weighted_penalties(rates, initial)
    assert terms["l1"].item() == pytest.approx(2.0 * (0.2 + 0.6 + 0.4) / 3)
    assert terms["smoothness"].item() == pytest.approx(3.0 * (0.4**2 + 0.2**2) / 2)
    assert terms["initial_distance"].item() == pytest.approx(5.0 * (0.0 + 0.4**2 + 0.2**2) / 3)


def test_zero_weights_give_zero_terms():
    terms = Objective(ObjectiveConfig(), max_rate=0.1).weighted_penalties(torch.rand(2, 5, 3), torch.rand(2, 5, 3))
    assert all(term.item() == 0.0 for term in terms.values())


def test_bce_stays_finite_at_certainty_and_propagates_nan():
    probability = torch.tensor([0.0, 1.0, float("nan")], requires_grad=True)
    loss = binary_cross_entropy(probability, 0.8)
    loss.sum().backward()
    assert torch.isfinite(loss[:2]).all() and torch.isfinite(probability.grad[:2]).all()
    assert math.isnan(loss[2].item())

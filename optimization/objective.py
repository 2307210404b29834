"""The loss: BCE of the windowed maximum spike probability against the targets, plus optional rate penalties.

response loss = mean over pairs of ½·[BCE(max_w p_stim, target_spike_prob) + BCE(r_control, control_target)]
with r_control = max_w p_control (`control_response: max`, as evaluated) or the probability of any spike in the
window 1 − Π_w(1 − p_control) (`any_spike`), which also pushes down many moderate probabilities: a neuron whose
spike probability is 0.3 in each of 10 ms is rarely silent, although no single ms reaches 0.5.
penalties (rates scaled by max_rate so that weights do not depend on the rate unit):
  l1             = mean(rate / max_rate)
  smoothness     = mean(((rate[t+1] - rate[t]) / max_rate)^2)
  initial_distance = mean(((rate - initial) / max_rate)^2)
Each penalty enters the total multiplied by its weight; the history logs the weighted terms, which sum to the total.
"""

from __future__ import annotations

import torch

from named_parts import Registry
from optimization.config import ObjectiveConfig

PENALTY_TERMS = ("l1", "smoothness", "initial_distance")


_PROBABILITY_FLOOR = 1e-12  # keeps the logs and their gradients finite at probabilities of exactly 0 or 1

# objective.control_response: the control copy's response from its (pairs, window) spike probabilities.
CONTROL_RESPONSES: Registry = Registry("control response (objective.control_response)")
CONTROL_RESPONSES.add("max", lambda window: window.amax(dim=1))
CONTROL_RESPONSES.add("any_spike", lambda window: -torch.expm1(
    torch.log1p(-window.clamp_max(1 - _PROBABILITY_FLOOR)).sum(dim=1)))


def binary_cross_entropy(probability: torch.Tensor, target: float) -> torch.Tensor:
    """Elementwise BCE; unlike torch's it propagates NaN (for the guard) and is allowed under autocast."""
    log_p = torch.log(probability.clamp_min(_PROBABILITY_FLOOR))
    log_not_p = torch.log((1.0 - probability).clamp_min(_PROBABILITY_FLOOR))
    return -(target * log_p + (1.0 - target) * log_not_p)


def window_max(probability: torch.Tensor, window: slice) -> torch.Tensor:
    """(batch, time) spike probabilities -> (batch,) maxima over the response window."""
    return probability[:, window].amax(dim=1)


class Objective:
    def __init__(self, config: ObjectiveConfig, max_rate: float):
        self.config = config
        self.max_rate = max_rate
        self.control_response = CONTROL_RESPONSES[config.control_response]

    def response_losses(self, control_window: torch.Tensor, stimulated_window: torch.Tensor) -> torch.Tensor:
        """Per-pair response loss from (pairs, window) spike probabilities; its mean is the response term."""
        control = self.control_response(control_window)
        return 0.5 * (
            binary_cross_entropy(stimulated_window.amax(dim=1), self.config.target_spike_prob)
            + binary_cross_entropy(control, self.config.control_target)
        )

    def weighted_penalties(self, rates: torch.Tensor, initial: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted penalties of rates (patterns, time, segments), keyed by the names in PENALTY_TERMS."""
        config = self.config
        if not (config.l1_weight or config.smoothness_weight or config.initial_distance_weight):
            return dict.fromkeys(PENALTY_TERMS, rates.new_zeros(()))  # the default: no pass over the rates
        scaled = rates / self.max_rate
        return {
            "l1": self.config.l1_weight * scaled.mean(),
            "smoothness": self.config.smoothness_weight * scaled.diff(dim=1).square().mean(),
            "initial_distance": self.config.initial_distance_weight
            * (scaled - initial / self.max_rate).square().mean(),
        }

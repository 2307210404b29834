"""The loss: BCE of the windowed maximum spike probability against the targets, plus optional terms.

response loss = mean over pairs of ½·[BCE(r_stim, target_spike_prob) + BCE(r_control, control_target)]
with a copy's response r = max_w p (`max`, as evaluated) or the probability of any spike in the window
1 − Π_w(1 − p) (`any_spike`; `objective.control_response`, `objective.stimulated_response`). For the control
copy any_spike also pushes down many moderate probabilities: a neuron whose spike probability is 0.3 in each of
10 ms is rarely silent, although no single ms reaches 0.5; for the stimulated copy it asks for a spike somewhere
in the window rather than a sharp peak, which a model calibrated on jittered spikes can only give under very
strong drive.
penalties (rates scaled by max_rate so that weights do not depend on the rate unit):
  l1             = mean(rate / max_rate)
  smoothness     = mean(((rate[t+1] - rate[t]) / max_rate)^2)
  initial_distance = mean(((rate - initial) / max_rate)^2)
  regime         = mean over patterns, ms and segment type (excitatory, inhibitory) of
                   (max(0, population rate - the training regime's p99 population rate) / max_rate)^2,
                   the population rate being the mean rate over that type's segments in that ms
specificity (a per-pair term, computed with the response from the same forward pass):
  mean over both copies of the sum over the ms outside the response window of max(0, p - floor): the model's
  expected number of spikes there beyond the floor, which keeps it from buying its response with firing before
  or after the window (a sum, not a mean: a burst of 10 ms matters however long the pattern is).
Each term enters the total multiplied by its weight; the history logs the weighted terms, which sum to the total.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from errors import ConfigError
from named_parts import Registry
from optimization.config import ObjectiveConfig
from optimization.regime import InputRegime

PENALTY_TERMS = ("l1", "smoothness", "initial_distance", "regime")


_PROBABILITY_FLOOR = 1e-12  # keeps the logs and their gradients finite at probabilities of exactly 0 or 1

# objective.control_response and objective.stimulated_response: a copy's response from its (pairs, window) spike
# probabilities.
RESPONSES: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry(
    "response (objective.control_response, objective.stimulated_response)"
)
RESPONSES.add("max", lambda window: window.amax(dim=1))
RESPONSES.add(
    "any_spike", lambda window: -torch.expm1(torch.log1p(-window.clamp_max(1 - _PROBABILITY_FLOOR)).sum(dim=1))
)


def binary_cross_entropy(probability: torch.Tensor, target: float) -> torch.Tensor:
    """Elementwise BCE; unlike torch's it propagates NaN (for the guard) and is allowed under autocast."""
    log_p = torch.log(probability.clamp_min(_PROBABILITY_FLOOR))
    log_not_p = torch.log((1.0 - probability).clamp_min(_PROBABILITY_FLOOR))
    return -(target * log_p + (1.0 - target) * log_not_p)


def window_max(probability: torch.Tensor, window: slice) -> torch.Tensor:
    """(batch, time) spike probabilities -> (batch,) maxima over the response window."""
    return probability[:, window].amax(dim=1)


def outside_window_mask(duration: int, window: slice, device: torch.device) -> torch.Tensor:
    """(duration,) bool: the ms outside the response window, where the neuron should stay quiet."""
    outside = torch.ones(duration, dtype=torch.bool, device=device)
    outside[window] = False
    return outside


class Objective:
    def __init__(
        self,
        config: ObjectiveConfig,
        max_rate: float,
        num_excitatory: int,
        regime: InputRegime | None = None,
        specificity_floor: float = 0.0,
    ):
        if config.regime_weight and regime is None:
            raise ConfigError(
                "optimization.objective.regime_weight needs the statistics of the model's training "
                "inputs: data_dict['input_regime'] in its params pickle, or optimization.input_regime."
            )
        self.config = config
        self.max_rate = max_rate
        self.num_excitatory = num_excitatory
        self.regime = regime
        self.specificity_floor = specificity_floor
        self.control_response = RESPONSES[config.control_response]
        self.stimulated_response = RESPONSES[config.stimulated_response]

    def response_losses(self, control_window: torch.Tensor, stimulated_window: torch.Tensor) -> torch.Tensor:
        """Per-pair response loss from (pairs, window) spike probabilities; its mean is the response term."""
        control = self.control_response(control_window)
        return 0.5 * (
            binary_cross_entropy(self.stimulated_response(stimulated_window), self.config.target_spike_prob)
            + binary_cross_entropy(control, self.config.control_target)
        )

    def specificity_losses(self, probability: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        """Weighted per-pair specificity term from (2 * pairs, time) probabilities, control copies first."""
        excess = (probability[:, outside] - self.specificity_floor).clamp_min(0).sum(dim=1)
        control, stimulated = excess.chunk(2)
        return self.config.specificity_weight * 0.5 * (control + stimulated)

    def weighted_penalties(self, rates: torch.Tensor, initial: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted penalties of rates (patterns, time, segments), keyed by the names in PENALTY_TERMS."""
        config = self.config
        if not (config.l1_weight or config.smoothness_weight or config.initial_distance_weight or config.regime_weight):
            return dict.fromkeys(PENALTY_TERMS, rates.new_zeros(()))  # the default: no pass over the rates
        scaled = rates / self.max_rate
        return {
            "l1": self.config.l1_weight * scaled.mean(),
            "smoothness": self.config.smoothness_weight * scaled.diff(dim=1).square().mean(),
            "initial_distance": self.config.initial_distance_weight
            * (scaled - initial / self.max_rate).square().mean(),
            "regime": (
                self.config.regime_weight * self._regime_excess(rates, self.regime)
                if self.regime
                else rates.new_zeros(())
            ),
        }

    def _regime_excess(self, rates: torch.Tensor, regime: InputRegime) -> torch.Tensor:
        """mean over patterns, ms and segment type of (max(0, population rate - regime p99) / max_rate)^2."""
        excitatory, inhibitory = rates[..., : self.num_excitatory], rates[..., self.num_excitatory :]
        limits = (
            (excitatory, regime.excitatory_population_rate["p99"]),
            (inhibitory, regime.inhibitory_population_rate["p99"]),
        )
        terms = [
            ((group.mean(dim=-1) - limit).clamp_min(0) / self.max_rate).square().mean()
            for group, limit in limits
            if group.shape[-1]
        ]
        return torch.stack(terms).mean()

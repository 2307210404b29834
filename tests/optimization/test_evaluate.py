"""Evaluation statistics: interval formulas and a model whose spike probabilities are known exactly."""

import logging

import pytest
import torch

from optimization.config import EvaluationConfig, SamplerConfig
from optimization.evaluate import evaluate_rates, paired_difference_interval, wilson_interval
from optimization.network import InputLayout, SpikeProbability
from optimization.runtime import MicroBatcher
from optimization.sampler import make_sampler
from optimization.stimulus import PairedStimulus, Stimulus
from progress import NO_PROGRESS, Progress

Z95 = 1.959963984540054


class _EchoSegmentZero(torch.nn.Module):
    """Spike probability = the input spike on segment 0: a trial spikes iff segment 0 spikes in the window."""

    def forward(self, inputs):
        return inputs[..., :1], inputs


def test_wilson_interval_known_values():
    assert wilson_interval(5, 10, Z95) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert wilson_interval(0, 10, Z95) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_interval(10, 10, Z95) == pytest.approx([0.7225, 1.0], abs=1e-4)


def test_paired_difference_interval_contains_the_estimate_and_narrows_with_more_trials():
    small = paired_difference_interval(both=10, stim_only=30, control_only=5, trials=100, z=Z95)
    large = paired_difference_interval(both=100, stim_only=300, control_only=50, trials=1000, z=Z95)
    for low, high in (small, large):
        assert low < 0.25 < high
    assert large[1] - large[0] < small[1] - small[0]
    # Concordant outcomes make the paired interval narrower than treating the copies as independent.
    independent = paired_difference_interval(both=0, stim_only=40, control_only=15, trials=100, z=Z95)
    assert small[1] - small[0] < independent[1] - independent[0]
    assert paired_difference_interval(0, 0, 0, 50, Z95)[0] < 0 < paired_difference_interval(0, 0, 0, 50, Z95)[1]


def test_evaluation_matches_hand_computed_probabilities():
    layout = InputLayout(num_excitatory=2, num_inhibitory=1, duration_ms=20)
    stimulus = Stimulus(segments=(0,), time_ms=8, window_ms=4)
    rate = 0.1
    rates = torch.full((2, 20, 3), 0.05)
    rates[0, :, 0] = 0.0  # pattern 0: segment 0 never spikes on its own
    rates[1, :, 0] = rate
    result = evaluate_rates(
        SpikeProbability(_EchoSegmentZero(), 0),
        rates,
        make_sampler(SamplerConfig()),
        PairedStimulus(stimulus, layout, torch.device("cpu")),
        EvaluationConfig(trials_per_pattern=4000, chunk_size=1000),
        seed=7,
        micro_batcher=MicroBatcher(4, "the evaluation", logging.getLogger("tests.optimization")),
        progress=Progress(8000, "evaluating", "trial pair", NO_PROGRESS, logging.getLogger("tests.optimization")),
    )
    silent, noisy = result.summary["per_pattern"]
    assert (silent["p_spike_stim"], silent["p_spike_control"], silent["difference"]) == (1.0, 0.0, 1.0)
    control_expected = 1 - (1 - rate) ** 3  # the stimulus time itself is silenced in the control copy
    assert noisy["p_spike_stim"] == 1.0
    low, high = noisy["p_spike_control_ci"]
    assert low < control_expected < high
    assert noisy["mean_prob_control"] == noisy["p_spike_control"]  # the echo model's probabilities are 0 or 1
    assert result.summary["n_trials"] == 8000 and noisy["n_trials"] == 4000
    assert result.summary["max_prob_stim"] == result.summary["max_prob_control"] == 1.0
    assert result.summary["p_spike_control"] == pytest.approx(noisy["p_spike_control"] / 2)
    control_mean, _ = result.traces["control"]
    assert control_mean[stimulus.time_ms] == 0.0
    assert result.traces["stimulated"][0][stimulus.time_ms] == 1.0
    assert result.example["stimulated_spikes"].shape == (20, 3)
    # Outside the window (16 of the 20 ms) the echo model fires iff segment 0 spikes there; the copies agree there.
    assert silent["p_outside_stim"] == silent["p_outside_control"] == 0.0
    assert silent["expected_outside_spike_control"] == 0.0
    outside_expected = 1 - (1 - rate) ** 16
    low, high = noisy["p_outside_control_ci"]
    assert low < outside_expected < high
    assert noisy["p_outside_stim"] == noisy["p_outside_control"]
    # with probabilities of 0 or 1, the model's own estimates 1 - prod(1 - p) equal the threshold counts
    assert noisy["expected_outside_spike_control"] == pytest.approx(noisy["p_outside_control"], abs=1e-6)
    for copy in ("stim", "control"):
        assert noisy[f"expected_spike_{copy}"] == pytest.approx(noisy[f"p_spike_{copy}"], abs=1e-6)


class _ConstantProbability(torch.nn.Module):
    """Spike probability 0.2 in every ms, whatever the input: no ms crosses 0.5, yet a spike is likely."""

    def forward(self, inputs):
        return torch.full_like(inputs[..., :1], 0.2), inputs


def test_the_models_own_spike_estimate_counts_what_no_threshold_sees():
    layout = InputLayout(num_excitatory=2, num_inhibitory=1, duration_ms=20)
    stimulus = Stimulus(segments=(0,), time_ms=8, window_ms=4)
    result = evaluate_rates(
        SpikeProbability(_ConstantProbability(), 0),
        torch.full((1, 20, 3), 0.05),
        make_sampler(SamplerConfig()),
        PairedStimulus(stimulus, layout, torch.device("cpu")),
        EvaluationConfig(trials_per_pattern=50, chunk_size=50),
        seed=0,
        micro_batcher=MicroBatcher(1, "the evaluation", logging.getLogger("tests.optimization")),
        progress=Progress(100, "evaluating", "trial pair", NO_PROGRESS, logging.getLogger("tests.optimization")),
    ).summary
    assert result["p_spike_stim"] == result["p_spike_control"] == result["p_outside_control"] == 0.0
    assert result["expected_spike_stim"] == pytest.approx(1 - 0.8**4)
    assert result["expected_spike_control"] == pytest.approx(1 - 0.8**4)
    assert result["expected_outside_spike_control"] == pytest.approx(1 - 0.8**16)

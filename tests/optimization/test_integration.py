"""The optimization on a model trained (here, in PyTorch) to imitate the synthetic neuron.

The claim: on held-out evaluation trials, P(spike | stimulated) - P(spike | control) rises from below 0.1 for the
generated background to at least 0.3 after optimization, both under the trained model and under the synthetic
neuron itself (the ground truth the model imitates).
"""

import torch

from optimization import OptimizationConfig, run_activity_optimization
from progress import NO_PROGRESS
from tests.optimization.synthetic import NUM_EXCITATORY, NUM_INHIBITORY, TRAINED_WINDOW_MS, training_inputs

MARGIN_BEFORE = 0.1
MARGIN_AFTER = 0.3


def _ground_truth_difference(neuron, rates, outcome, trials, seed):
    """P(spike|stim) - P(spike|control) of the synthetic neuron for rates (patterns, segments, time)."""
    generator = torch.Generator().manual_seed(seed)
    rates = torch.from_numpy(rates).permute(0, 2, 1).repeat_interleave(trials, dim=0)
    spikes = (torch.rand(rates.shape, generator=generator) < rates).float()
    segments, time_ms = list(outcome.stimulus_segments), outcome.stimulus_time_ms
    window = slice(time_ms, time_ms + outcome.response_window_ms)
    spikes[:, time_ms, segments] = 0.0
    control = neuron.output_spikes(spikes)[:, window].amax(dim=1).mean().item()
    spikes[:, time_ms, segments] = 1.0
    stimulated = neuron.output_spikes(spikes)[:, window].amax(dim=1).mean().item()
    return stimulated - control


def test_trained_model_imitates_the_neuron(neuron, trained_model):
    held_out = torch.Generator().manual_seed(1234)  # training used seed 0
    inputs = training_inputs(256, TRAINED_WINDOW_MS, NUM_EXCITATORY, NUM_INHIBITORY, 0.1, held_out)
    target = neuron.output_spikes(inputs) > 0
    with torch.no_grad():
        predicted = trained_model(inputs)[0][..., 0] >= 0.5
    assert 0.1 < target.float().mean() < 0.9
    assert (predicted & target).sum() / target.sum() >= 0.9  # spikes found
    assert (~predicted & ~target).sum() / (~target).sum() >= 0.95  # silence kept


def test_optimization_makes_the_stimulus_decisive(neuron, trained_model, tmp_path):
    config = OptimizationConfig.model_validate(
        {
            "num_patterns": 2,
            "sampler": {"samples_per_pattern": 16},
            "loop": {
                "max_iterations": 150,
                "learning_rate": 0.002,
                "checkpoint_every": None,
                "early_stop_patience_iterations": None,
            },
            "evaluation": {"trials_per_pattern": 500},
            "report": {"plots": False},
        }
    )
    outcome = run_activity_optimization(trained_model, config, tmp_path, device="cpu", seed=0, progress=NO_PROGRESS)
    initial, optimized = outcome.evaluation["initial"], outcome.evaluation["optimized"]
    assert initial["difference"] < MARGIN_BEFORE
    assert optimized["difference"] >= MARGIN_AFTER
    assert optimized["difference_ci"][0] > initial["difference_ci"][1]
    assert _ground_truth_difference(neuron, outcome.initial_rates, outcome, trials=500, seed=99) < MARGIN_BEFORE
    assert _ground_truth_difference(neuron, outcome.optimized_rates, outcome, trials=500, seed=99) >= MARGIN_AFTER

"""optimization.ensemble: the loss through several models is the mean of the members' losses on the same spikes;
members must share the input layout; the specificity floor and the evaluation use the members' mean."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from errors import ConfigError
from optimization import run_activity_optimization
from optimization.constraints import RateParameters
from optimization.initial import initial_rates
from optimization.loop import RateOptimizer
from optimization.network import prepare_model, resolve_layout
from optimization.run import MeanSpikeProbability, check_ensemble, input_mismatch
from optimization.runtime import make_generator
from optimization.sampler import make_sampler
from optimization.step import METRICS
from optimization.stimulus import PairedStimulus, choose_stimulus
from progress import NO_PROGRESS
from tests.optimization.conftest import WINDOW_MS
from tests.optimization.synthetic import NUM_EXCITATORY, NUM_INHIBITORY, ExactFilterModel, SyntheticNeuron

LOGGER = logging.getLogger("tests.optimization")


def members() -> list[ExactFilterModel]:
    return [
        ExactFilterModel(SyntheticNeuron.make(NUM_EXCITATORY, NUM_INHIBITORY, seed=seed), WINDOW_MS, gain=gain)
        for seed, gain in ((0, 4.0), (1, 2.0), (2, 6.0))
    ]


def one_step(models, config) -> RateOptimizer:
    """A RateOptimizer through `models` after one step from fixed rates and the same generator seed."""
    device = torch.device("cpu")
    layout = resolve_layout(models[0], config, LOGGER)
    spike_models = [prepare_model(model, config, layout, device) for model in models]
    stimulus = choose_stimulus(config.stimulus, layout, seed=1)
    rates = initial_rates(config.initial_rates, layout, config.num_patterns, config.constraints.max_rate, seed=2)
    optimizer = RateOptimizer(
        RateParameters(rates, layout.num_excitatory, config.constraints),
        spike_models,
        make_sampler(config.sampler),
        PairedStimulus(stimulus, layout, device),
        config,
        make_generator(0, device),
        Path("unused.pt"),
        {},
        LOGGER,
        progress=NO_PROGRESS,
    )
    optimizer.take_step()
    return optimizer


@pytest.mark.parametrize("specificity", [0.0, 0.5])
def test_ensemble_loss_and_gradient_are_the_means_of_the_members(small_config, specificity):
    config = small_config(
        loop={"grad_clip_norm": None},
        objective={"specificity_weight": specificity},
        initial_rates={"excitatory_range": (0.05, 0.1), "inhibitory_range": (0.05, 0.1)},
    )
    alone = [one_step([model], config) for model in members()]
    together = one_step(members(), config)
    for name in ("loss_response", "loss_specificity", "p_control", "p_stim"):
        index = METRICS.index(name)
        expected = sum(optimizer.tracker.sums[index] for optimizer in alone) / len(alone)
        torch.testing.assert_close(together.tracker.sums[index], expected, rtol=1e-5, atol=1e-7)
    # Adam's first step is sign-like; the gradient itself is the mean
    mean_gradient = sum(optimizer.parameters.free.grad for optimizer in alone) / len(alone)
    torch.testing.assert_close(together.parameters.free.grad, mean_gradient, rtol=1e-4, atol=1e-9)
    assert alone[0].parameters.free.grad.abs().max() > 0


def test_members_with_another_input_layout_are_refused(small_config, tmp_path):
    model, *others = members()
    wider = ExactFilterModel(SyntheticNeuron.make(NUM_EXCITATORY + 1, NUM_INHIBITORY, seed=3), WINDOW_MS)
    with pytest.raises(ConfigError, match="must share the input layout") as refusal:
        run_activity_optimization(
            model, small_config(), tmp_path / "run", device="cpu", members=[wider], progress=NO_PROGRESS
        )
    assert str((WINDOW_MS, NUM_EXCITATORY + NUM_INHIBITORY)) in str(refusal.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_an_ensemble_run_evaluates_the_members_mean(small_config, tmp_path):
    model, *others = members()
    outcome = run_activity_optimization(
        model, small_config(), tmp_path / "run", device="cpu", members=others, progress=NO_PROGRESS
    )
    setup = json.loads((tmp_path / "run" / "evaluation.json").read_text())["setup"]
    assert setup["ensemble_size"] == 3 and 0.0 <= outcome.evaluation["optimized"]["p_spike_stim"] <= 1.0
    config = small_config()
    layout = resolve_layout(model, config, LOGGER)
    wrapped = [prepare_model(member, config, layout, torch.device("cpu")) for member in members()]
    spikes = (torch.rand(5, WINDOW_MS, layout.num_segments, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    expected = sum(member(spikes) for member in wrapped) / 3
    torch.testing.assert_close(MeanSpikeProbability(wrapped)(spikes), expected)


def test_one_input_rule_for_ensemble_members_and_transfer_models():
    model = members()[0]
    neuron = SyntheticNeuron.make(NUM_EXCITATORY, NUM_INHIBITORY, seed=0)
    assert input_mismatch(model, ExactFilterModel(neuron, WINDOW_MS, gain=1.0)) is None
    other_window = input_mismatch(model, ExactFilterModel(neuron, WINDOW_MS + 40))
    assert other_window is not None and str((WINDOW_MS + 40, NUM_EXCITATORY + NUM_INHIBITORY)) in other_window
    with pytest.raises(ConfigError, match=r"optimization.ensemble: beta \(rank 3\) takes inputs"):
        check_ensemble(model, [ExactFilterModel(neuron, WINDOW_MS + 40)], ["beta (rank 3)"])

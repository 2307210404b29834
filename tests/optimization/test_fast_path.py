"""The fast path (first layer once for both copies) gives the plain path's loss and gradients; fallbacks.

Models are real Keras files converted by our converter. Tolerance: one step from the same seed (same spikes)
gives a loss within 1e-5 relative and rate gradients within 1e-5 of the largest gradient, in fp32.
"""

import logging
from pathlib import Path

import pytest
import torch

from conversion.converter import build_conversion
from conversion.model_file import read_model_file
from optimization import fast_path
from optimization.constraints import RateParameters
from optimization.fast_path import first_conv_call
from optimization.initial import initial_rates
from optimization.loop import RateOptimizer
from optimization.network import prepare_model, resolve_layout
from optimization.runtime import make_generator
from optimization.sampler import make_sampler
from optimization.stimulus import PairedStimulus, choose_stimulus
from progress import NO_PROGRESS
from tests.optimization.synthetic import ExactFilterModel
from tests.subprocesses import run_keras_script

RELATIVE_TOLERANCE = 1e-5
LOGGER = logging.getLogger("tests.optimization.fast_path")

BUILD = """
import keras, numpy as np

L = keras.layers
rng = np.random.default_rng(3)

def heads(x):
    return [L.Conv1D(1, 1, activation="sigmoid", name="spikes")(x), L.Conv1D(1, 1, name="somatic")(x)]

def save(inputs, outputs, name):
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([rng.normal(0, 0.6, w.shape).astype("float32") if i < 2 or i > 3 else
                               rng.uniform(0.5, 2.0, w.shape).astype("float32") for i, w in enumerate(weights)])
    model.save(name)

x_in = keras.Input((60, 16), name="input")
x = L.Conv1D(8, 9, padding="causal", dilation_rate=2, activation="elu", name="layer_1")(x_in)
x = L.BatchNormalization(name="layer_1_BN")(x)
x = L.Conv1D(8, 5, padding="causal", activation="relu", name="layer_2")(x)
save(x_in, heads(L.BatchNormalization(name="layer_2_BN")(x)), "causal_tcn.h5")

x_in = keras.Input((60, 16), name="input")
x = L.Conv1D(8, 7, padding="same", groups=2, activation="tanh", name="grouped_same")(x_in)
save(x_in, heads(L.Conv1D(6, 3, padding="causal", activation="relu", name="layer_2")(x)), "grouped_same.h5")

x_in = keras.Input((60, 16), name="input")
a = L.Conv1D(8, 9, padding="causal", activation="relu", name="branch_a")(x_in)
b = L.Conv1D(8, 3, padding="causal", activation="relu", name="branch_b")(x_in)
save(x_in, heads(L.Add(name="sum")([a, b])), "two_branches.h5")
"""


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fast_path_models")
    run_keras_script(BUILD, folder)
    return folder


def converted(model_files: Path, name: str) -> torch.nn.Module:
    return build_conversion(read_model_file(model_files / f"{name}.h5"), None).model


def one_step(
    model, make_config, fast_path: str, loop: dict | None = None, setting: tuple[str, str] | None = None, **overrides
) -> RateOptimizer:
    """A RateOptimizer after one step from seed 0 (its loss sums and the free parameters' gradient are kept);
    `setting` imposes (precision, first-layer formulation) as precision auto would choose them on CUDA."""
    config = make_config(
        loop={"fast_path": fast_path, "precision": "fp32", "grad_clip_norm": None, **(loop or {})},
        initial_rates={"excitatory_range": (0.05, 0.1), "inhibitory_range": (0.05, 0.1)},
        constraints={"max_rate": 0.2, **overrides.pop("constraints", {})},
        **overrides,
    )
    device = torch.device("cpu")
    layout = resolve_layout(model, config, LOGGER)
    spike_model = prepare_model(model, config, layout, device)
    stimulus = choose_stimulus(config.stimulus, layout, seed=1)
    rates = initial_rates(config.initial_rates, layout, config.num_patterns, config.constraints.max_rate, seed=2)
    optimizer = RateOptimizer(
        RateParameters(rates, layout.num_excitatory, config.constraints),
        [spike_model],
        make_sampler(config.sampler),
        PairedStimulus(stimulus, layout, device),
        config,
        make_generator(0, device),
        Path("unused.pt"),
        {},
        LOGGER,
        progress=NO_PROGRESS,
    )
    if setting is not None:
        optimizer.forwards[0].precision, optimizer.forwards[0].first_layer = setting
    optimizer.take_step()
    return optimizer


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("causal_tcn", {}),
        ("causal_tcn", {"constraints": {"moving_segments": "all"}, "sampler": {"kind": "poisson"}}),
        (
            "causal_tcn",
            {
                "constraints": {"moving_segments": "tied"},
                "stimulus": {"segments": [0, 9, 12], "allow_inhibitory": True},
            },
        ),
        ("causal_tcn", {"sampler": {"kind": "relaxed_bernoulli"}, "loop": {"micro_batches": 3}}),
        ("grouped_same", {}),
    ],
)
def test_fast_path_equals_plain_path(model_files, small_config, name, overrides):
    fast = one_step(converted(model_files, name), small_config, "auto", **overrides)
    plain = one_step(converted(model_files, name), small_config, "off", **overrides)
    assert fast.forwards[0].fast and not plain.forwards[0].fast
    fast_gradient, plain_gradient = fast.parameters.free.grad, plain.parameters.free.grad
    assert plain_gradient.abs().max() > 0
    assert (fast_gradient - plain_gradient).abs().max() <= RELATIVE_TOLERANCE * plain_gradient.abs().max()
    torch.testing.assert_close(fast.tracker.sums, plain.tracker.sums, rtol=RELATIVE_TOLERANCE, atol=1e-7)


def test_models_without_a_single_first_conv_take_the_plain_path(model_files, small_config, neuron, caplog):
    index, reason = first_conv_call(converted(model_files, "two_branches"))
    assert index is None and "feeds 2 layers" in reason
    index, reason = first_conv_call(ExactFilterModel(neuron, 60))
    assert index is None and "not a converted Keras graph" in reason
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        optimizer = one_step(converted(model_files, "two_branches"), small_config, "auto")
    assert not optimizer.forwards[0].fast
    assert "plain path" in caplog.text and "feeds 2 layers" in caplog.text
    assert optimizer.forwards[0].precision == "fp32"  # auto is fp32 off CUDA
    assert torch.isfinite(optimizer.parameters.free.grad).all()


@pytest.mark.parametrize(
    "setting, overrides",
    [
        (("bf16", "conv"), {}),
        (("fp32", "matmul"), {}),
        (("bf16", "matmul"), {"constraints": {"moving_segments": "all"}}),
    ],
)
def test_bf16_settings_stay_close_to_fp32(model_files, small_config, setting, overrides):
    """bf16 autocast and the bf16 first layer as a shifted matrix product change rounding only: the loss within
    2 %, the gradient's direction (cosine >= 0.95)."""
    reference = one_step(converted(model_files, "causal_tcn"), small_config, "off", **overrides)
    bf16 = one_step(converted(model_files, "causal_tcn"), small_config, "auto", setting=setting, **overrides)
    bf16_gradient, gradient = bf16.parameters.free.grad.flatten(), reference.parameters.free.grad.flatten()
    assert torch.nn.functional.cosine_similarity(bf16_gradient, gradient, dim=0) >= 0.95
    torch.testing.assert_close(bf16.tracker.sums[:2], reference.tracker.sums[:2], rtol=2e-2, atol=0)


def test_precision_measurement_keeps_bf16_only_when_accurate(model_files, small_config, monkeypatch):
    """The comparison behind `precision: auto` (run on CUDA only; here its logic on the CPU)."""
    forward = one_step(converted(model_files, "causal_tcn"), small_config, "auto").forwards[0]
    control = (torch.rand(4, 60, 16, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    assert fast_path._compare_settings(forward, control, LOGGER) in [
        ("fp32", "conv"),
        ("bf16", "conv"),
        ("fp32", "matmul"),
        ("bf16", "matmul"),
    ]
    monkeypatch.setattr(fast_path, "BF16_TOLERANCE", 0.0)  # bf16 always deviates a little: never accurate enough
    assert fast_path._compare_settings(forward, control, LOGGER) == ("fp32", "conv")


def test_the_precision_cache_tells_apart_models_of_one_architecture(model_files, small_config):
    """The cached choice of `precision: auto` rests on an accuracy check, which depends on the weights."""
    first = one_step(converted(model_files, "causal_tcn"), small_config, "auto").forwards[0]
    same = one_step(converted(model_files, "causal_tcn"), small_config, "auto").forwards[0]
    assert first.signature() == same.signature()
    other = converted(model_files, "causal_tcn")
    with torch.no_grad():
        other.layers["layer_2"].weight.mul_(1.5)
    changed = one_step(other, small_config, "auto").forwards[0]
    assert changed.signature() != first.signature()

"""Inputs of the optimization: configuration, segment layout and duration from the model, initial rates."""

import logging

import numpy as np
import pydantic
import pytest
import torch

from errors import ConfigError, OptimizationError
from optimization.config import InitialRatesConfig, LoopConfig, OptimizationConfig
from optimization.initial import initial_rates
from optimization.network import InputLayout, prepare_model, resolve_layout
from tests.optimization.synthetic import CausalConvNeuronModel

LOGGER = logging.getLogger("tests.optimization")
LAYOUT = InputLayout(num_excitatory=3, num_inhibitory=2, duration_ms=8)


class _Shaped(torch.nn.Module):
    """A stand-in model that states an input shape and returns a fixed probability."""

    def __init__(self, input_shapes):
        super().__init__()
        if input_shapes is not None:
            self.input_shapes = input_shapes

    def forward(self, inputs):
        return torch.full((*inputs.shape[:2], 1), 0.5), inputs.sum(-1, keepdim=True)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(pydantic.ValidationError):
        OptimizationConfig.model_validate({"loop": {"max_iteration": 3}})
    with pytest.raises(pydantic.ValidationError):
        OptimizationConfig.model_validate({"constraints": {"max_rate": 2.0}})
    with pytest.raises(pydantic.ValidationError, match="multiple of log_every"):
        LoopConfig(log_every=10, checkpoint_every=15)
    with pytest.raises(pydantic.ValidationError, match="low <= high"):
        InitialRatesConfig(excitatory_range=(0.03, 0.01))


def test_every_field_has_a_description():
    def undocumented(model):
        for name, field in model.model_fields.items():
            if not field.description:
                yield f"{model.__name__}.{name}"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
                yield from undocumented(annotation)

    assert list(undocumented(OptimizationConfig)) == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, (20, 20, 60)),
        ({"num_excitatory": 25}, (25, 15, 60)),
        ({"num_inhibitory": 10}, (30, 10, 60)),
        ({"duration_ms": 30}, (20, 20, 30)),
    ],
)
def test_layout_defaults_come_from_the_model(settings, expected):
    layout = resolve_layout(_Shaped([(60, 40)]), OptimizationConfig(**settings), LOGGER)
    assert (layout.num_excitatory, layout.num_inhibitory, layout.duration_ms) == expected


def test_odd_channel_count_puts_the_extra_channel_on_the_inhibitory_side(caplog):
    with caplog.at_level(logging.WARNING):
        layout = resolve_layout(_Shaped([(50, 41)]), OptimizationConfig(), LOGGER)
    assert (layout.num_excitatory, layout.num_inhibitory) == (20, 21)
    assert "odd number of input channels" in caplog.text


@pytest.mark.parametrize(
    ("input_shapes", "settings", "message"),
    [
        ([(60, 40)], {"num_excitatory": 30, "num_inhibitory": 20}, "must equal the model's 40 input channels"),
        ([(60, 40)], {"num_excitatory": 41}, "must equal the model's 40 input channels"),
        (None, {}, "does not state its input channels"),
        ([(None, 40)], {}, "set optimization.duration_ms"),
        (None, {"num_excitatory": 3, "num_inhibitory": 3}, "set optimization.duration_ms"),
    ],
)
def test_layout_errors_say_what_to_set(input_shapes, settings, message):
    with pytest.raises(ConfigError, match=message):
        resolve_layout(_Shaped(input_shapes), OptimizationConfig(**settings), LOGGER)


def test_prepare_model_freezes_and_checks_the_output():
    model = CausalConvNeuronModel(num_segments=40, window_ms=60)
    config = OptimizationConfig()
    layout = resolve_layout(model, config, LOGGER)
    prepared = prepare_model(model, config, layout, torch.device("cpu"))
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert prepared(torch.zeros(3, layout.duration_ms, layout.num_segments)).shape == (3, layout.duration_ms)
    with pytest.raises(ConfigError, match="has 2 output"):
        prepare_model(model, OptimizationConfig(spike_output_index=2), layout, torch.device("cpu"))


def test_prepare_model_refuses_an_output_that_is_not_a_probability(exact_model):
    config = OptimizationConfig(spike_output_index=1)  # the voltage
    layout = resolve_layout(exact_model, config, LOGGER)
    with pytest.raises(OptimizationError, match="not a probability"):
        prepare_model(exact_model, config, layout, torch.device("cpu"))


def test_prepare_model_reports_a_model_that_rejects_the_input():
    config = OptimizationConfig(num_excitatory=10, num_inhibitory=10, duration_ms=30)
    model = CausalConvNeuronModel(num_segments=40, window_ms=60)
    del model.input_shapes
    layout = resolve_layout(model, config, LOGGER)
    with pytest.raises(OptimizationError, match=r"rejects an input of shape \(2, 30, 20\)"):
        prepare_model(model, config, layout, torch.device("cpu"))


def test_generated_background_ranges_and_reproducibility():
    config = InitialRatesConfig()
    rates = initial_rates(config, LAYOUT, num_patterns=4, max_rate=0.1, seed=3)
    assert rates.shape == (4, 8, 5)
    excitatory, inhibitory = rates[..., :3], rates[..., 3:]
    assert excitatory.min() >= 0.005 and excitatory.max() <= 0.02
    assert inhibitory.min() >= 0.01 and inhibitory.max() <= 0.03
    assert not torch.equal(rates[0], rates[1])
    assert torch.equal(rates, initial_rates(config, LAYOUT, num_patterns=4, max_rate=0.1, seed=3))


def test_rates_file_is_sliced_at_the_start_time(tmp_path):
    file_rates = np.random.default_rng(0).uniform(0, 0.05, size=(5, 20))
    path = tmp_path / "rates.npy"
    np.save(path, file_rates)
    rates = initial_rates(InitialRatesConfig(path=path, start_time_ms=7), LAYOUT, 2, 0.1, seed=0)
    assert rates.shape == (2, 8, 5)
    np.testing.assert_allclose(rates[1].numpy(), file_rates[:, 7:15].T.astype(np.float32))


@pytest.mark.parametrize(
    ("content", "start", "message"),
    [
        (np.full((5,), 0.01), 0, "expected 2-D"),
        (np.full((4, 20), 0.01), 0, "has 4 segments"),
        (np.full((20, 5), 0.01), 0, "looks transposed"),
        (np.full((5, 10), 0.01), 3, "needs 11"),
        (np.where(np.eye(5, 20) > 0, np.nan, 0.01), 0, "NaN or Inf values, first at segment 0, time 0"),
        (np.full((5, 20), -0.01), 0, "must lie in"),
        (np.full((5, 20), 0.5), 0, "must lie in"),
        (np.array([["a"] * 20] * 5), 0, "not a real number type"),
    ],
)
def test_bad_rates_files_are_explained_with_the_file_name(tmp_path, content, start, message):
    path = tmp_path / "bad_rates.npy"
    np.save(path, content)
    with pytest.raises(OptimizationError, match=message) as raised:
        initial_rates(InitialRatesConfig(path=path, start_time_ms=start), LAYOUT, 1, 0.1, seed=0)
    assert str(path) in str(raised.value)


def test_unreadable_rates_file_is_explained(tmp_path):
    path = tmp_path / "missing.npy"
    with pytest.raises(OptimizationError, match="cannot be read") as raised:
        initial_rates(InitialRatesConfig(path=path), LAYOUT, 1, 0.1, seed=0)
    assert str(path) in str(raised.value)
    path.write_text("not numpy")
    with pytest.raises(OptimizationError, match="cannot be read"):
        initial_rates(InitialRatesConfig(path=path), LAYOUT, 1, 0.1, seed=0)

"""The custom-layer example: a user's own Keras layer class converts through a converter registered from the
user's code (examples/custom_layer.py), with no change to the package."""

from __future__ import annotations

import pytest
import torch

from conversion.registry import find_converter
from tests.subprocesses import run_keras_script


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("custom_layer")
    run_keras_script(
        "from pathlib import Path\nfrom examples.custom_layer import build_keras_model\nbuild_keras_model(Path('.'))\n",
        folder,
    )
    return folder


def test_example_converts_the_custom_layer_exactly(example_folder, parity):
    with parity.tensorflow_blocked():
        from examples import custom_layer

        diffs = custom_layer.convert_and_compare(example_folder)
    assert set(diffs) == {"spikes", "somatic"}
    assert max(diffs.values()) <= 1e-5
    assert find_converter("lab>ChannelGain") is custom_layer.convert_channel_gain
    payload = torch.load(example_folder / "gain_tcn.pth", weights_only=True)
    gain_layer = next(layer for layer in payload["spec"]["layers"] if layer["name"] == "gain")
    assert gain_layer["type"] == "lab_channel_gain" and gain_layer["config"]["min_gain"] == pytest.approx(0.1)
    # the clamp at min_gain matters for these weights, so the layer's config was really carried over
    assert (payload["state_dict"]["layers.gain.gain"] < 0.1).any()


def test_a_second_converter_for_a_class_name_is_refused_unless_it_replaces():
    from conversion.registry import register_layer_converter

    built_in = find_converter("Conv1D")
    with pytest.raises(ValueError, match="'Conv1D' is registered already; pass replace=True"):
        register_layer_converter("Conv1D", converter=lambda layer: None)
    assert find_converter("Conv1D") is built_in

    def stand_in(layer):
        raise AssertionError("never called")

    try:
        register_layer_converter("Conv1D", converter=stand_in, replace=True)
        assert find_converter("Conv1D") is stand_in
        assert find_converter("Custom>Conv1D") is stand_in
    finally:
        register_layer_converter("Conv1D", converter=built_in, replace=True)
    assert find_converter("Conv1D") is built_in


def test_a_second_module_type_of_a_name_is_refused_unless_it_replaces():
    from models.layers import MODULE_TYPES, register_module_type

    built_in = MODULE_TYPES["conv1d"]
    with pytest.raises(ValueError, match="'conv1d' is registered already"):
        register_module_type("conv1d", torch.nn.Identity)
    assert MODULE_TYPES["conv1d"] is built_in
    with pytest.raises(KeyError, match="unknown module type 'no_such_type'; known: .*conv1d"):
        MODULE_TYPES["no_such_type"]

"""Converting a model that uses your own Keras layer class, without editing the package.

    python -m examples.custom_layer [FOLDER]      # from the repository root; FOLDER defaults to a temporary one

The Keras side defines `ChannelGain` (y = x · max(gain, min_gain) + shift per channel, with get_config) and
saves a small neuron TCN using it. The PyTorch side, which needs no TensorFlow, gives the converter three
things: a torch module with the same computation, registered as a module type, and a converter from the
Keras layer (its config and weights, taken by name) to that module. Import this file before converting or
loading such models: the `.pth` names the module type, so loading needs the registration too.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from conversion.registry import ConvertedLayer, KerasLayer, register_layer_converter
from model_converter import TCNModelConverter, load_converted_model
from models.layers import register_module_type

KERAS_FILE = "gain_tcn.h5"
KERAS_OUTPUTS = "gain_tcn_keras_io.npz"


class ChannelGain(nn.Module):
    """The PyTorch twin of the Keras layer: Keras layout (batch, time, channels)."""

    def __init__(self, channels: int, min_gain: float):
        super().__init__()
        self.min_gain = min_gain
        self.gain = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.clamp(min=self.min_gain) + self.shift


register_module_type("lab_channel_gain", ChannelGain)


@register_layer_converter("ChannelGain")  # the Keras class name (a `package>` prefix is ignored)
def convert_channel_gain(layer: KerasLayer) -> ConvertedLayer:
    gain = layer.weights.take("gain", (None,))  # by name; a missing or mis-shaped weight is reported
    shift = layer.weights.take("shift", gain.shape)
    return ConvertedLayer(
        type="lab_channel_gain",
        config={"channels": int(gain.shape[0]), "min_gain": float(layer.config["min_gain"])},
        params={"gain": gain, "shift": shift},
    )


def build_keras_model(folder: Path) -> Path:
    """Define the Keras layer, save a model using it and Keras's outputs on binary spikes (needs TensorFlow)."""
    import keras  # only this half of the example needs TensorFlow

    @keras.saving.register_keras_serializable(package="lab")
    class ChannelGain(keras.layers.Layer):
        def __init__(self, min_gain: float = 0.0, **kwargs):
            super().__init__(**kwargs)
            self.min_gain = min_gain

        def build(self, input_shape):
            self.gain = self.add_weight(name="gain", shape=(input_shape[-1],), initializer="ones")
            self.shift = self.add_weight(name="shift", shape=(input_shape[-1],), initializer="zeros")

        def call(self, x):
            return x * keras.ops.maximum(self.gain, self.min_gain) + self.shift

        def get_config(self):
            return {**super().get_config(), "min_gain": self.min_gain}

    inputs = keras.Input((50, 16), name="input")
    x = keras.layers.Conv1D(8, 5, padding="causal", activation="relu", name="layer_1")(inputs)
    x = ChannelGain(min_gain=0.1, name="gain")(x)
    outputs = [
        keras.layers.Conv1D(1, 1, activation="sigmoid", name="spikes")(x),
        keras.layers.Conv1D(1, 1, name="somatic")(x),
    ]
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.get_weights()])
    model.save(folder / KERAS_FILE)
    spikes = (rng.random((4, 50, 16)) < 0.05).astype("float32")
    spikes_out, somatic_out = model.predict(spikes, verbose=0)
    np.savez(folder / KERAS_OUTPUTS, input=spikes, spikes=spikes_out, somatic=somatic_out)
    return folder / KERAS_FILE


def convert_and_compare(folder: Path) -> dict[str, float]:
    """Convert the saved model (no TensorFlow needed), load the `.pth`, and compare with Keras's outputs."""
    pth = folder / "gain_tcn.pth"
    TCNModelConverter(folder / KERAS_FILE).convert(pth)
    model = load_converted_model(pth)
    keras_io = np.load(folder / KERAS_OUTPUTS)
    with torch.no_grad():
        outputs = model(torch.from_numpy(keras_io["input"]))
    return {name: float(np.abs(out.numpy() - keras_io[name]).max()) for name, out in zip(model.output_names, outputs)}


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    build_keras_model(folder)
    diffs = convert_and_compare(folder)
    print(
        f"converted {folder / KERAS_FILE}; max abs diff against Keras: "
        + ", ".join(f"{name} {diff:.2g}" for name, diff in diffs.items())
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="custom_layer_")))

"""Fixtures shared across test packages: small real Keras models built in a subprocess (converter CLI,
refusal and conversion-lock tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.subprocesses import run_keras_script

BUILD = """
import keras, numpy as np

def tcn(name_prefix=""):
    inp = keras.Input((40, 12), name="input")
    x = keras.layers.Conv1D(6, 5, padding="causal", activation="relu", name="layer_1")(inp)
    x = keras.layers.BatchNormalization(name="layer_1_BN")(x)
    x = keras.layers.Conv1D(4, 3, padding="causal", activation="relu", name="layer_2")(x)
    x = keras.layers.BatchNormalization(name="layer_2_BN")(x)
    outs = [keras.layers.Conv1D(1, 1, activation="sigmoid", name="spikes")(x),
            keras.layers.Conv1D(1, 1, name="somatic")(x)]
    return inp, x, outs

inp, x, outs = tcn()
model = keras.Model(inp, outs)
rng = np.random.default_rng(1)
for layer in model.layers:  # non-trivial weights and BN statistics
    layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if i < 3 else
                       rng.uniform(0.5, 2.0, w.shape).astype("float32") for i, w in enumerate(layer.get_weights())])
model.save("tcn.h5")
spikes = (rng.random((3, 40, 12)) < 0.05).astype("float32")
np.savez("tcn_io.npz", x=spikes, **{name: out for name, out in zip(model.output_names, model.predict(spikes, verbose=0))})

@keras.saving.register_keras_serializable(package="lab")
class Gain(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x

inp, x, outs = tcn()
y = keras.layers.Lambda(lambda t: t * 3.0, name="triple")(x)
y = Gain(name="gain")(y)
keras.Model(inp, [keras.layers.Conv1D(1, 1, activation="sigmoid", name="spikes")(y)]).save("unknown_layers.h5")
"""


@pytest.fixture(scope="session")
def keras_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small_keras_models")
    run_keras_script(BUILD, folder)
    return folder

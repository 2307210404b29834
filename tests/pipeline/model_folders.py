"""Models folders for main.py's tests: real Keras neuron TCNs (.h5) with fit_CNN-style parameter pickles."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

from tests.subprocesses import run_keras_script

WINDOW, EXCITATORY, INHIBITORY = 60, 10, 10

BUILD = """
import json, keras, numpy as np
spec = json.load(open("build.json"))
for i, name in enumerate(spec["names"]):
    keras.utils.set_random_seed(i)
    inp = keras.Input((spec["window"], spec["channels"]))
    x = keras.layers.Conv1D(8, 15, padding="causal", activation="relu", name="layer_1")(inp)
    x = keras.layers.BatchNormalization(name="layer_1_BN")(x)
    x = keras.layers.Conv1D(8, 5, padding="causal", activation="relu", name="layer_2")(x)
    x = keras.layers.BatchNormalization(name="layer_2_BN")(x)
    outs = [keras.layers.Conv1D(1, 1, activation="sigmoid", name="spikes")(x),
            keras.layers.Conv1D(1, 1, name="somatic")(x), keras.layers.Conv1D(2, 1, name="dendritic")(x)]
    keras.Model(inp, outs).save(name + ".h5")
"""


def params_pickle(val_spikes_loss: list[float]) -> dict:
    return {
        "architecture_dict": {"network_depth": 2, "input_window_size": WINDOW, "num_filters_per_layer": [8, 8],
                              "filter_sizes_per_layer": [15, 5], "activation_function_per_layer": ["relu", "relu"]},
        "training_history_dict": {"val_spikes_loss": val_spikes_loss, "loss": [1.0] * len(val_spikes_loss)},
        "data_dict": {}, "learning_schedule_dict": {},
    }


def build_models_folder(folder: Path, histories: dict[str, list[float] | None]) -> Path:
    """`<name>.pickle` with the given validation history for each entry, and `<name>.h5` beside it unless the
    name starts with "nomodel"."""
    folder.mkdir(parents=True, exist_ok=True)
    with_model = [name for name, history in histories.items() if not name.startswith("nomodel")]
    (folder / "build.json").write_text(json.dumps({"names": with_model, "window": WINDOW,
                                                   "channels": EXCITATORY + INHIBITORY}))
    run_keras_script(BUILD, folder)
    (folder / "build.json").unlink()
    for name, history in histories.items():
        (folder / f"{name}.pickle").write_bytes(pickle.dumps(params_pickle(history), protocol=2))
    return folder


NAN = math.nan

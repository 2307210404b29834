"""Models folders for main.py's tests: real Keras neuron TCNs (.h5) with fit_CNN-style parameter pickles."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

from tests.subprocesses import run_cli, run_keras_script

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


def params_pickle(val_spikes_loss: list[float], data_dict: dict | None = None) -> dict:
    return {
        "architecture_dict": {
            "network_depth": 2,
            "input_window_size": WINDOW,
            "num_filters_per_layer": [8, 8],
            "filter_sizes_per_layer": [15, 5],
            "activation_function_per_layer": ["relu", "relu"],
        },
        "training_history_dict": {"val_spikes_loss": val_spikes_loss, "loss": [1.0] * len(val_spikes_loss)},
        "data_dict": data_dict or {},
        "learning_schedule_dict": {},
    }


def build_models_folder(folder: Path, histories: dict[str, list[float] | None], data_dict: dict | None = None) -> Path:
    """`<name>.pickle` with the given validation history (and `data_dict`) for each entry, and `<name>.h5` beside
    it unless the name starts with "nomodel"."""
    folder.mkdir(parents=True, exist_ok=True)
    with_model = [name for name, history in histories.items() if not name.startswith("nomodel")]
    (folder / "build.json").write_text(
        json.dumps({"names": with_model, "window": WINDOW, "channels": EXCITATORY + INHIBITORY})
    )
    run_keras_script(BUILD, folder)
    (folder / "build.json").unlink()
    for name, history in histories.items():
        (folder / f"{name}.pickle").write_bytes(pickle.dumps(params_pickle(history, data_dict), protocol=2))
    return folder


def build_converted_models_folder(
    folder: Path, histories: dict[str, list[float]], data_dict: dict | None = None
) -> Path:
    """build_models_folder, then every model converted by model_converter.py (as a first run would)."""
    build_models_folder(folder, histories, data_dict)
    for name in histories:
        result = run_cli(["model_converter.py", str(folder / f"{name}.h5"), str(folder / f"{name}.pickle")])
        assert result.returncode == 0, result.stderr
    return folder


def workspace_with(models: Path, folder: Path) -> Path:
    """`folder` with `models/` (a copy of `models`) and a config.yaml that points at it."""
    shutil.copytree(models, folder / "models")
    (folder / "config.yaml").write_text("models_dir: models\noutput_dir: runs\n")
    return folder


NAN = math.nan

"""The shipped demo models convert exactly (against Keras on binary spikes) and match the training report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model_converter import TCNModelConverter
from safe_pickle import load_pickle
from tests.subprocesses import REPO, run_keras_script

DEMO_DIR = REPO / "demo_models"
REPORT = json.loads((DEMO_DIR / "training_report.json").read_text())

PREDICT = """
import json, keras, numpy as np
for name in json.load(open("names.json")):
    model = keras.models.load_model(name + ".h5", compile=False)
    spikes = (np.random.default_rng(0).random((3,) + tuple(model.input_shape[1:])) < 0.03).astype("float32")
    np.savez(name + ".npz", x=spikes, *model.predict(spikes, verbose=0))
"""


@pytest.fixture(scope="module")
def keras_predictions(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo_keras")
    names = [entry["name"] for entry in REPORT["models"]]
    for name in names:
        shutil.copy(DEMO_DIR / f"{name}.h5", folder)
    (folder / "names.json").write_text(json.dumps(names))
    run_keras_script(PREDICT, folder)
    return folder


@pytest.mark.parametrize("entry", REPORT["models"], ids=lambda e: e["name"].split("__")[1])
def test_demo_model_converts_exactly_and_matches_its_record(entry, keras_predictions, tmp_path):
    params_path = DEMO_DIR / entry["pickle_file"]
    model = TCNModelConverter(DEMO_DIR / entry["h5_file"], params_path).convert(tmp_path / "demo.pth")
    saved = np.load(keras_predictions / f"{entry['name']}.npz")
    with torch.no_grad():
        outputs = model(torch.from_numpy(saved["x"]))
    assert model.output_names == ["spikes", "somatic", "dendritic"]
    for index, output in enumerate(outputs):
        assert np.abs(output.numpy() - saved[f"arr_{index}"]).max() <= 1e-5

    assert sum(v.numel() for v in model.state_dict().values()) == entry["num_parameters"]  # BN statistics too
    assert (DEMO_DIR / entry["h5_file"]).stat().st_size == entry["h5_bytes"]
    architecture = load_pickle(params_path)["architecture_dict"]
    convs = [
        layer
        for layer in model.metadata["layers"]
        if layer["class_name"] == "Conv1D" and layer["name"].startswith("layer_")
    ]
    assert len(convs) == architecture["network_depth"] == entry["network_depth"]
    kernels = [model.layers[layer["name"]].kernel_size for layer in convs]
    assert kernels == architecture["filter_sizes_per_layer"] == entry["filter_sizes_per_layer"]
    assert model.input_shapes == [
        (
            architecture["input_window_size"],
            REPORT["data"]["simulator_config"]["num_excitatory_segments"]
            + REPORT["data"]["simulator_config"]["num_inhibitory_segments"],
        )
    ]

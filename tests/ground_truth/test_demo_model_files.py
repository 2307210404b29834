"""The shipped demo models: files present, readable without TensorFlow, in the original layout, as reported."""

import json
import pickle
import pickletools
import re
from pathlib import Path

import h5py
import pytest

from ground_truth.demo import NeuronConfig

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo_models"
NAME_PATTERN = re.compile(
    r"^SIMNMDA_TCN__DxWxT_(\d+)x(\d+)x(\d+)__\d{4}-\d{2}-\d{2}__\d{2}_\d{2}__samples_(\d+)"
    r"__LogLoss_train_\d+_valid_\d+__ID_\d+$"
)
ARCHITECTURE_KEYS = {
    "network_depth",
    "input_window_size",
    "num_filters_per_layer",
    "initializer_per_layer",
    "filter_sizes_per_layer",
    "l2_regularization_per_layer",
    "activation_function_per_layer",
    "strides_per_layer",
    "dilation_rates_per_layer",
}
PER_EPOCH_KEYS = {
    "loss",
    "spikes_loss",
    "somatic_loss",
    "dendritic_loss",
    "val_loss",
    "val_spikes_loss",
    "val_somatic_loss",
    "val_dendritic_loss",
    "learning_schedule",
    "batch_size",
    "learning_rate",
    "loss_weights",
    "num_train_samples",
    "num_train_steps",
}


def load_report() -> dict:
    return json.loads((DEMO_DIR / "training_report.json").read_text())


REPORT = load_report()
MODELS = REPORT["models"]


def load_pickle(entry: dict) -> dict:
    with open(DEMO_DIR / entry["pickle_file"], "rb") as handle:
        return pickle.load(handle)


def test_report_lists_several_models_with_auc_at_least_0_9():
    assert len(MODELS) >= 3
    assert {"seed", "command", "versions", "duration_seconds"} <= set(REPORT)
    for entry in MODELS:
        assert entry["held_out_spike_auc"] >= 0.9, entry["name"]
        assert entry["held_out_soma_rmse_mv"] > 0


def test_folder_holds_the_reported_models_and_no_others_and_they_are_small():
    # Other files (e.g. converted .pth caches beside the models) may live here; models of another run may not.
    models_present = {
        path.name for path in DEMO_DIR.iterdir() if path.suffix in (".h5", ".pickle") and NAME_PATTERN.match(path.stem)
    }
    reported = {entry[key] for entry in MODELS for key in ("h5_file", "pickle_file")}
    assert models_present == reported
    assert sum((DEMO_DIR / name).stat().st_size for name in reported) < 6_000_000
    for entry in MODELS:
        assert (DEMO_DIR / entry["h5_file"]).stat().st_size == entry["h5_bytes"]


@pytest.mark.parametrize("entry", MODELS, ids=[entry["name"][:30] for entry in MODELS])
def test_h5_is_a_keras_tcn_with_the_original_layer_names(entry):
    with h5py.File(DEMO_DIR / entry["h5_file"], "r") as handle:
        config = json.loads(handle.attrs["model_config"])
        weight_groups = set(handle["model_weights"].keys())
    layers = {layer["config"]["name"]: layer for layer in config["config"]["layers"]}
    depth = entry["network_depth"]
    expected = (
        {"spikes", "somatic", "dendritic"}
        | {"layer_%d" % k for k in range(1, depth + 1)}
        | {"layer_%d_BN" % k for k in range(1, depth + 1)}
    )
    assert expected <= set(layers) and expected <= weight_groups
    for k, size in enumerate(entry["filter_sizes_per_layer"], start=1):
        assert layers["layer_%d" % k]["class_name"] == "Conv1D"
        assert layers["layer_%d" % k]["config"]["padding"] == "causal"
        assert layers["layer_%d" % k]["config"]["kernel_size"] in ([size], size)
        assert layers["layer_%d_BN" % k]["class_name"] == "BatchNormalization"
    input_layer = next(layer for layer in layers.values() if layer["class_name"] == "InputLayer")
    simulator = NeuronConfig.from_dict(load_pickle(entry)["data_dict"]["simulator_config"])
    assert input_layer["config"]["batch_shape"][1:] == [200, simulator.num_segments]
    assert layers["dendritic"]["config"]["filters"] == simulator.num_compartments


@pytest.mark.parametrize("entry", MODELS, ids=[entry["name"][:30] for entry in MODELS])
def test_pickle_has_the_original_layout(entry):
    auxiliary = load_pickle(entry)
    assert set(auxiliary) == {"data_dict", "architecture_dict", "learning_schedule_dict", "training_history_dict"}
    architecture = auxiliary["architecture_dict"]
    assert set(architecture) == ARCHITECTURE_KEYS
    assert architecture["filter_sizes_per_layer"] == entry["filter_sizes_per_layer"]
    assert architecture["num_filters_per_layer"] == entry["num_filters_per_layer"]

    history = auxiliary["training_history_dict"]
    assert PER_EPOCH_KEYS <= set(history)
    epochs = len(history["val_spikes_loss"])
    assert epochs > 1 and all(len(history[key]) == epochs for key in PER_EPOCH_KEYS)
    assert history["val_spikes_loss"][-1] == pytest.approx(entry["final_val_spikes_loss"])

    data = auxiliary["data_dict"]
    simulator = NeuronConfig.from_dict(data["simulator_config"])
    assert data["num_excitatory_segments"] == simulator.num_excitatory_segments
    assert data["num_inhibitory_segments"] == simulator.num_inhibitory_segments
    assert data["input_window_size"] == architecture["input_window_size"]
    assert data["held_out_spike_auc"] == pytest.approx(entry["held_out_spike_auc"])
    assert data["held_out_soma_rmse_mv"] == pytest.approx(entry["held_out_soma_rmse_mv"])


@pytest.mark.parametrize("entry", MODELS, ids=[entry["name"][:30] for entry in MODELS])
def test_pickle_needs_no_class_to_be_read(entry):
    """Plain containers, numbers and strings only: a restricted unpickler that allows no global can read it."""
    data = (DEMO_DIR / entry["pickle_file"]).read_bytes()
    opcode, protocol, _ = next(pickletools.genops(data))
    assert opcode.name == "PROTO" and protocol == 2  # as the originals
    assert [op.name for op, _, _ in pickletools.genops(data) if "GLOBAL" in op.name or op.name == "REDUCE"] == []


@pytest.mark.parametrize("entry", MODELS, ids=[entry["name"][:30] for entry in MODELS])
def test_names_follow_the_original_pattern_and_match_the_architecture(entry):
    stem = Path(entry["h5_file"]).stem
    assert Path(entry["pickle_file"]).stem == stem == entry["name"]
    match = NAME_PATTERN.match(stem)
    assert match, stem
    depth, width, receptive_field, samples = map(int, match.groups())
    architecture = load_pickle(entry)["architecture_dict"]
    assert depth == architecture["network_depth"]
    assert width == int(sum(architecture["num_filters_per_layer"]) / depth)
    assert receptive_field == sum(size - 1 for size in architecture["filter_sizes_per_layer"]) + 1
    assert samples == sum(load_pickle(entry)["training_history_dict"]["num_train_samples"])

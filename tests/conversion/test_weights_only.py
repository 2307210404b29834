"""Weights-only files + the params pickle's architecture_dict: exact conversion and clear refusals.

The network is built as fit_CNN.py builds it (causal Conv1D with the activation — 'lrelu' as a Python
lambda — then BatchNormalization per layer, three 1×1 heads), by real Keras 2 (tf_keras, `.h5`) and Keras 3
(`.weights.h5`), in a subprocess, with `save_weights` only; Keras's predictions on binary spikes are kept.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conversion.test_keras_archive import (
    TOLERANCE,
    convert_in_process,
    expect_cli_refusal,
    expect_refusal,
    max_diffs,
)
from tests.subprocesses import run_cli, run_keras_script

ARCHITECTURE = {
    "network_depth": 3,
    "input_window_size": 40,
    "num_filters_per_layer": [8, 6, 6],
    "initializer_per_layer": [0.002] * 3,
    "filter_sizes_per_layer": [9, 5, 3],
    "l2_regularization_per_layer": [1e-8] * 3,
    "activation_function_per_layer": ["relu", "lrelu", "elu"],
    "strides_per_layer": [1] * 3,
    "dilation_rates_per_layer": [1, 2, 1],
}
SEGMENTS, NUM_DVT = 24, 4
WEIGHT_FILES = {"keras2": "tcn.h5", "keras3": "tcn.weights.h5"}

BUILD = f"""
import numpy as np, tensorflow as tf, keras, tf_keras
from tests.conversion.keras_zoo import set_test_weights

ARCH = {ARCHITECTURE!r}
LRELU = {{"keras2": lambda x: tf.nn.leaky_relu(x, alpha=0.25),
          "keras3": lambda x: keras.ops.leaky_relu(x, negative_slope=0.25)}}

def fit_cnn(K, flavour):
    x_in = K.Input(shape=(ARCH["input_window_size"], {SEGMENTS}), name="input_layer")
    x = x_in
    for k in range(ARCH["network_depth"]):
        activation = ARCH["activation_function_per_layer"][k]
        x = K.layers.Conv1D(ARCH["num_filters_per_layer"][k], ARCH["filter_sizes_per_layer"][k],
                            activation=LRELU[flavour] if activation == "lrelu" else activation,
                            kernel_regularizer=K.regularizers.l2(ARCH["l2_regularization_per_layer"][k]),
                            strides=ARCH["strides_per_layer"][k], dilation_rate=ARCH["dilation_rates_per_layer"][k],
                            padding="causal", name=f"layer_{{k + 1}}")(x)
        x = K.layers.BatchNormalization(name=f"layer_{{k + 1}}_BN")(x)
    heads = [K.layers.Conv1D(1, 1, activation="sigmoid", padding="causal", name="spikes")(x),
             K.layers.Conv1D(1, 1, activation="linear", padding="causal", name="somatic")(x),
             K.layers.Conv1D({NUM_DVT}, 1, activation="linear", padding="causal", name="dendritic")(x)]
    return K.Model(x_in, heads)

rng = np.random.default_rng(7)
spikes = (rng.random((3, ARCH["input_window_size"], {SEGMENTS})) < 0.03).astype("float32")
for flavour, K, target in [("keras2", tf_keras, {WEIGHT_FILES["keras2"]!r}),
                           ("keras3", keras, {WEIGHT_FILES["keras3"]!r})]:
    model = fit_cnn(K, flavour)
    set_test_weights(model, rng, 1.0)
    model.save_weights(target)
    np.savez(f"{{flavour}}_io.npz", x=spikes, **{{f"y{{i}}": np.asarray(y) for i, y in
                                                  enumerate(model(spikes, training=False))}})
"""


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights_only")
    run_keras_script(BUILD, folder)
    write_params(folder / "params.pickle", ARCHITECTURE)
    return folder


def write_params(path: Path, architecture: dict) -> Path:
    """A fit_CNN.py-style parameters pickle (protocol 2) around `architecture`."""
    params = {
        "architecture_dict": architecture,
        "data_dict": {"num_segments_exc": SEGMENTS // 2},
        "learning_schedule_dict": {},
        "training_history_dict": {"val_loss": [1.0]},
    }
    with open(path, "wb") as f:
        pickle.dump(params, f, protocol=2)
    return path


def keras_io(folder: Path, flavour: str) -> tuple[np.ndarray, list[np.ndarray]]:
    with np.load(folder / f"{flavour}_io.npz") as data:
        return data["x"], [data[f"y{i}"] for i in range(3)]


@pytest.mark.parametrize("flavour", ["keras2", "keras3"])
def test_weights_only_converts_exactly(parity, weight_files, tmp_path, flavour):
    model = convert_in_process(
        parity, weight_files / WEIGHT_FILES[flavour], tmp_path / "model.pth", weight_files / "params.pickle"
    )
    x, expected = keras_io(weight_files, flavour)
    diffs = max_diffs(parity, model, x, expected)
    assert max(diffs) <= TOLERANCE, diffs
    assert model.output_names == ["spikes", "somatic", "dendritic"]
    assert [layer["name"] for layer in model.metadata["layers"] if layer["class_name"] != "LeakyReLU"] == [
        "layer_1",
        "layer_1_BN",
        "layer_2",
        "layer_2_BN",
        "layer_3",
        "layer_3_BN",
        "spikes",
        "somatic",
        "dendritic",
    ]
    assert model.metadata["architecture_dict"]["num_filters_per_layer"] == ARCHITECTURE["num_filters_per_layer"]


def test_keras3_weights_without_name_attributes_take_fit_cnn_names(parity, weight_files, tmp_path):
    """Weights files that store no layer names: groups are matched by class order, named as fit_CNN.py does."""
    source = tmp_path / "unnamed.weights.h5"
    source.write_bytes((weight_files / WEIGHT_FILES["keras3"]).read_bytes())
    with h5py.File(source, "r+") as f:
        f.visititems(lambda name, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None)
    model = convert_in_process(parity, source, tmp_path / "unnamed.pth", weight_files / "params.pickle")
    x, expected = keras_io(weight_files, "keras3")
    assert max(max_diffs(parity, model, x, expected)) <= TOLERANCE
    assert model.output_names == ["spikes", "somatic", "dendritic"]


@pytest.mark.parametrize("flavour", ["keras2", "keras3"])
def test_cli_converts_and_verifies_weights_with_params(parity, weight_files, tmp_path, flavour):
    source = tmp_path / WEIGHT_FILES[flavour]
    source.write_bytes((weight_files / WEIGHT_FILES[flavour]).read_bytes())
    result = run_cli(["model_converter.py", str(source), str(weight_files / "params.pickle"), "--verify"])
    assert result.returncode == 0, result.stderr
    assert "verified against" in result.stdout, result.stdout
    from models.checkpoint import load_converted_model

    model = load_converted_model(tmp_path / "tcn_converted.pth")
    x, expected = keras_io(weight_files, flavour)
    assert max(max_diffs(parity, model, x, expected)) <= TOLERANCE
    assert model.metadata["verification"]["passed"]


def test_refuses_weights_without_params(weight_files, tmp_path):
    source = tmp_path / "tcn_weights.h5"
    source.write_bytes((weight_files / WEIGHT_FILES["keras2"]).read_bytes())
    expect_cli_refusal([str(source)], source, "weights-only", "needs the architecture", "architecture_dict")


def test_refuses_an_architecture_dict_with_missing_keys(parity, weight_files, tmp_path):
    incomplete = {k: v for k, v in ARCHITECTURE.items() if k not in ("strides_per_layer", "input_window_size")}
    params = write_params(tmp_path / "params.pickle", incomplete)
    source = weight_files / WEIGHT_FILES["keras2"]
    expect_refusal(
        parity, source, "architecture_dict lacks", "strides_per_layer", "input_window_size", params_path=params
    )


@pytest.mark.parametrize("flavour", ["keras2", "keras3"])
def test_refuses_an_architecture_whose_shapes_do_not_fit(parity, weight_files, tmp_path, flavour):
    params = write_params(tmp_path / "params.pickle", {**ARCHITECTURE, "filter_sizes_per_layer": [9, 7, 3]})
    expect_refusal(
        parity,
        weight_files / WEIGHT_FILES[flavour],
        "'layer_2/kernel'",
        "has shape (5, 8, 6)",
        "implies (7, 8, 6)",
        params_path=params,
    )


def test_refuses_an_architecture_of_another_depth(parity, weight_files, tmp_path):
    shallow = {**ARCHITECTURE, **{key: ARCHITECTURE[key][:2] for key in ARCHITECTURE if key.endswith("_per_layer")}}
    params = write_params(tmp_path / "params.pickle", shallow)
    expect_refusal(
        parity,
        weight_files / WEIGHT_FILES["keras2"],
        "9 layers with weights",
        "depth 2",
        "implies 7",
        params_path=params,
    )


def test_a_changed_params_pickle_makes_a_weights_only_conversion_stale(parity, weight_files, tmp_path):
    """The architecture of a weights-only file comes from the pickle: a new pickle means a new conversion."""
    from model_converter import convert_or_reuse

    source = tmp_path / "tcn.weights.h5"
    source.write_bytes((weight_files / WEIGHT_FILES["keras3"]).read_bytes())
    params = write_params(tmp_path / "tcn.pickle", ARCHITECTURE)
    with parity.tensorflow_blocked():
        first = convert_or_reuse(source, params)
        assert not first.cached and first.path == tmp_path / "tcn_converted.pth"
        assert convert_or_reuse(source, params).cached
        write_params(params, {**ARCHITECTURE, "note": "retrained elsewhere"})
        assert not convert_or_reuse(source, params).cached
        assert convert_or_reuse(source, params).cached


def test_main_reuses_a_weights_only_conversion_of_its_params_pickle(parity, weight_files, tmp_path, caplog):
    """main.py's model step: the conversion of a weights-only `.h5` is current for the same pickle."""
    from conversion.cache import find_or_convert

    (tmp_path / "tcn.h5").write_bytes((weight_files / WEIGHT_FILES["keras2"]).read_bytes())
    params = write_params(tmp_path / "tcn.pickle", ARCHITECTURE)
    with parity.tensorflow_blocked():
        assert find_or_convert(tmp_path / "tcn", tmp_path / "tcn.h5", params, verify=False).converted
        with caplog.at_level("INFO", logger="conversion.cache"):
            again = find_or_convert(tmp_path / "tcn", tmp_path / "tcn.h5", params, verify=False)
    assert not again.converted and again.path == tmp_path / "tcn_converted.pth"
    assert "using existing PyTorch model" in caplog.text and "not using" not in caplog.text, caplog.text


def test_folder_conversion_finds_the_pickle_of_a_weights_file(weight_files, tmp_path):
    (tmp_path / "tcn.weights.h5").write_bytes((weight_files / WEIGHT_FILES["keras3"]).read_bytes())
    write_params(tmp_path / "tcn.pickle", ARCHITECTURE)
    result = run_cli(["model_converter.py", str(tmp_path), "--jobs", "1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "tcn_converted.pth").is_file()

"""Every refusal of the converter: a one-paragraph message naming the file and the problem, exit ≠ 0, nothing written.

Broken files are derived from real Keras files: a Lambda and a custom layer built with Keras, and weights
removed, added or re-shaped with h5py in a copy of a real neuron TCN.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from errors import ConversionError
from tests.subprocesses import run_cli


def convert_and_expect_refusal(model: Path, *expected_fragments: str) -> str:
    """Run the CLI, check exit ≠ 0, a one-paragraph message naming the file, and that nothing was written."""
    before = sorted(p.name for p in model.parent.iterdir())
    result = run_cli(["model_converter.py", str(model)])
    assert result.returncode == ConversionError.exit_code
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert str(model) in message
    for fragment in expected_fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert sorted(p.name for p in model.parent.iterdir()) == before
    return message


@pytest.fixture
def tcn_copy(keras_files, tmp_path) -> Path:
    target = tmp_path / "model.h5"
    shutil.copy(keras_files / "tcn.h5", target)
    return target


def test_unknown_layers_are_all_listed(keras_files, tmp_path):
    model = tmp_path / "unknown_layers.h5"
    shutil.copy(keras_files / "unknown_layers.h5", model)
    convert_and_expect_refusal(model, "'triple' (Lambda)", "'gain'", "unknown layer class", "Nothing was written")


def test_missing_weight(tcn_copy):
    with h5py.File(tcn_copy, "r+") as f:
        group = f["model_weights/layer_2_BN"]
        names = [n for n in group.attrs["weight_names"] if not str(n).endswith("moving_variance")]
        del group["layer_2_BN/moving_variance"]
        group.attrs["weight_names"] = names
    convert_and_expect_refusal(tcn_copy, "'layer_2_BN'", "moving_variance", "missing")


def test_extra_weight(tcn_copy):
    with h5py.File(tcn_copy, "r+") as f:
        group = f["model_weights/layer_1"]
        group["layer_1/surplus"] = np.ones(3, dtype=np.float32)
        group.attrs["weight_names"] = list(group.attrs["weight_names"]) + ["layer_1/surplus"]
    convert_and_expect_refusal(tcn_copy, "'layer_1'", "extra weight", "surplus")


def test_unlisted_dataset_counts_as_extra(tcn_copy):
    with h5py.File(tcn_copy, "r+") as f:
        f["model_weights/spikes/spikes/hidden"] = np.ones(2, dtype=np.float32)
    convert_and_expect_refusal(tcn_copy, "'spikes'", "extra weight", "hidden")


def test_kernel_shape_disagrees_with_config(tcn_copy):
    with h5py.File(tcn_copy, "r+") as f:
        group = f["model_weights/layer_2/layer_2"]
        del group["kernel"]
        group["kernel"] = np.ones((3, 6, 5), dtype=np.float32)  # config says 4 filters
    convert_and_expect_refusal(tcn_copy, "'layer_2'", "shape (3, 6, 5)", "expected (3, ?, 4)")


def test_shape_mismatch_between_layers(tcn_copy):
    with h5py.File(tcn_copy, "r+") as f:
        for layer in ("layer_2",):
            group = f[f"model_weights/{layer}/{layer}"]
            del group["kernel"]
            group["kernel"] = np.ones((3, 7, 4), dtype=np.float32)  # previous layer gives 6 channels
    convert_and_expect_refusal(tcn_copy, "shape mismatch", "layer_2")


def test_truncated_file(tcn_copy):
    data = tcn_copy.read_bytes()
    tcn_copy.write_bytes(data[: len(data) // 2])
    convert_and_expect_refusal(tcn_copy, "cannot be read as a Keras HDF5 model file")


def test_empty_and_random_files(tmp_path):
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    convert_and_expect_refusal(empty, "cannot be read")
    noise = tmp_path / "noise.h5"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    convert_and_expect_refusal(noise, "cannot be read")


def test_hdf5_without_a_model(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["traces"] = np.zeros((3, 4))
    convert_and_expect_refusal(path, "no 'model_config'", "without a Keras model")


def test_missing_file(tmp_path):
    convert_and_expect_refusal(tmp_path / "absent.h5", "no such file")


def test_existing_output_is_not_overwritten_on_refusal(keras_files, tmp_path):
    model = tmp_path / "unknown_layers.h5"
    shutil.copy(keras_files / "unknown_layers.h5", model)
    existing = tmp_path / "out.pth"
    existing.write_bytes(b"previous result")
    result = run_cli(["model_converter.py", str(model), str(existing)])
    assert result.returncode != 0
    assert existing.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pth", "unknown_layers.h5"]

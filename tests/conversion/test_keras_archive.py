"""Keras 3 `.keras` archives: exact conversion via the API and the CLI, and clear refusals.

The archives are saved by real Keras 3 in a subprocess, with Keras's own predictions on binary spikes;
conversion runs here with TensorFlow blocked. Broken archives are derived from the real ones with zipfile
and h5py.
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from conversion.keras_archive import ARCHIVE_WEIGHTS
from conversion.keras_file import read_keras_h5
from errors import ConversionError
from tests.subprocesses import run_cli, run_keras_script

TOLERANCE = 1e-5
ARCHIVES = ["neuron_tcn", "renamed", "keras_tcn"]

BUILD = """
import keras, numpy as np
from tests.conversion.keras_zoo import KerasFlavour, build_neuron_tcn, neuron_architecture, set_test_weights

k = KerasFlavour("keras3")
rng = np.random.default_rng(6)

def save(model, stem, window, channels):
    set_test_weights(model, rng, 1.0)
    model.save(f"{stem}.keras")
    model.save(f"{stem}.h5")
    spikes = (rng.random((3, window, channels)) < 0.03).astype("float32")
    np.savez(f"{stem}_io.npz", x=spikes, **{f"y{i}": np.asarray(y) for i, y in
                                           enumerate(model(spikes, training=False))})

arch = neuron_architecture(window=40, segments=24, filters=[8, 6, 6], kernels=[9, 5, 3],
                           activations=["relu", "lrelu", "elu"], num_dvt=4, dilations=[1, 2, 1])
save(build_neuron_tcn(k, arch, "neuron_tcn"), "neuron_tcn", 40, 24)

# Non-default layer names in an order where the class counters and the names disagree, a merge layer,
# LayerNormalization, PReLU and a Dense head.
L = keras.layers
x_in = keras.Input((32, 10), name="synapses")
deep = L.Conv1D(7, 5, padding="causal", activation="tanh", name="z_deep")(x_in)
deep = L.BatchNormalization(name="norm_deep")(deep)
deep = L.Conv1D(7, 3, padding="causal", dilation_rate=2, name="a_deeper")(deep)
shortcut = L.Conv1D(7, 1, name="shortcut")(x_in)
merged = L.Add(name="merge")([shortcut, deep])
merged = L.LayerNormalization(name="ln")(merged)
merged = L.PReLU(shared_axes=[1], name="slopes")(merged)
merged = L.BatchNormalization(name="norm_out")(merged)
outs = [L.Conv1D(1, 1, activation="sigmoid", name="p_spike")(merged), L.Dense(3, name="voltage")(merged)]
save(keras.Model(x_in, outs, name="renamed"), "renamed", 32, 10)

# keras-tcn's TCN: its sublayers' variables are nested groups of the archive.
from tcn import TCN
x_in = keras.Input((36, 12), name="spike_trains")
x = TCN(nb_filters=6, kernel_size=3, dilations=(1, 2, 4), use_skip_connections=True, use_batch_norm=True,
        return_sequences=True, name="tcn")(x_in)
outs = [L.Conv1D(1, 1, activation="sigmoid", name="spikes")(x), L.Conv1D(1, 1, name="somatic")(x)]
save(keras.Model(x_in, outs, name="with_tcn"), "keras_tcn", 36, 12)
"""


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keras_archives")
    run_keras_script(BUILD, folder)
    return folder


def keras_io(folder: Path, stem: str) -> tuple[np.ndarray, list[np.ndarray]]:
    with np.load(folder / f"{stem}_io.npz") as data:
        return data["x"], [data[f"y{i}"] for i in range(len(data.files) - 1)]


def convert_in_process(parity, source: Path, output: Path, params_path: Path | None = None):
    with parity.tensorflow_blocked():
        from model_converter import TCNModelConverter

        return TCNModelConverter(source, params_path).convert(output)


def max_diffs(parity, model, x: np.ndarray, expected: list[np.ndarray]) -> list[float]:
    actual = parity.run_torch(model, [x])
    assert [a.shape for a in actual] == [e.shape for e in expected]
    return [float(np.max(np.abs(a.astype(np.float64) - e))) for a, e in zip(actual, expected)]


def copy_archive(source: Path, target: Path, drop: str | None = None, edit_weights=None) -> Path:
    """A copy of a `.keras` archive without member `drop`, its weights file changed by `edit_weights(h5)`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for member in old.namelist():
            if member == drop:
                continue
            data = old.read(member)
            if member == ARCHIVE_WEIGHTS and edit_weights is not None:
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as weights:
                    edit_weights(weights)
                data = buffer.getvalue()
            new.writestr(member, data)
    return target


def written_files(folder: Path) -> list[str]:
    """The folder's files, less the converter's hidden per-output lock files (kept on purpose, see cache.py)."""
    return sorted(p.name for p in folder.iterdir() if not (p.name.startswith(".") and p.name.endswith(".lock")))


def expect_refusal(parity, source: Path, *fragments: str, params_path: Path | None = None) -> str:
    """A ConversionError: one paragraph naming the file and the problem; nothing new in the file's folder."""
    before = written_files(source.parent)
    with pytest.raises(ConversionError) as refused:
        convert_in_process(parity, source, None, params_path)
    message = str(refused.value)
    assert "\n" not in message and str(source) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert written_files(source.parent) == before
    return message


def expect_cli_refusal(args: list[str], named_file: Path, *fragments: str) -> str:
    """Exit 8, one `error:` line naming the file and the problem, nothing new in the file's folder."""
    before = written_files(named_file.parent)
    result = run_cli(["model_converter.py", *args])
    message = result.stderr.strip()
    assert result.returncode == ConversionError.exit_code, (result.returncode, message)
    assert message.startswith("error: ") and "\n" not in message, message
    assert str(named_file) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert written_files(named_file.parent) == before
    return message


@pytest.mark.parametrize("stem", ARCHIVES)
def test_archive_converts_exactly(parity, archives, tmp_path, stem):
    model = convert_in_process(parity, archives / f"{stem}.keras", tmp_path / f"{stem}.pth")
    x, expected = keras_io(archives, stem)
    diffs = max_diffs(parity, model, x, expected)
    assert max(diffs) <= TOLERANCE, diffs
    assert (tmp_path / f"{stem}.pth").is_file() and (tmp_path / f"{stem}_info.pickle").is_file()


@pytest.mark.parametrize("stem", ARCHIVES)
def test_archive_weights_equal_the_h5_readers(parity, archives, stem):
    """Same model saved both ways: the archive reader names and fills every weight as the `.h5` reader does."""
    with parity.tensorflow_blocked():
        from conversion.model_file import read_model_file

        from_archive = read_model_file(archives / f"{stem}.keras")
    from_h5 = read_keras_h5(archives / f"{stem}.h5")
    assert from_archive.weights.keys() == from_h5.weights.keys()
    for layer, weights in from_h5.weights.items():
        assert from_archive.weights[layer].keys() == weights.keys(), layer
        for name, value in weights.items():
            np.testing.assert_array_equal(from_archive.weights[layer][name], value)
    assert from_archive.keras_major == 3 and not from_archive.weights_only


def test_archive_without_name_attributes_is_mapped_by_class_order(parity, archives, tmp_path):
    """Older Keras 3 archives store no layer names in the weights file: the class counters decide."""

    def strip_names(weights: h5py.File) -> None:
        weights.visititems(lambda name, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None)

    archive = copy_archive(archives / "renamed.keras", tmp_path / "unnamed.keras", edit_weights=strip_names)
    model = convert_in_process(parity, archive, tmp_path / "unnamed.pth")
    x, expected = keras_io(archives, "renamed")
    diffs = max_diffs(parity, model, x, expected)
    assert max(diffs) <= TOLERANCE, diffs


def test_cli_converts_and_verifies_an_archive(parity, archives, tmp_path):
    archive = tmp_path / "neuron_tcn.keras"
    archive.write_bytes((archives / "neuron_tcn.keras").read_bytes())
    result = run_cli(["model_converter.py", str(archive), "--verify"])
    assert result.returncode == 0, result.stderr
    assert "verified against keras" in result.stdout, result.stdout
    output = tmp_path / "neuron_tcn_converted.pth"
    from models.checkpoint import load_converted_model

    model = load_converted_model(output)
    x, expected = keras_io(archives, "neuron_tcn")
    diffs = max_diffs(parity, model, x, expected)
    assert max(diffs) <= TOLERANCE, diffs
    assert model.metadata["verification"]["passed"]


def test_refuses_a_file_that_is_not_a_zip(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    expect_cli_refusal([str(bad)], bad, "not a Keras archive", "zip")


@pytest.mark.parametrize("member", ["config.json", ARCHIVE_WEIGHTS])
def test_refuses_an_archive_without_config_or_weights(parity, archives, tmp_path, member):
    archive = copy_archive(archives / "neuron_tcn.keras", tmp_path / "model.keras", drop=member)
    expect_refusal(parity, archive, "lacks", member)


def test_refuses_a_layer_with_a_missing_variable(parity, archives, tmp_path):
    def drop_bias(weights: h5py.File) -> None:
        del weights["layers/conv1d_1/vars/1"]

    archive = copy_archive(archives / "neuron_tcn.keras", tmp_path / "model.keras", edit_weights=drop_bias)
    expect_refusal(
        parity, archive, "layer 'layer_2' (Conv1D)", "layers/conv1d_1/vars", "holds 1 variable(s)", "kernel, bias"
    )


def test_refuses_a_variable_of_the_wrong_shape(parity, archives, tmp_path):
    def widen_kernel(weights: h5py.File) -> None:
        vars_group = weights["layers/conv1d_2/vars"]
        kernel = vars_group["0"][()]
        del vars_group["0"]
        vars_group["0"] = np.concatenate([kernel, kernel], axis=1)

    archive = copy_archive(archives / "neuron_tcn.keras", tmp_path / "model.keras", edit_weights=widen_kernel)
    expect_refusal(parity, archive, "'layer_3'", "shape mismatch", "Nothing was written")


def test_refuses_weights_that_belong_to_no_layer(parity, archives, tmp_path):
    def add_group(weights: h5py.File) -> None:
        weights["layers/dense_9/vars/0"] = np.ones((3, 3), dtype=np.float32)

    archive = copy_archive(archives / "neuron_tcn.keras", tmp_path / "model.keras", edit_weights=add_group)
    expect_refusal(parity, archive, "'layers/dense_9'", "belong to no layer")


def test_refuses_an_archive_whose_compressed_weights_are_damaged(parity, archives, tmp_path):
    """Bytes inside a deflated member's data: zlib (or the CRC check) fails while the archive is read."""
    archive = tmp_path / "model.keras"
    with (
        zipfile.ZipFile(archives / "neuron_tcn.keras") as old,
        zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as new,
    ):
        for member in old.namelist():
            new.writestr(member, old.read(member))
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as written:
        header = written.getinfo(ARCHIVE_WEIGHTS).header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])  # the local file header
    start = header + 30 + name_length + extra_length
    data[start + 8 : start + 40] = bytes(b ^ 0xFF for b in data[start + 8 : start + 40])
    archive.write_bytes(bytes(data))
    expect_refusal(parity, archive, f"member {ARCHIVE_WEIGHTS}", "cannot be read")


@pytest.mark.parametrize("member", ["config.json", "metadata.json"])
def test_refuses_json_that_is_not_an_object(parity, archives, tmp_path, member):
    archive = copy_archive(archives / "neuron_tcn.keras", tmp_path / "model.keras", drop=member)
    with zipfile.ZipFile(archive, "a") as appended:
        appended.writestr(member, "[1, 2]")
    expect_refusal(parity, archive, member, "JSON list", "not an object")

"""Half-precision export (`--dtype float16|bfloat16`): the weights are stored rounded, the file loads with
weights_only=True into a float32-computing module, and the outputs stay within a stated bound of Keras."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from conversion.config import ExportConfig
from errors import ConversionError
from model_converter import TCNModelConverter, convert_or_reuse, load_converted_model
from models.checkpoint import STORAGE_DTYPES
from tests.subprocesses import run_cli

# Per-weight rounding is at most 2^-11 (float16) or 2^-8 (bfloat16) relative; through a few layers the outputs
# may move by several times that. Bound: max |torch − keras| ≤ factor · max(1, max |keras|).
BOUND_FACTOR = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}


def max_diff_to_keras(model, keras_io) -> float:
    with torch.no_grad():
        outputs = model(torch.from_numpy(keras_io["x"]))
    scale = max(1.0, *(float(np.abs(keras_io[name]).max()) for name in model.output_names))
    return (
        max(float(np.abs(out.numpy() - keras_io[name]).max()) for name, out in zip(model.output_names, outputs)) / scale
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_are_stored_and_load_as_float32(keras_files, tmp_path, dtype):
    keras_io = np.load(keras_files / "tcn_io.npz")
    exact = TCNModelConverter(keras_files / "tcn.h5").convert(tmp_path / "float32.pth")
    converted = TCNModelConverter(keras_files / "tcn.h5").convert(tmp_path / "half.pth", dtype=dtype)
    payload = torch.load(tmp_path / "half.pth", weights_only=True)
    assert payload["metadata"]["dtype"] == dtype
    assert {v.dtype for v in payload["state_dict"].values()} == {STORAGE_DTYPES[dtype]}
    loaded = load_converted_model(tmp_path / "half.pth")
    assert {p.dtype for p in loaded.state_dict().values()} == {torch.float32}
    for key, stored in payload["state_dict"].items():  # widened exactly, and what convert() returned
        assert torch.equal(loaded.state_dict()[key], stored.float())
        assert torch.equal(converted.state_dict()[key], stored.float())
    assert not all(torch.equal(exact.state_dict()[k], loaded.state_dict()[k]) for k in payload["state_dict"])
    assert max_diff_to_keras(exact, keras_io) <= BOUND_FACTOR["float32"]
    assert max_diff_to_keras(loaded, keras_io) <= BOUND_FACTOR[dtype]


def test_dtype_is_part_of_the_cache_rule(keras_files, tmp_path):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    assert not convert_or_reuse(h5, export=ExportConfig(dtype="float16")).cached
    assert convert_or_reuse(h5, export=ExportConfig(dtype="float16")).cached
    assert not convert_or_reuse(h5).cached  # float32 asked for: converted again
    assert torch.load(tmp_path / "tcn_converted.pth", weights_only=True)["metadata"]["dtype"] == "float32"


def test_cli_dtype_option(keras_files, tmp_path):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    result = run_cli(["model_converter.py", str(h5), "--dtype", "bfloat16"])
    assert result.returncode == 0 and "stored as bfloat16" in result.stdout, result.stderr
    assert (
        torch.load(tmp_path / "tcn_converted.pth", weights_only=True)["state_dict"]["layers.spikes.weight"].dtype
        == torch.bfloat16
    )


def test_weights_beyond_float16_range_are_refused(keras_files, tmp_path):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    with h5py.File(h5, "r+") as f:
        stored = []
        f["model_weights/somatic"].visit(stored.append)
        f["model_weights/somatic"][next(name for name in stored if name.endswith("bias"))][...] = 1e6
    with pytest.raises(ConversionError, match=r"beyond the range of float16 \(layers\.somatic\.bias\)"):
        TCNModelConverter(h5).convert(tmp_path / "half.pth", dtype="float16")
    assert not (tmp_path / "half.pth").exists()
    TCNModelConverter(h5).convert(tmp_path / "half.pth", dtype="bfloat16")  # bfloat16 has float32's range

"""The converter's CLI forms, its outputs (.pth, info pickle), loading without TensorFlow, and batch_convert."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

from model_converter import TCNModelConverter, batch_convert, load_converted_model
from tests.subprocesses import REPO, project_version, run_cli


def max_diff_to_keras(model: torch.nn.Module, io: np.lib.npyio.NpzFile) -> float:
    with torch.no_grad():
        outputs = model(torch.from_numpy(io["x"]))
    return max(float(np.abs(out.numpy() - io[name]).max()) for name, out in zip(["spikes", "somatic"], outputs))


def test_cli_default_names_and_info(keras_files, tmp_path):
    model = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", model)
    result = run_cli(["model_converter.py", str(model)])
    assert result.returncode == 0, result.stderr
    pth, info_path = tmp_path / "tcn_converted.pth", tmp_path / "tcn_converted_info.pickle"
    assert str(pth) in result.stdout
    payload = torch.load(pth, weights_only=True)
    assert set(payload) >= {"spec", "state_dict", "metadata"}
    info = pickle.loads(info_path.read_bytes())
    assert info["source_sha256"] == payload["metadata"]["source_sha256"]
    assert info["keras_version"].startswith("3.")
    assert [layer["name"] for layer in info["layers"]] == [
        "layer_1",
        "layer_1_BN",
        "layer_2",
        "layer_2_BN",
        "spikes",
        "somatic",
    ]
    assert info["inputs"] == [{"name": "input", "shape": [None, 40, 12]}]
    assert info["outputs"][0] == {"name": "spikes", "shape": [None, 40, 1]}
    assert info["verification"] is None
    assert info["converter_version"] == payload["metadata"]["converter_version"] == project_version()
    assert payload["written_by"] == f"neuron-tcn {project_version()}"


def test_cli_with_params_and_output_and_verify(keras_files, tmp_path):
    model = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", model)
    params = tmp_path / "tcn.pickle"
    params.write_bytes(pickle.dumps({"architecture_dict": {"input_window_size": 40}}, protocol=2))
    out = tmp_path / "sub" / "net.pth"
    result = run_cli(["model_converter.py", str(model), str(params), str(out), "--verify"])
    assert result.returncode == 0, result.stderr
    info = pickle.loads((tmp_path / "sub" / "net_info.pickle").read_bytes())
    verification = info["verification"]
    assert verification["passed"] and verification["input"].startswith("binary spikes")
    assert max(o["max_abs_diff"] for o in verification["outputs"].values()) <= 1e-5
    assert info["architecture_dict"] == {"input_window_size": 40}


def test_conversion_without_tensorflow(keras_files, tmp_path):
    """TensorFlow and Keras blocked in sys.modules: conversion and loading still work and match Keras."""
    model = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", model)
    code = (
        "import sys\n"
        "for name in ('tensorflow', 'keras', 'tf_keras', 'tcn'): sys.modules[name] = None\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from model_converter import TCNModelConverter\n"
        f"TCNModelConverter({str(model)!r}).convert()\n"
        "assert not any(m.startswith(('tensorflow', 'keras')) and sys.modules[m] is not None for m in sys.modules)\n"
    )
    result = run_cli(["-c", code])
    assert result.returncode == 0, result.stderr
    loaded = load_converted_model(tmp_path / "tcn_converted.pth")
    assert max_diff_to_keras(loaded, np.load(keras_files / "tcn_io.npz")) <= 1e-5


def test_load_converted_model_matches_converted(keras_files, tmp_path):
    converted = TCNModelConverter(keras_files / "tcn.h5").convert(tmp_path / "m.pth")
    loaded = load_converted_model(tmp_path / "m.pth", device="cpu")
    assert not loaded.training
    x = torch.from_numpy(np.load(keras_files / "tcn_io.npz")["x"])
    with torch.no_grad():
        for a, b in zip(converted(x), loaded(x)):
            assert torch.equal(a, b)


def test_loading_needs_no_converter_or_tensorflow(keras_files, tmp_path):
    TCNModelConverter(keras_files / "tcn.h5").convert(tmp_path / "m.pth")
    code = (
        "import sys\n"
        "for name in ('tensorflow', 'keras', 'tf_keras', 'h5py', 'conversion', 'model_converter'):\n"
        "    sys.modules[name] = None\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import torch\n"
        "from models import load_converted_model\n"
        f"m = load_converted_model({str(tmp_path / 'm.pth')!r})\n"
        "print(m(torch.zeros(2, 40, 12))[0].shape)\n"
    )
    result = run_cli(["-c", code])
    assert result.returncode == 0, result.stderr
    assert "torch.Size([2, 40, 1])" in result.stdout


def test_batch_convert_reports_each_model(keras_files, tmp_path):
    source = tmp_path / "models"
    source.mkdir()
    shutil.copy(keras_files / "tcn.h5", source / "good.h5")
    shutil.copy(keras_files / "unknown_layers.h5", source / "bad.h5")
    rows = batch_convert(source, tmp_path / "out")
    by_name = {Path(row.model).name: row for row in rows}
    assert by_name["good.h5"].status == "converted"
    assert (tmp_path / "out" / "good_converted.pth").is_file()
    assert by_name["bad.h5"].status == "failed" and "Lambda" in by_name["bad.h5"].error
    assert not (tmp_path / "out" / "bad_converted.pth").exists()


def test_help_explains_usage():
    result = run_cli(["model_converter.py", "--help"])
    assert result.returncode == 0
    for word in ("PARAMS.pickle", "--verify", "--trust-pickles", "_converted.pth", "Exit status"):
        assert word in result.stdout

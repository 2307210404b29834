"""keras-tcn `TCN` layers convert exactly, from Keras 3 (`Custom>TCN`; .h5 and .keras) and Keras 2 / tf_keras
(`TCN`) files.

The models (keras_tcn_models.py) are built with real keras-tcn 3.5.7 and saved by one subprocess per
flavour; here they are converted with TensorFlow, Keras and keras-tcn unimportable, and compared with
Keras's predictions of the reloaded file on binary spike trains and on standard normal noise:
max abs diff <= 1e-5 for every output. Broken copies of those files must be refused naming the layer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from keras_tcn_models import ACTIVATIONS, BRANCHED_ACTIVATIONS, FLAVOURS, MODELS, model_names

from errors import ConversionError
from tests.conversion.test_refusals import convert_and_expect_refusal
from tests.subprocesses import run_cli

BUILDER = Path(__file__).resolve().parent / "keras_tcn_models.py"
BUILD_TIMEOUT_S = 600
REFUSED = {"weight_norm_uninitialized"}
SEPARATELY = REFUSED | {"activations", "activation_exponential"}  # see test_each_activation_matches_keras
CASES = [pytest.param(f, n, id=f"{f}-{n}") for f in FLAVOURS for n in model_names(f) if n not in SEPARATELY]
ACTIVATION_CASES = [pytest.param(f, a, id=f"{f}-{a}") for f in FLAVOURS for a in ACTIVATIONS]


@pytest.fixture(scope="module")
def keras_tcn_files(tmp_path_factory) -> dict[str, Path]:
    """Folder of each flavour's models, both flavours built at the same time."""
    root = tmp_path_factory.mktemp("keras_tcn")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    running = {}
    for flavour in FLAVOURS:
        log = open(root / f"{flavour}.log", "w")
        cmd = [sys.executable, str(BUILDER), "--flavour", flavour, "--out-dir", str(root / flavour)]
        running[flavour] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    for proc, log in running.values():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            proc.kill()
            log.close()
    return {flavour: root / flavour for flavour in FLAVOURS}


def saved_model(folder: Path, name: str) -> tuple[Path, dict[str, np.ndarray]]:
    error = folder / f"{name}.error.txt"
    if error.exists():
        pytest.fail(
            f"keras-tcn could not build/save {name!r} (a test-fixture problem):\n{error.read_text()}", pytrace=False
        )
    arrays = folder / f"{name}.npz"
    assert arrays.exists(), f"the builder wrote nothing for {name}; see {folder.parent}/*.log"
    with np.load(arrays) as data:
        return folder / MODELS[name].file_name, {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def converted(parity, keras_tcn_files, tmp_path_factory):
    """(flavour, name) -> (converted model, model reloaded from its .pth, Keras's arrays); each converted once."""
    cache = {}
    out_dir = tmp_path_factory.mktemp("keras_tcn_converted")

    def get(flavour: str, name: str):
        if (flavour, name) not in cache:
            h5, arrays = saved_model(keras_tcn_files[flavour], name)
            pth = out_dir / f"{flavour}_{name}.pth"
            with parity.tensorflow_blocked():
                from model_converter import TCNModelConverter, load_converted_model

                model = TCNModelConverter(h5).convert(pth)
                reloaded = load_converted_model(pth, device="cpu")
            cache[(flavour, name)] = model, reloaded, arrays
        return cache[(flavour, name)]

    return get


def max_diffs(parity, model, arrays: dict[str, np.ndarray], outputs: list[int] | None = None) -> dict[str, float]:
    """Max abs diff against Keras for each input kind (spikes, normal) over the given outputs (default all),
    and the largest |Keras output| as `scale`."""
    diffs = {"scale": 0.0}
    for kind in ("spikes", "normal"):
        expected = [arrays[k] for k in sorted(arrays, key=_output_index) if k.startswith(f"out_{kind}_")]
        actual = parity.run_torch(model, [arrays[kind]])
        chosen = outputs if outputs is not None else range(len(expected))
        diffs[kind] = max(
            parity.output_diffs(
                [actual[i] for i in chosen], [expected[i] for i in chosen], [str(i) for i in chosen]
            ).values()
        )
        diffs["scale"] = max([diffs["scale"]] + [float(np.max(np.abs(expected[i]))) for i in chosen])
    return diffs


def _output_index(key: str) -> int:
    return int(key.rsplit("_", 1)[-1]) if key.startswith("out_") else -1


def check_against_keras(parity, converted, flavour: str, name: str, label: str, outputs: list[int] | None = None):
    model, reloaded, arrays = converted(flavour, name)
    tcn_types = {layer["type"] for layer in model.spec["layers"] if layer["name"].startswith("tcn")}
    assert tcn_types == {"keras_tcn"}, f"the TCN layers became {tcn_types}"
    diffs = max_diffs(parity, model, arrays, outputs)
    worst = max(diffs["spikes"], diffs["normal"])
    parity.record(
        SimpleNamespace(label=f"keras-tcn {flavour}/{label}"),
        f"{'ok   ' if worst <= parity.tolerance else 'FAIL '} spikes {diffs['spikes']:.1e}  "
        f"normal {diffs['normal']:.1e}  (max |keras| {diffs['scale']:.2g})",
    )
    assert worst <= parity.tolerance, f"{flavour}/{label}: differs from Keras by {diffs}"
    assert max_diffs(parity, reloaded, arrays, outputs) == diffs, "the model reloaded from the .pth differs"


@pytest.mark.parametrize("flavour, name", CASES)
def test_keras_tcn_matches_keras(parity, converted, flavour, name):
    check_against_keras(parity, converted, flavour, name, name)


@pytest.mark.parametrize("flavour, activation", ACTIVATION_CASES)
def test_each_activation_matches_keras(parity, converted, flavour, activation):
    if activation == "exponential":  # nested exponentials need their own small weights (keras_tcn_models.py)
        check_against_keras(parity, converted, flavour, "activation_exponential", "activation_exponential")
    else:
        check_against_keras(
            parity,
            converted,
            flavour,
            "activations",
            f"activation_{activation}",
            outputs=[BRANCHED_ACTIVATIONS.index(activation)],
        )


def _drop_weight(h5: Path, suffix: str) -> None:
    with h5py.File(h5, "r+") as f:
        group = f["model_weights/tcn"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
        (doomed,) = [n for n in names if n.endswith(suffix)]
        del group[doomed]
        group.attrs["weight_names"] = np.array([n.encode() for n in names if n != doomed])


def _rename_weight(h5: Path, old: str, new: str) -> None:
    with h5py.File(h5, "r+") as f:
        group = f["model_weights/tcn"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
        renamed = [n.replace(old, new) for n in names]
        for before, after in zip(names, renamed):
            if before != after:
                group.move(before, after)
        group.attrs["weight_names"] = np.array([n.encode() for n in renamed])


def _copy(keras_tcn_files, tmp_path, flavour: str, name: str) -> Path:
    target = tmp_path / f"{name}.h5"
    shutil.copy(saved_model(keras_tcn_files[flavour], name)[0], target)
    return target


def test_missing_weight_is_refused(keras_tcn_files, tmp_path):
    model = _copy(keras_tcn_files, tmp_path, "keras2", "stacked_skip_heads")
    _drop_weight(model, "residual_block_4/conv1D_1/bias:0")
    convert_and_expect_refusal(model, "layer 'tcn' (TCN)", "residual_block_4/conv1D_1/bias", "missing")


def refusal(parity, model: Path) -> str:
    """The one-paragraph ConversionError of converting `model` (in this process, TensorFlow blocked)."""
    with parity.tensorflow_blocked():
        from model_converter import TCNModelConverter

        with pytest.raises(ConversionError) as refused:
            TCNModelConverter(model).convert(model.with_suffix(".pth"))
    assert not model.with_suffix(".pth").exists()
    return str(refused.value)


def test_renamed_sublayer_is_refused(parity, keras_tcn_files, tmp_path):
    model = _copy(keras_tcn_files, tmp_path, "keras3", "stacked_skip_heads")
    _rename_weight(model, "residual_block_0/matching_conv1D/", "residual_block_0/shortcut/")
    message = refusal(parity, model)
    assert "layer 'tcn' (Custom>TCN)" in message and "matching_conv1D/kernel' is missing" in message, message


def test_norm_weights_the_config_does_not_explain_are_refused(parity, keras_tcn_files, tmp_path):
    """A norm sublayer keras-tcn would not build (here: a third one in a block) is a surprise, not ignored."""
    model = _copy(keras_tcn_files, tmp_path, "keras3", "batchnorm_even_kernel_dropout")
    with h5py.File(model, "r+") as f:
        group = f["model_weights/tcn"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
        extra = "tcn/residual_block_1/batch_normalization_99/gamma"
        group[extra] = np.ones(6, np.float32)
        group.attrs["weight_names"] = np.array([n.encode() for n in names + [extra]])
    message = refusal(parity, model)
    assert "layer 'tcn' (Custom>TCN)" in message and "residual_block_1" in message, message
    assert "should hold two normalization sublayers" in message, message


def test_uninitialized_weight_norm_is_refused(parity, keras_tcn_files, tmp_path):
    """Keras would set g and bias from the first batch it sees: the file alone does not fix the model."""
    model = _copy(keras_tcn_files, tmp_path, "keras2", "weight_norm_uninitialized")
    message = refusal(parity, model)
    assert "layer 'tcn' (TCN)" in message and "never initialized" in message, message


def test_unknown_config_option_is_refused(parity, keras_tcn_files, tmp_path):
    """An option this converter does not know (say, from a newer keras-tcn) might change the output."""
    model = _copy(keras_tcn_files, tmp_path, "keras3", "same_layernorm_middle_step")
    with h5py.File(model, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        (tcn,) = [layer for layer in config["config"]["layers"] if layer["config"]["name"] == "tcn"]
        tcn["config"]["use_attention"] = True
        f.attrs["model_config"] = json.dumps(config)
    message = refusal(parity, model)
    assert "layer 'tcn' (Custom>TCN)" in message and "use_attention" in message, message


def test_verify_says_why_when_keras_cannot_load_the_file(keras_tcn_files, tmp_path):
    """keras-tcn 3.5.7 no longer knows `use_weight_norm`: the exact conversion is kept, reported unverified."""
    model = _copy(keras_tcn_files, tmp_path, "keras2", "weight_norm")
    result = run_cli(["model_converter.py", str(model), "--verify"])
    assert result.returncode == 0, result.stderr
    assert "not verified:" in result.stdout and f"cannot load {model}" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr


EXPORT_CASES = [
    pytest.param(f, n, id=f"{f}-{n}")
    for f, n in (
        ("keras2", "stacked_skip_heads"),
        ("keras3", "batchnorm_even_kernel_dropout"),
        ("keras2", "weight_norm"),
        ("keras3", "archive_batchnorm_stacked"),
    )
]


@pytest.mark.parametrize("flavour, name", EXPORT_CASES)
def test_int8_pruned_export_packs_the_convolutions_inside_tcn_blocks(parity, keras_tcn_files, tmp_path, flavour, name):
    """Every conv kernel of every residual block is stored int8 + sparse, the file loads into a model that
    differs from the float32 conversion (it is compressed) and records a cost for every output."""
    import torch

    h5, arrays = saved_model(keras_tcn_files[flavour], name)
    pth = tmp_path / "small.pth"
    with parity.tensorflow_blocked():
        from model_converter import TCNModelConverter, load_converted_model

        exact = TCNModelConverter(h5).convert(tmp_path / "exact.pth")
        TCNModelConverter(h5).convert(pth, quantize="int8", prune=0.3)
        small = load_converted_model(pth)
    payload = torch.load(pth, weights_only=True)
    kernels = {k for k in exact.state_dict() if k.endswith(".weight") and exact.state_dict()[k].ndim == 3}
    assert kernels and kernels <= set(payload["packed"])  # block convs (and the matching 1x1) included
    assert all(entry["values"].dtype == torch.int8 for entry in payload["packed"].values())
    (x,) = [arrays["spikes"]]
    with torch.no_grad():
        want = exact(torch.from_numpy(x))
        have = small(torch.from_numpy(x))
    want, have = (want if isinstance(want, tuple) else (want,)), (have if isinstance(have, tuple) else (have,))
    assert all(float((a - b).abs().max()) > 0 for a, b in zip(want, have))  # compressed: not the same model
    assert set(payload["metadata"]["export"]["outputs"]) == set(exact.output_names)

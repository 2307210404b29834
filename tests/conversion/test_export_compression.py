"""Smaller models with a measured cost (`--quantize int8`, `--prune`, `--max-error`): what the file stores, that it
loads with weights_only=True, that the recorded cost is what a recomputation finds, that a bound refuses, that
BatchNorm folding is exact where it is done, and that a forged packed weight is refused."""
from __future__ import annotations

import copy
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conversion.config import ExportConfig
from conversion.export import COST_SEED, fold_batch_norms, prunable_weights
from conversion.pairing import info_path_for
from conversion.verify import realistic_input
from errors import ConversionError, ModelFileError
from model_converter import TCNModelConverter, convert_or_reuse, load_converted_model
from models.graph import KerasGraphModule
from tests.subprocesses import run_cli, run_keras_script

EXPORTS = [ExportConfig(quantize="int8"), ExportConfig(prune=0.5), ExportConfig(prune=0.3, prune_scope="global"),
           ExportConfig(prune=0.5, quantize="int8"), ExportConfig(dtype="float16", quantize="int8"),
           ExportConfig(dtype="bfloat16", prune=0.7)]
FLOAT_TOLERANCE = 1e-5  # the float32 conversion against Keras


def outputs_of(model, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        got = model(torch.from_numpy(x))
    return [t.numpy().astype(np.float64) for t in (got if isinstance(got, tuple) else (got,))]


@pytest.fixture(scope="module")
def float32_model(keras_files, tmp_path_factory):
    return TCNModelConverter(keras_files / "tcn.h5").convert(tmp_path_factory.mktemp("float32") / "tcn.pth")


@pytest.mark.parametrize("export", EXPORTS, ids=lambda e: e.describe())
def test_export_loads_with_weights_only_and_records_what_a_recomputation_finds(keras_files, tmp_path, export,
                                                                              float32_model):
    pth = tmp_path / "tcn.pth"
    returned = TCNModelConverter(keras_files / "tcn.h5").convert(pth, **export.model_dump())
    payload = torch.load(pth, weights_only=True)
    loaded = load_converted_model(pth)
    for key, value in loaded.state_dict().items():  # the module convert() returned is the one the file gives
        assert torch.equal(value, returned.state_dict()[key]), key

    record = payload["metadata"]["export"]
    info = pickle.loads(info_path_for(pth).read_bytes())
    assert info["export"] == record and info["pth_bytes"] == pth.stat().st_size and info["load_time_s"] > 0
    length = payload["metadata"]["shapes_traced_with_length"]
    (x,) = realistic_input(loaded.input_shapes, length, True, seed=COST_SEED, batch=16)
    for name, want, have in zip(loaded.output_names, outputs_of(float32_model, x), outputs_of(loaded, x)):
        diff = np.abs(have - want)
        cost = record["outputs"][name]
        assert cost["max_abs_diff"] == pytest.approx(diff.max(), rel=1e-6, abs=1e-12)
        assert cost["mean_abs_diff"] == pytest.approx(diff.mean(), rel=1e-6, abs=1e-12)
        assert cost["error"] == pytest.approx(diff.max() / max(1.0, np.abs(want).max()), rel=1e-6, abs=1e-12)
    spikes = loaded.output_names.index("spikes")
    reference, compressed = outputs_of(float32_model, x)[spikes], outputs_of(loaded, x)[spikes]
    assert record["spikes"]["spiking_float32"] == int((reference.reshape(16, -1).max(1) >= 0.5).sum())
    assert record["spikes"]["spiking_export"] == int((compressed.reshape(16, -1).max(1) >= 0.5).sum())
    assert record["options"] == {**export.model_dump(), "max_error": None}
    assert payload["metadata"]["dtype"] == export.dtype
    assert 0 < record["weight_bytes"] < record["float32_weight_bytes"]


def test_int8_stores_int8_values_with_one_scale_per_output_channel(keras_files, tmp_path, float32_model):
    pth = tmp_path / "tcn.pth"
    TCNModelConverter(keras_files / "tcn.h5").convert(pth, quantize="int8")
    payload = torch.load(pth, weights_only=True)
    loaded = load_converted_model(pth)
    assert set(payload["packed"]) == set(prunable_weights(loaded))
    for name, entry in payload["packed"].items():
        values, scales = entry["values"], entry["scales"]
        out_channels = loaded.state_dict()[name].shape[0]
        assert values.dtype == torch.int8 and scales.dtype == torch.float32 and scales.shape == (out_channels,)
        per_channel = values.reshape(out_channels, -1).abs().amax(dim=1)
        assert torch.all(per_channel == 127)  # symmetric: each channel's largest weight maps to ±127
        assert name not in payload["state_dict"]
        widened = loaded.state_dict()[name]
        assert torch.equal(widened, values.float().reshape(widened.shape) * scales.reshape(-1, *[1] * (widened.ndim - 1)))
    assert all(not v.is_floating_point() or v.dtype == torch.float32 for v in payload["state_dict"].values())


def test_int8_file_is_smaller_and_its_outputs_stay_within_the_bound_against_keras(keras_files, tmp_path):
    keras_io = np.load(keras_files / "tcn_io.npz")
    exact = tmp_path / "exact.pth"
    TCNModelConverter(keras_files / "tcn.h5").convert(exact)
    bound = 0.05
    small = tmp_path / "int8.pth"
    model = TCNModelConverter(keras_files / "tcn.h5").convert(small, quantize="int8", max_error=bound)
    assert small.stat().st_size < exact.stat().st_size
    recorded = model.metadata["export"]["outputs"]
    for name, have in zip(model.output_names, outputs_of(load_converted_model(small), keras_io["x"])):
        scale = max(1.0, float(np.abs(keras_io[name]).max()))
        # Keras's own input (another draw than the cost's): within the bound the export was accepted under
        assert np.abs(have - keras_io[name]).max() / scale <= bound + FLOAT_TOLERANCE
        assert recorded[name]["error"] <= bound


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_pruning_zeroes_the_fraction_and_stores_the_weights_sparse(keras_files, tmp_path, scope, fraction):
    pth = tmp_path / "pruned.pth"
    TCNModelConverter(keras_files / "tcn.h5").convert(pth, prune=fraction, prune_scope=scope)
    payload = torch.load(pth, weights_only=True)
    loaded = load_converted_model(pth)
    weights = {name: loaded.state_dict()[name] for name in payload["packed"]}
    zeros = {name: int((w == 0).sum()) for name, w in weights.items()}
    if scope == "layer":
        for name, w in weights.items():
            assert zeros[name] >= math.floor(fraction * w.numel()), name
    else:
        assert sum(zeros.values()) >= math.floor(fraction * sum(w.numel() for w in weights.values()))
    for name, entry in payload["packed"].items():
        assert entry["values"].numel() == weights[name].numel() - zeros[name]
        assert entry["mask"].dtype == torch.uint8 and entry["mask"].numel() == math.ceil(weights[name].numel() / 8)
    assert payload["metadata"]["export"]["sparsity"] == pytest.approx(
        {name: zeros[name] / w.numel() for name, w in weights.items()})


def test_pruning_keeps_the_largest_weights_unchanged(keras_files, tmp_path, float32_model):
    spec, state = copy.deepcopy(float32_model.spec), {k: v.clone() for k, v in float32_model.state_dict().items()}
    fold_batch_norms(spec, state)  # pruning ranks the weights of the folded model
    pth = tmp_path / "pruned.pth"
    TCNModelConverter(keras_files / "tcn.h5").convert(pth, prune=0.5)
    loaded = load_converted_model(pth)
    for name in prunable_weights(loaded):
        pruned, reference = loaded.state_dict()[name], state[name]
        kept = pruned != 0
        assert torch.equal(pruned[kept], reference[kept]), name
        assert reference[kept].abs().min() >= reference[~kept].abs().max(), name


def test_max_error_refuses_and_writes_nothing(keras_files, tmp_path):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    with pytest.raises(ConversionError, match=r"changes output\(s\) .*by more than max_error 1e-06.*Nothing was written"):
        TCNModelConverter(h5).convert(tmp_path / "tcn.pth", prune=0.9, max_error=1e-6)
    assert not list(tmp_path.glob("*.pth")) and not list(tmp_path.glob("*_info.pickle"))
    result = run_cli(["model_converter.py", str(h5), "--quantize", "int8", "--max-error", "1e-9"])
    assert result.returncode == ConversionError.exit_code and "max_error 1e-09" in result.stderr, result.stderr
    assert not (tmp_path / "tcn_converted.pth").exists()


def test_cli_prints_the_cost_and_the_cache_follows_the_export(keras_files, tmp_path):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    first = run_cli(["model_converter.py", str(h5), "--quantize", "int8", "--prune", "0.5"])
    assert first.returncode == 0, first.stderr
    assert "stored as pruned 50 % (layer), int8" in first.stdout
    assert "max abs diff to the float32 conversion spikes" in first.stdout and "AUC" in first.stdout
    assert "BatchNorm folded: layer_2_BN into spikes, somatic" in first.stdout
    again = run_cli(["model_converter.py", str(h5), "--quantize", "int8", "--prune", "0.5"])
    assert again.returncode == 0 and "(cached)" in again.stdout, again.stderr
    recorded = torch.load(tmp_path / "tcn_converted.pth", weights_only=True)["metadata"]["export"]
    worst = max(cost["error"] for cost in recorded["outputs"].values())
    assert convert_or_reuse(h5, export=ExportConfig(quantize="int8", prune=0.5, max_error=worst * 2)).cached
    assert not convert_or_reuse(h5, export=ExportConfig(quantize="int8")).cached  # another export: converted
    assert not convert_or_reuse(h5).cached  # the float32 conversion asked for again
    assert torch.load(tmp_path / "tcn_converted.pth", weights_only=True)["metadata"]["export"] is None


@pytest.mark.parametrize("arguments, problem", [
    (["--max-error", "0.01"], "--max-error bounds the cost of an export"),
    (["--prune", "1.5"], "--prune: Input should be less than 1"),
    (["--prune", "0"], "--prune: Input should be greater than 0"),
    (["--prune", "nan"], "--prune"),
    (["--quantize", "int8", "--max-error", "-1"], "--max-error: Input should be greater than 0"),
    (["--prune-scope", "global"], "--prune-scope needs --prune"),
    (["--quantize", "int4"], "invalid choice: 'int4'"),
])
def test_cli_refuses_bad_export_options(keras_files, tmp_path, arguments, problem):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    result = run_cli(["model_converter.py", str(h5), *arguments])
    assert result.returncode == 2 and problem in result.stderr, result.stderr
    assert not (tmp_path / "tcn_converted.pth").exists()


# BatchNorm folding: a class of graphs built by Keras, each BN placed where folding is exact or where it is not.
FOLD_MODELS = """
import keras, numpy as np
rng = np.random.default_rng(3)
inp = keras.Input((30, 7), name="input")
a = keras.layers.Conv1D(5, 4, padding="causal", name="conv_linear")(inp)            # linear: fold before
a = keras.layers.BatchNormalization(name="bn_before")(a)
a = keras.layers.Activation("relu", name="relu")(a)
b = keras.layers.Conv1D(6, 3, padding="causal", use_bias=False, name="conv_nobias")(a)
b = keras.layers.BatchNormalization(center=False, name="bn_nobias")(b)              # fold before, no bias
b = keras.layers.Activation("tanh", name="tanh")(b)
c = keras.layers.Conv1D(6, 3, padding="causal", activation="relu", name="conv_relu")(b)
c = keras.layers.BatchNormalization(name="bn_causal_next")(c)                        # feeds a causal k=3: kept
d = keras.layers.Conv1D(4, 3, padding="causal", activation="elu", name="conv_elu")(c)
d = keras.layers.BatchNormalization(scale=False, name="bn_heads")(d)                 # feeds 1x1, valid, dense: after
e = keras.layers.Conv1D(3, 1, activation="sigmoid", name="spikes")(d)
f = keras.layers.Conv1D(2, 2, padding="valid", name="valid")(d)
g = keras.layers.Dense(3, name="dense")(d)
g = keras.layers.BatchNormalization(name="bn_output")(g)                             # an output after Dense: before
h = keras.layers.Conv1D(2, 3, padding="causal", activation="relu", name="conv_out")(c)
h = keras.layers.BatchNormalization(name="bn_is_output")(h)                          # gives an output: kept
model = keras.Model(inp, [e, f, g, h])
for layer in model.layers:  # BN: gamma, beta, moving mean and variance all positive and non-trivial
    norm = isinstance(layer, keras.layers.BatchNormalization)
    layer.set_weights([(rng.uniform(0.5, 2.0, w.shape) if norm else rng.normal(0, 0.5, w.shape)).astype("float32")
                       for w in layer.get_weights()])
model.save("fold.h5")
"""
EXPECTED_FOLDS = {"bn_before": ("before", ["conv_linear"]), "bn_nobias": ("before", ["conv_nobias"]),
                  "bn_heads": ("after", ["spikes", "valid", "dense"]),
                  "bn_output": ("before", ["dense"])}
EXPECTED_KEPT = {"bn_causal_next", "bn_is_output"}


@pytest.fixture(scope="module")
def fold_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fold_models")
    run_keras_script(FOLD_MODELS, folder)
    return folder / "fold.h5"


def test_batch_norm_folding_is_exact_where_it_is_done(fold_model, tmp_path):
    model = TCNModelConverter(fold_model).convert(tmp_path / "fold.pth")
    spec, state = copy.deepcopy(model.spec), {k: v.clone() for k, v in model.state_dict().items()}
    folded, kept = fold_batch_norms(spec, state)
    assert {f["batch_norm"]: (f["side"], sorted(f["into"])) for f in folded} == {
        name: (side, sorted(into)) for name, (side, into) in EXPECTED_FOLDS.items()}
    assert {k["batch_norm"] for k in kept} == EXPECTED_KEPT
    assert all(k["why"] for k in kept)
    folded_model = KerasGraphModule(spec)
    folded_model.load_state_dict(state, strict=True)
    assert not any(layer["type"] == "batch_norm" and layer["name"] in EXPECTED_FOLDS for layer in spec["layers"])
    x = (np.random.default_rng(0).random((8, 30, 7)) < 0.2).astype(np.float32)
    for want, have in zip(outputs_of(model, x), outputs_of(folded_model.eval(), x)):
        assert np.abs(have - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_export_of_a_folded_graph_records_the_folds(fold_model, tmp_path):
    model = TCNModelConverter(fold_model).convert(tmp_path / "fold.pth", quantize="int8")
    record = model.metadata["export"]
    assert {f["batch_norm"] for f in record["folded"]} == set(EXPECTED_FOLDS)
    assert {k["batch_norm"] for k in record["not_folded"]} == EXPECTED_KEPT
    assert set(record["outputs"]) == set(model.output_names) and record["spikes"]["trials"] == 16


# A forged packed weight: every way an entry can disagree with the tensor it replaces, made from a valid file.
def _forgeries():
    def set_key(key, value):
        return lambda packed, name: packed[name].__setitem__(key, value(packed[name]) if callable(value) else value)
    return {
        "values_float_with_scales": set_key("values", lambda e: e["values"].float()),
        "values_int16": set_key("values", lambda e: e["values"].to(torch.int16)),
        "too_many_values": set_key("values", lambda e: torch.cat([e["values"], e["values"]])),
        "values_2d": set_key("values", lambda e: e["values"].reshape(1, -1)),
        "nan_scale": set_key("scales", lambda e: torch.full_like(e["scales"], float("nan"))),
        "zero_scale": set_key("scales", lambda e: torch.zeros_like(e["scales"])),
        "negative_scale": set_key("scales", lambda e: -e["scales"]),
        "scales_wrong_length": set_key("scales", lambda e: torch.cat([e["scales"], e["scales"]])),
        "scales_float64": set_key("scales", lambda e: e["scales"].double()),
        "no_scales": lambda packed, name: packed[name].pop("scales"),
        "mask_too_short": set_key("mask", lambda e: e["mask"][:-1]),
        "mask_wrong_count": set_key("mask", lambda e: torch.full_like(e["mask"], 255)),
        "mask_int8": set_key("mask", lambda e: e["mask"].to(torch.int8)),
        "extra_key": set_key("shape", [10 ** 9]),
        "entry_not_a_dict": lambda packed, name: packed.__setitem__(name, [1, 2, 3]),
        "unknown_weight": lambda packed, name: packed.__setitem__("layers.nowhere.weight", packed[name]),
    }


FORGERIES = _forgeries()


@pytest.fixture(scope="module")
def pruned_int8_payload(keras_files, tmp_path_factory):
    pth = tmp_path_factory.mktemp("valid") / "tcn.pth"
    TCNModelConverter(keras_files / "tcn.h5").convert(pth, quantize="int8", prune=0.5)
    return torch.load(pth, weights_only=True)


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_packed_weights_are_refused_naming_the_file_and_weight(pruned_int8_payload, tmp_path, forgery):
    payload = {**pruned_int8_payload, "packed": {k: dict(v) for k, v in pruned_int8_payload["packed"].items()}}
    name = sorted(payload["packed"])[0]
    FORGERIES[forgery](payload["packed"], name)
    forged = tmp_path / "forged.pth"
    torch.save(payload, forged)
    with pytest.raises(ModelFileError, match=rf"{forged}: a packed weight '(layers\.nowhere\.weight|{name})'"):
        load_converted_model(forged)


def test_packed_weight_also_in_the_state_dict_is_refused(pruned_int8_payload, tmp_path):
    name = sorted(pruned_int8_payload["packed"])[0]
    payload = {**pruned_int8_payload, "state_dict": {**pruned_int8_payload["state_dict"], name: torch.zeros(1)}}
    torch.save(payload, tmp_path / "twice.pth")
    with pytest.raises(ModelFileError, match="stored twice"):
        load_converted_model(tmp_path / "twice.pth")

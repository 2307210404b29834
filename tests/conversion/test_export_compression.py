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
from conversion.export import COST_SEED, fold_batch_norms, tensor_ranks
from conversion.pairing import info_path_for
from conversion.verify import realistic_input
from errors import ConversionError, ModelFileError
from model_converter import TCNModelConverter, convert_or_reuse, load_converted_model
from models.graph import KerasGraphModule
from models.packed import packable_weights
from tests.subprocesses import run_cli, run_keras_script

EXPORTS = [
    ExportConfig(quantize="int8"),
    ExportConfig(prune=0.5),
    ExportConfig(prune=0.3, prune_scope="global"),
    ExportConfig(prune=0.5, quantize="int8"),
    ExportConfig(dtype="float16", quantize="int8"),
    ExportConfig(dtype="bfloat16", prune=0.7),
]
FLOAT_TOLERANCE = 1e-5  # the float32 conversion against Keras


def outputs_of(model, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        got = model(torch.from_numpy(x))
    return [t.numpy().astype(np.float64) for t in (got if isinstance(got, tuple) else (got,))]


@pytest.fixture(scope="module")
def float32_model(keras_files, tmp_path_factory):
    return TCNModelConverter(keras_files / "tcn.h5").convert(tmp_path_factory.mktemp("float32") / "tcn.pth")


@pytest.mark.parametrize("export", EXPORTS, ids=lambda e: e.describe())
def test_export_loads_with_weights_only_and_records_what_a_recomputation_finds(
    keras_files, tmp_path, export, float32_model
):
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
    assert set(payload["packed"]) == set(packable_weights(loaded))
    for name, entry in payload["packed"].items():
        values, scales = entry["values"], entry["scales"]
        out_channels = loaded.state_dict()[name].shape[0]
        assert values.dtype == torch.int8 and scales.dtype == torch.float32 and scales.shape == (out_channels,)
        per_channel = values.reshape(out_channels, -1).abs().amax(dim=1)
        assert torch.all(per_channel == 127)  # symmetric: each channel's largest weight maps to ±127
        assert name not in payload["state_dict"]
        widened = loaded.state_dict()[name]
        assert torch.equal(
            widened, values.float().reshape(widened.shape) * scales.reshape(-1, *[1] * (widened.ndim - 1))
        )
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
        {name: zeros[name] / w.numel() for name, w in weights.items()}
    )


def test_pruning_keeps_the_largest_weights_unchanged(keras_files, tmp_path, float32_model):
    spec, state = copy.deepcopy(float32_model.spec), {k: v.clone() for k, v in float32_model.state_dict().items()}
    x = realistic_input(float32_model.input_shapes, 40, True, batch=1)
    fold_batch_norms(spec, state, tensor_ranks(float32_model, x))  # pruning ranks the weights of the folded model
    pth = tmp_path / "pruned.pth"
    TCNModelConverter(keras_files / "tcn.h5").convert(pth, prune=0.5)
    loaded = load_converted_model(pth)
    for name in packable_weights(loaded):
        pruned, reference = loaded.state_dict()[name], state[name]
        kept = pruned != 0
        assert torch.equal(pruned[kept], reference[kept]), name
        assert reference[kept].abs().min() >= reference[~kept].abs().max(), name


def test_max_error_refuses_and_writes_nothing(keras_files, tmp_path):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    with pytest.raises(
        ConversionError, match=r"changes output\(s\) .*by more than max_error 1e-06.*Nothing was written"
    ):
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


@pytest.mark.parametrize(
    "arguments, problem",
    [
        (["--max-error", "0.01"], "max_error bounds the cost of an export"),
        (["--prune", "1.5"], "--prune: Input should be less than 1"),
        (["--prune", "0"], "--prune: Input should be greater than 0"),
        (["--prune", "nan"], "--prune"),
        (["--quantize", "int8", "--max-error", "-1"], "--max-error: Input should be greater than 0"),
        (["--prune-scope", "global"], "prune_scope applies to pruning: give prune too"),
        (["--quantize", "int4"], "invalid choice: 'int4'"),
    ],
)
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
EXPECTED_FOLDS = {
    "bn_before": ("before", ["conv_linear"]),
    "bn_nobias": ("before", ["conv_nobias"]),
    "bn_heads": ("after", ["spikes", "valid", "dense"]),
    "bn_output": ("before", ["dense"]),
}
EXPECTED_KEPT = {"bn_causal_next", "bn_is_output"}


@pytest.fixture(scope="module")
def fold_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fold_models")
    run_keras_script(FOLD_MODELS, folder)
    return folder / "fold.h5"


def test_batch_norm_folding_is_exact_where_it_is_done(fold_model, tmp_path):
    model = TCNModelConverter(fold_model).convert(tmp_path / "fold.pth")
    spec, state = copy.deepcopy(model.spec), {k: v.clone() for k, v in model.state_dict().items()}
    x = (np.random.default_rng(0).random((8, 30, 7)) < 0.2).astype(np.float32)
    folded, kept = fold_batch_norms(spec, state, tensor_ranks(model, [x]))
    assert {f["batch_norm"]: (f["side"], sorted(f["into"])) for f in folded} == {
        name: (side, sorted(into)) for name, (side, into) in EXPECTED_FOLDS.items()
    }
    assert {k["batch_norm"] for k in kept} == EXPECTED_KEPT
    assert all(k["why"] for k in kept)
    folded_model = KerasGraphModule(spec)
    folded_model.load_state_dict(state, strict=True)
    assert not any(layer["type"] == "batch_norm" and layer["name"] in EXPECTED_FOLDS for layer in spec["layers"])
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
        "extra_key": set_key("shape", [10**9]),
        "entry_not_a_dict": lambda packed, name: packed.__setitem__(name, [1, 2, 3]),
        "unknown_weight": lambda packed, name: packed.__setitem__("layers.nowhere.weight", packed[name]),
        "a_bias_packed": lambda packed, name: packed.__setitem__(name.replace(".weight", ".bias"), packed[name]),
        "unscaled_float64": lambda packed, name: packed.__setitem__(
            name,
            {
                "values": torch.ones(int(packed[name]["values"].numel()), dtype=torch.float64),
                "mask": packed[name]["mask"],
            },
        ),
        "entry_a_tensor": lambda packed, name: packed.__setitem__(name, torch.ones(3)),
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
    with pytest.raises(
        ModelFileError, match=rf"{forged}: a packed weight '(layers\.[a-z_0-9]+\.(weight|bias)|{name})'"
    ):
        load_converted_model(forged)


def test_packed_weight_also_in_the_state_dict_is_refused(pruned_int8_payload, tmp_path):
    name = sorted(pruned_int8_payload["packed"])[0]
    payload = {**pruned_int8_payload, "state_dict": {**pruned_int8_payload["state_dict"], name: torch.zeros(1)}}
    torch.save(payload, tmp_path / "twice.pth")
    with pytest.raises(ModelFileError, match="stored twice"):
        load_converted_model(tmp_path / "twice.pth")


# Weights at the edges of float32 and graphs with nothing to compress: every export either works, with a finite
# recorded cost, or is refused as a ConversionError naming the file — never another exception.
DEGENERATE_MODELS = """
import keras, numpy as np
L = keras.layers
rng = np.random.default_rng(5)

def tcn(name, scale=1.0, bias=0.0, bn=None, linear_first=False, tiny_channel=False):
    inp = keras.Input((24, 6), name="input")
    x = L.Conv1D(4, 3, padding="causal", activation=None if linear_first else "relu", name="c1")(inp)
    x = L.BatchNormalization(name="bn", epsilon=bn[2] if bn else 1e-3)(x)
    x = L.Activation("tanh", name="act")(x)
    outs = [L.Conv1D(1, 1, activation="sigmoid", name="spikes")(x), L.Conv1D(1, 1, name="somatic")(x)]
    model = keras.Model(inp, outs)
    for layer in model.layers:
        if layer.get_weights():
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    w, b = model.get_layer("c1").get_weights()
    w = w * scale
    if tiny_channel:
        w[..., 0] = 1e-44  # a denormal channel: its int8 scale would underflow
    model.get_layer("c1").set_weights([w, b * 0 + bias])
    if bn:
        g, beta, _, _ = model.get_layer("bn").get_weights()
        model.get_layer("bn").set_weights([g, beta, np.full(4, bn[0], "float32"), np.full(4, bn[1], "float32")])
    model.save(name + ".h5")

tcn("plain")
tcn("tiny_channel", tiny_channel=True)
tcn("huge_kernel", scale=1e6)                                   # beyond float16: int8 from float32 is fine
tcn("huge_bias", bias=1e6)                                      # a bias beyond float16
tcn("fold_overflows_float16", linear_first=True, bn=(0.0, 1e-6, 0.0), scale=100.0)  # folded kernel > 65504
tcn("cancelling_fold", linear_first=True, bias=1e4, bn=(1e4, 1e-6, 0.0), scale=1e-3)  # float32 cancellation

inp = keras.Input((24, 6), name="input")                        # inf - inf: the float32 model gives NaN
x = L.Conv1D(2, 1, name="c1")(inp)
model = keras.Model(inp, [L.Conv1D(1, 1, name="spikes")(x)])
model.get_layer("c1").set_weights([np.full((1, 6, 2), 3e38, "float32"), np.zeros(2, "float32")])
model.get_layer("spikes").set_weights([np.array([[[1.0], [-1.0]]], "float32"), np.zeros(1, "float32")])
model.save("nan_output.h5")

inp = keras.Input((24, 6), name="input")                        # nothing to quantize or prune
keras.Model(inp, [L.Activation("sigmoid", name="spikes")(inp)]).save("no_weights.h5")
"""
DEGENERATE_EXPORTS = [
    ExportConfig(quantize="int8"),
    ExportConfig(prune=0.5, prune_scope="global"),
    ExportConfig(dtype="float16", quantize="int8"),
    ExportConfig(dtype="float16", prune=0.3),
    ExportConfig(dtype="bfloat16", prune=0.5, quantize="int8"),
]
DEGENERATE_NAMES = [
    "plain",
    "tiny_channel",
    "huge_kernel",
    "huge_bias",
    "fold_overflows_float16",
    "cancelling_fold",
    "nan_output",
    "no_weights",
]


@pytest.fixture(scope="module")
def degenerate_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("degenerate_models")
    run_keras_script(DEGENERATE_MODELS, folder)
    return folder


@pytest.mark.parametrize("name", DEGENERATE_NAMES)
@pytest.mark.parametrize("export", DEGENERATE_EXPORTS, ids=lambda e: e.short())
def test_every_export_works_or_is_refused_cleanly(degenerate_models, tmp_path, name, export):
    pth = tmp_path / "out.pth"
    try:
        TCNModelConverter(degenerate_models / f"{name}.h5").convert(pth, **export.model_dump())
    except ConversionError as exc:
        assert str(exc).startswith(str(degenerate_models / f"{name}.h5")) and "Nothing was written" in str(exc)
        assert not pth.exists()
        refused = str(exc)
    else:
        record = torch.load(pth, weights_only=True)["metadata"]["export"]
        assert all(math.isfinite(v) for cost in record["outputs"].values() for v in cost.values())
        load_converted_model(pth)
        refused = None
    if name == "nan_output":
        assert refused and "the float32 conversion's outputs on 16 samples × 24 steps" in refused, refused
        assert "are not finite" in refused
    elif name == "no_weights":
        assert refused and "the model has no conv or dense weights to quantize or prune" in refused, refused
    elif export.dtype == "float16" and (name == "huge_bias" or name == "huge_kernel" and not export.quantize):
        assert refused and "beyond the range of float16 (layers.c1." in refused, refused
    else:
        assert refused is None, refused


def test_folding_that_float32_cannot_keep_exact_is_not_done(degenerate_models, tmp_path):
    model = TCNModelConverter(degenerate_models / "cancelling_fold.h5").convert(tmp_path / "a.pth", quantize="int8")
    record = model.metadata["export"]
    assert record["folded"] == [] and "beyond the float32 tolerance" in record["not_folded"][0]["why"]
    plain = TCNModelConverter(degenerate_models / "plain.h5").convert(tmp_path / "b.pth", quantize="int8")
    assert plain.metadata["export"]["not_folded"][0]["why"].startswith("the activation of 'c1' before it comes first")
    assert [f["into"] for f in plain.metadata["export"]["folded"]] == []
    fold16 = TCNModelConverter(degenerate_models / "fold_overflows_float16.h5").convert(
        tmp_path / "c.pth", dtype="float16", prune=0.3
    )
    assert "would overflow how they are stored" in fold16.metadata["export"]["not_folded"][0]["why"]
    fold8 = TCNModelConverter(degenerate_models / "fold_overflows_float16.h5").convert(
        tmp_path / "d.pth", quantize="int8"
    )
    assert [f["batch_norm"] for f in fold8.metadata["export"]["folded"]] == ["bn"]  # int8 kernels have any range


# A record that does not describe its file, or not as this converter writes one: the cache converts again.
def _record_forgeries():
    def cost(mutate):
        def forge(payload):
            mutate(payload["metadata"]["export"]["outputs"])

        return forge

    def first(outputs):
        return outputs[next(iter(outputs))]

    return {
        "error_as_text": cost(lambda o: first(o).__setitem__("error", "0.0")),
        "error_nan": cost(lambda o: first(o).__setitem__("error", float("nan"))),
        "error_negative": cost(lambda o: first(o).__setitem__("error", -1.0)),
        "error_bool": cost(lambda o: first(o).__setitem__("error", False)),
        "cost_missing_a_key": cost(lambda o: first(o).pop("max_abs_diff")),
        "outputs_empty": cost(lambda o: o.clear()),
        "outputs_a_list": lambda p: p["metadata"]["export"].__setitem__("outputs", [1, 2]),
        "spikes_a_string": lambda p: p["metadata"]["export"].__setitem__("spikes", "x"),
        "export_none": lambda p: p["metadata"].__setitem__("export", None),
        "export_junk": lambda p: p["metadata"].__setitem__("export", "junk"),
        "options_unknown_key": lambda p: p["metadata"]["export"]["options"].__setitem__("bits", 4),
        "options_say_float32": lambda p: p["metadata"]["export"]["options"].update(quantize=None, prune=None),
        "dtype_says_float16": lambda p: p["metadata"].__setitem__("dtype", "float16"),
        "packed_dropped": lambda p: (
            p["state_dict"].update({k: v["values"].float() * 0 for k, v in p["packed"].items()}),
            p.pop("packed"),
        ),
    }


RECORD_FORGERIES = _record_forgeries()


@pytest.mark.parametrize("forgery", RECORD_FORGERIES)
def test_a_record_that_does_not_describe_its_file_is_converted_again(keras_files, tmp_path, forgery):
    h5 = tmp_path / "tcn.h5"
    shutil.copy(keras_files / "tcn.h5", h5)
    export = ExportConfig(quantize="int8", prune=0.5, max_error=0.5)
    convert_or_reuse(h5, export=export)
    pth = tmp_path / "tcn_converted.pth"
    payload = torch.load(pth, weights_only=True)
    RECORD_FORGERIES[forgery](payload)
    torch.save(payload, pth)
    outcome = convert_or_reuse(h5, export=export)  # never an exception, never the forged file
    assert not outcome.cached
    again = torch.load(pth, weights_only=True)
    assert again["metadata"]["export"]["options"]["quantize"] == "int8" and "packed" in again


def test_published_keras2_tcns_fold_their_last_batch_norm_into_the_heads(tmp_path):
    from tests.published_training import PublishedModel, write_published_models

    folder = write_published_models(tmp_path / "published", [PublishedModel("k2", flavour="keras2")])
    model = TCNModelConverter(folder / "k2.h5", folder / "k2.pickle").convert(tmp_path / "k2.pth", quantize="int8")
    folded = model.metadata["export"]["folded"]
    assert [(f["batch_norm"], sorted(f["into"])) for f in folded] == [
        ("layer_2_BN", ["dendritic", "somatic", "spikes"])
    ]
    assert {n["batch_norm"] for n in model.metadata["export"]["not_folded"]} == {"layer_1_BN"}


def test_a_spec_that_declares_more_than_the_weight_budget_is_refused_before_it_is_built(pruned_int8_payload, tmp_path):
    """A small file whose spec declares a 1x1 convolution of 10^6 × 10^5 weights (400 GB): refused by the budget,
    nothing allocated."""
    payload = copy.deepcopy(pruned_int8_payload)
    layer = next(layer for layer in payload["spec"]["layers"] if layer["name"] == "spikes")
    layer["config"].update(in_channels=10**5, out_channels=10**6)
    torch.save(payload, tmp_path / "declares_400GB.pth")
    with pytest.raises(ModelFileError, match=r"the layers its spec declares: declares 400 GB, more than the limit"):
        load_converted_model(tmp_path / "declares_400GB.pth")


def test_export_options_follow_one_rule_in_the_api_and_the_config(keras_files, tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_error bounds the cost of an export"):
        TCNModelConverter(keras_files / "tcn.h5").convert(tmp_path / "a.pth", max_error=0.1)
    with pytest.raises(ValidationError, match="prune_scope applies to pruning"):
        TCNModelConverter(keras_files / "tcn.h5").convert(tmp_path / "a.pth", prune_scope="global")
    assert not list(tmp_path.iterdir())
    (tmp_path / "models").mkdir()
    result = run_cli(
        [
            "main.py",
            f"models_dir={tmp_path / 'models'}",
            f"output_dir={tmp_path / 'runs'}",
            "conversion.export.max_error=0.01",
        ]
    )
    assert result.returncode == 3 and "max_error bounds the cost of an export" in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_batch_norm_whose_variance_gives_nan_is_refused(pruned_int8_payload, tmp_path):
    key = next(k for k in pruned_int8_payload["state_dict"] if k.endswith("running_var"))
    payload = {**pruned_int8_payload, "state_dict": {**pruned_int8_payload["state_dict"]}}
    payload["state_dict"][key] = -torch.ones_like(payload["state_dict"][key])
    torch.save(payload, tmp_path / "negative_variance.pth")
    with pytest.raises(ModelFileError, match=r"moving variance \+ epsilon is not positive in BatchNorm"):
        load_converted_model(tmp_path / "negative_variance.pth")


@pytest.mark.parametrize("seed", range(6))
def test_the_auc_is_scikit_learns(seed):
    from sklearn.metrics import roc_auc_score

    from conversion.export import roc_auc

    rng = np.random.default_rng(seed)
    size = int(rng.integers(5, 400))
    labels = rng.random(size) < rng.uniform(0.05, 0.95)
    labels[:2] = [True, False]
    scores = np.round(rng.random(size), int(rng.integers(1, 4)))  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)

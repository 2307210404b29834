"""Files as the published training code writes them: 'lrelu' lambdas resolved from the training record, diverged
runs refused with the right words, the lab variant at the real shape, parameter counts as Keras counts them.

The models are built by tests/published_training.py (a reproduction of fit_CNN.py's model function) with real
Keras 3 and tf_keras; Keras's own predictions on binary spikes are the reference.
"""

from __future__ import annotations

import base64
import itertools
import marshal
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from conversion.lambdas import LAMBDA_STRING, resolve_stored_functions
from errors import ConversionError, ModelFileError
from tests.conversion.test_keras_archive import TOLERANCE, convert_in_process, expect_cli_refusal, max_diffs
from tests.published_training import LAB_HEADS, PublishedModel, keras_counts, keras_io, write_published_models
from tests.subprocesses import run_cli

LRELU = ["lrelu", "relu", "lrelu"]
MODELS = [
    PublishedModel("lrelu_k3", activations=LRELU, filter_sizes=[9, 5, 3], filters=[8, 6, 6], dilations=[1, 2, 1]),
    PublishedModel("lrelu_k2", flavour="keras2", activations=LRELU, filter_sizes=[9, 5, 3], filters=[8, 6, 6]),
    PublishedModel("string_k2", flavour="keras2", lambda_string=True),
    PublishedModel("string_k3", lambda_string=True),
    PublishedModel("slope_k3", slope=0.3),
    PublishedModel("literal_k3", lambda_form="literal"),
    PublishedModel("global_k2", flavour="keras2", lambda_form="global"),
    PublishedModel("diverged_k3", history=[0.1, 0.05, float("nan")], weights="nan"),
    PublishedModel("weights_k3", save="weights"),
    # the real shape: 400 ms x 1278 segments (fit_CNN.py), and the lab variant's 639 + 640 with two heads
    PublishedModel(
        "full_k3",
        window=400,
        segments=1278,
        activations=["lrelu", "lrelu", "relu"],
        filter_sizes=[54, 12, 12],
        filters=[8, 8, 8],
    ),
    PublishedModel(
        "lab_k2",
        flavour="keras2",
        window=400,
        segments=1279,
        heads=LAB_HEADS,
        legacy_optimizer=True,
        activations=["lrelu", "lrelu"],
        filter_sizes=[54, 24],
        filters=[8, 8],
    ),
]
EXACT = ["lrelu_k3", "lrelu_k2", "string_k2", "string_k3", "full_k3", "lab_k2"]


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    return write_published_models(tmp_path_factory.mktemp("published"), MODELS)


def own_copy(published: Path, folder: Path, stem: str, with_pickle: bool = True) -> Path:
    """The model's Keras file (and pickle) alone in `folder`; returns the Keras file."""
    folder.mkdir(parents=True, exist_ok=True)
    source = next(p for p in (published / f"{stem}.h5", published / f"{stem}.weights.h5") if p.is_file())
    shutil.copy(source, folder / source.name)
    if with_pickle:
        shutil.copy(published / f"{stem}.pickle", folder / f"{stem}.pickle")
    return folder / source.name


@pytest.mark.parametrize("stem", EXACT)
def test_lambda_activations_resolve_from_the_training_record_exactly(parity, published, tmp_path, stem):
    source = own_copy(published, tmp_path, stem)
    model = convert_in_process(parity, source, tmp_path / "out.pth", tmp_path / f"{stem}.pickle")
    x, expected = keras_io(published, stem)
    diffs = max_diffs(parity, model, x, expected)
    assert max(diffs) <= TOLERANCE, diffs
    spec = next(m for m in MODELS if m.stem == stem)
    lambda_layers = [f"layer_{k + 1}" for k, a in enumerate(spec.activations) if a == "lrelu"]
    resolved = model.metadata["resolved_activations"]
    assert [r["layer"] for r in resolved] == lambda_layers
    assert all(
        r["recorded"] == "lrelu"
        and r["activation"] == {"name": "leaky_relu", "negative_slope": 0.25}
        and r["activation_source"] == "architecture_dict"
        for r in resolved
    )
    sources = {layer["name"]: layer["activation_source"] for layer in model.metadata["layers"]}
    assert {name for name, where in sources.items() if where == "architecture_dict"} == set(lambda_layers)
    info = pickle.loads(tmp_path.joinpath("out_info.pickle").read_bytes())
    assert info["resolved_activations"] == resolved


@pytest.mark.parametrize("stem", ["lrelu_k3", "string_k2"])
def test_the_cli_forms_convert_and_verify_reports_a_figure(published, tmp_path, stem):
    source = own_copy(published, tmp_path, stem)
    params = tmp_path / f"{stem}.pickle"
    beside = run_cli(["model_converter.py", str(source)])  # the pickle beside the model is used
    assert beside.returncode == 0, beside.stderr
    assert f"using the parameters pickle beside the model: {params}" in beside.stdout
    given = run_cli(["model_converter.py", str(source), str(params), "--force"])
    assert given.returncode == 0, given.stderr
    verified = run_cli(["model_converter.py", str(source), str(params), str(tmp_path / "v.pth"), "--verify"])
    assert verified.returncode == 0, verified.stderr
    figures = verified.stdout.split("max abs diff ")[1].split(" (against")[0].split(", ")
    assert len(figures) == 3 and all(float(f.split()[1]) <= TOLERANCE for f in figures), verified.stdout
    assert "(against a Keras model rebuilt from the file's config with the activations of layer_1" in verified.stdout
    assert "not verified" not in verified.stdout


@pytest.mark.parametrize("stem", ["lrelu_k2", "full_k3", "lab_k2"])
def test_published_files_export_int8_verified_first_with_the_cost_at_the_window(published, tmp_path, stem):
    """The training code's own files (lambdas, 1278/1279 segments, the lab's two heads): --verify checks the
    float32 conversion against Keras, then the int8 export's cost is measured at the model's window."""
    source = own_copy(published, tmp_path, stem)
    result = run_cli(["model_converter.py", str(source), "--verify", "--quantize", "int8", "--max-error", "0.2"])
    assert result.returncode == 0, result.stderr
    verified, cost = result.stdout.index("verified against"), result.stdout.index("max abs diff to the float32")
    assert verified < cost, result.stdout
    payload = torch.load(tmp_path / f"{stem}_converted.pth", weights_only=True)
    spec = next(m for m in MODELS if m.stem == stem)
    assert payload["metadata"]["verification"]["passed"] is True
    assert f"× {spec.window} steps of binary spikes" in payload["metadata"]["export"]["input"]
    assert set(payload["metadata"]["export"]["outputs"]) == set(spec.heads)


def test_folder_conversion_uses_each_sibling_pickle(published, tmp_path):
    for stem in ("lrelu_k3", "lrelu_k2", "string_k3"):
        own_copy(published, tmp_path, stem)
    result = run_cli(["model_converter.py", str(tmp_path), "--jobs", "2"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 models: 3 converted, 0 cached, 0 failed" in result.stdout
    assert all((tmp_path / f"{stem}_converted.pth").is_file() for stem in ("lrelu_k3", "lrelu_k2", "string_k3"))


@pytest.mark.parametrize("stem", ["lrelu_k3", "lrelu_k2", "string_k2"])
def test_without_the_pickle_the_refusal_names_every_lambda_layer_once_and_the_remedy(published, tmp_path, stem):
    source = own_copy(published, tmp_path, stem, with_pickle=False)
    message = expect_cli_refusal(
        [str(source)],
        source,
        "never run",
        "no parameters pickle was given",
        f"python model_converter.py {source.name} {stem}.pickle",
        "activation_function_per_layer",
    )
    spec = next(m for m in MODELS if m.stem == stem)
    for k, activation in enumerate(spec.activations):
        assert message.count(f"'layer_{k + 1}'") == (1 if activation == "lrelu" else 0), message
    assert "hard_sigmoid_keras2" not in message


@pytest.mark.parametrize(
    "stem, held", [("slope_k3", "holds 0.3"), ("literal_k3", "holds 0.3"), ("global_k2", "holds no slope")]
)
def test_a_lambda_that_disagrees_with_the_record_is_refused_naming_both(published, tmp_path, stem, held):
    """The slope in the closure, written in the code, or read from a module-level name the file does not store."""
    source = own_copy(published, tmp_path, stem)
    expect_cli_refusal(
        [str(source), str(tmp_path / f"{stem}.pickle")],
        source,
        "layer 'layer_1'",
        held,
        "'lrelu'",
        "0.25",
        "refused rather than guessing",
        "LeakyReLU",
    )


@pytest.mark.parametrize("verify", [False, True])
def test_a_diverged_model_is_refused_naming_its_nan_layers(published, tmp_path, verify):
    source = own_copy(published, tmp_path, "diverged_k3")
    message = expect_cli_refusal(
        [str(source), *(["--verify"] if verify else [])],
        source,
        "not finite",
        "'layer_2' (kernel: ",
        "'spikes' (kernel: 8, bias: 1)",
        "diverged",
    )
    for wrong_cause in ("differs from Keras", "spike_output_index", "layer_1"):
        assert wrong_cause not in message


def test_a_nan_pth_is_refused_when_loaded(published, tmp_path):
    from models.checkpoint import load_converted_model

    source = own_copy(published, tmp_path, "lrelu_k3")
    assert run_cli(["model_converter.py", str(source)]).returncode == 0
    payload = torch.load(tmp_path / "lrelu_k3_converted.pth", weights_only=True)
    payload["state_dict"]["layers.layer_2.weight"][0, 0, 0] = float("nan")
    torch.save(payload, tmp_path / "forged.pth")
    with pytest.raises(ModelFileError, match=r"not finite \(NaN/Inf in layers.layer_2.weight\)"):
        load_converted_model(tmp_path / "forged.pth")


@pytest.mark.parametrize("stem", ["lrelu_k3", "full_k3", "weights_k3"])
def test_parameter_counts_are_those_keras_counts(published, tmp_path, stem):
    source = own_copy(published, tmp_path, stem)
    result = run_cli(["model_converter.py", str(source)])
    assert result.returncode == 0, result.stderr
    counts = keras_counts(published, stem)
    assert f"{counts['count_params']:,} parameters, {counts['trainable_params']:,} trainable" in result.stdout


def test_a_changed_pickle_converts_a_resolved_file_again(published, tmp_path):
    source = own_copy(published, tmp_path, "lrelu_k3")
    params = tmp_path / "lrelu_k3.pickle"
    assert "\nconverted " in run_cli(["model_converter.py", str(source)]).stdout
    assert "\nup to date: " in run_cli(["model_converter.py", str(source)]).stdout
    record = pickle.loads(params.read_bytes())
    record["architecture_dict"]["note"] = "the same architecture, another pickle"
    params.write_bytes(pickle.dumps(record, protocol=2))
    again = run_cli(["model_converter.py", str(source)])
    assert again.returncode == 0 and "\nconverted " in again.stdout, again.stdout + again.stderr
    assert "built with the architecture_dict of another (or no) params pickle" in again.stderr


# ---- the whole class of stored functions, generated: what each form and record gives -------------------------


def slope_lambda(slope=0.25):
    leaky_relu_slope = slope
    return lambda x: LeakyReLU(alpha=leaky_relu_slope)(x)  # noqa: F821 (never called: only its code is stored)


def stored(function, defaults=None, closure=None) -> dict:
    """An activation as Keras stores a Python function: base64 of its marshalled code (made here from real
    lambdas; the converter never unmarshals it), its defaults and its closure as JSON."""
    code = base64.b64encode(marshal.dumps(function.__code__)).decode()
    return {"value": [code, defaults, closure]}


# form -> (stored activation, does its code call LeakyReLU, does it call relu, the numbers it holds);
# None for what the file cannot say (the bare "<lambda>" string), "garbled" for a stored form that cannot be read
STORED = {
    "closure_0.25": (stored(slope_lambda(), closure=[0.25]), True, False, [0.25]),
    "closure_0.3": (stored(slope_lambda(), closure=[0.3]), True, False, [0.3]),
    "dict_closure_0.3": (stored(slope_lambda(), closure=[{"slope": 0.3}]), True, False, [0.3]),
    "closure_text": (stored(slope_lambda(), closure=["a string"]), True, False, []),
    "default_0.25": (
        stored(lambda x, a=0.25: LeakyReLU(alpha=a)(x), defaults=[0.25]),  # noqa: F821
        True,
        False,
        [0.25],
    ),
    "literal_0.3": (stored(lambda x: LeakyReLU(alpha=0.3)(x)), True, False, [0.3]),  # noqa: F821
    "global_slope": (stored(lambda x: LeakyReLU(alpha=GLOBAL_SLOPE)(x)), True, False, []),  # noqa: F821
    "relu_call": (stored(lambda x: K.relu(x)), False, True, []),  # noqa: F821
    "elu_call": (stored(lambda x: keras.activations.elu(x)), False, False, []),  # noqa: F821
    "string": (LAMBDA_STRING, None, None, None),
    "wrapped_0.25": (
        {"class_name": "__lambda__", "config": stored(slope_lambda(), closure=[0.25])},
        True,
        False,
        [0.25],
    ),
    "garbled": ({"value": ["bm90IGNvZGU=", None, None]}, "garbled", "garbled", []),
}
RECORDS = {"lrelu": "lrelu", "relu": "relu", "unknown": "quadratic", "missing": None}


def model_config(activation, name="layer_1") -> dict:
    return {
        "class_name": "Functional",
        "config": {
            "layers": [{"class_name": "Conv1D", "name": name, "config": {"name": name, "activation": activation}}]
        },
    }


def expected_outcome(form: str, record: str | None) -> str:
    """The rule, written out: the record decides only what the file agrees with."""
    _, calls_leaky, calls_relu, numbers = STORED[form]
    if record is None:
        return "unresolved"
    if calls_leaky == "garbled":
        return "conflict"
    if record == "lrelu":
        nothing_stored = calls_leaky is None
        agrees = nothing_stored or (calls_leaky and numbers and all(n == 0.25 for n in numbers))
        return "leaky" if agrees else "conflict"
    if record == "relu":
        return "relu" if calls_leaky is None or (calls_relu and not numbers) else "conflict"
    return "conflict"


@pytest.mark.parametrize("form, record", list(itertools.product(STORED, RECORDS)))
def test_every_stored_form_against_every_record(form, record):
    activations = None if RECORDS[record] is None else [RECORDS[record]]
    params = {"architecture_dict": {"activation_function_per_layer": activations}} if activations else None
    expected = expected_outcome(form, RECORDS[record])
    config = model_config(STORED[form][0])
    if expected in ("unresolved", "conflict"):
        with pytest.raises(ConversionError) as refused:
            resolve_stored_functions(Path("m.h5"), config, 3, params, "m.pickle")
        assert "m.h5" in str(refused.value) and "layer_1" in str(refused.value)
        message = str(refused.value)
        if expected == "unresolved":
            assert "never run" in message
        else:
            assert "architecture_dict names" in message or "the stored function is refused" in message
        return
    (resolved,) = resolve_stored_functions(Path("m.h5"), config, 3, params).values()
    assert resolved.module == ({"name": "leaky_relu", "negative_slope": 0.25} if expected == "leaky" else "relu")
    assert resolved.checked == (form != "string")


@pytest.mark.parametrize("name", ["dense_1", "layer_0"])
def test_layers_the_record_does_not_cover_are_listed(name):
    with pytest.raises(ConversionError, match=f"'{name}' \\(Conv1D\\).*only layers named layer_k"):
        resolve_stored_functions(
            Path("m.h5"),
            model_config(STORED["closure_0.25"][0], name),
            3,
            {"architecture_dict": {"activation_function_per_layer": []}},
            "m.pickle",
        )


def test_a_record_for_another_model_is_refused():
    with pytest.raises(ConversionError, match="lists 3 activation.*has 1 layer"):
        resolve_stored_functions(
            Path("m.h5"),
            model_config(STORED["closure_0.25"][0]),
            3,
            {"architecture_dict": {"activation_function_per_layer": ["lrelu"] * 3}},
            "m.pickle",
        )


def test_named_activations_are_left_alone():
    for activation in ("relu", {"module": "keras.activations", "class_name": "function", "config": "elu"}, None):
        assert resolve_stored_functions(Path("m.h5"), model_config(activation), 3, None) == {}


def test_the_refusal_of_an_unknown_name_lists_only_keras_names():
    from conversion.families.activations import activation_name
    from conversion.registry import LayerProblem

    with pytest.raises(LayerProblem) as refused:
        activation_name("quadratic", 2)
    assert "hard_sigmoid_keras2" not in str(refused.value) and "hard_sigmoid" in str(refused.value)
    with pytest.raises(LayerProblem):
        activation_name("hard_sigmoid_keras2", 2)  # an internal name is not a Keras activation


def test_keras_rebuild_replaces_only_the_resolved_activations(published):
    from conversion.model_file import read_model_file
    from conversion.verify import keras_rebuild

    params = pickle.loads((published / "lrelu_k3.pickle").read_bytes())
    keras_file = read_model_file(published / "lrelu_k3.h5", params)
    rebuild = keras_rebuild(keras_file)
    activations = {entry["name"]: entry["config"].get("activation") for entry in rebuild.config["config"]["layers"]}
    custom = {"module": "builtins", "class_name": "function", "config": "lrelu", "registered_name": "function"}
    assert activations["layer_1"] == activations["layer_3"] == custom and activations["layer_2"] == "relu"
    assert rebuild.leaky_relu == {"lrelu": 0.25}
    assert isinstance(keras_file.model_config["config"]["layers"][1]["config"]["activation"], dict)  # untouched

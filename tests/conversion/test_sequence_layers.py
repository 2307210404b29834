"""Sequence layers (Embedding, RepeatVector, TimeDistributed, Bidirectional, LSTM, GRU, SimpleRNN) and
keras-tcn's example models convert exactly from every container: Keras 2 and Keras 3 `.h5`, Keras 3 `.keras`,
and `model.to_json()` + `save_weights` of both; models outside what is reproduced are refused, naming why.

The models (sequence_models.py) are built with random weights by one subprocess per flavour; here they are
converted with TensorFlow, Keras and keras-tcn unimportable and compared with Keras's predictions of the
built model: max abs diff <= 1e-5 on every output.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sequence_models import FLAVOURS, MODELS, model_names

from errors import ConversionError
from tests.subprocesses import run_cli

BUILDER = Path(__file__).resolve().parent / "sequence_models.py"
BUILD_TIMEOUT_S = 900
CONTAINERS = {"keras3": ("h5", "keras", "json"), "keras2": ("h5", "json", "json_legacy_weights")}
CASES = [
    pytest.param(flavour, name, container, id=f"{flavour}-{name}-{container}")
    for flavour in FLAVOURS
    for name in model_names(flavour)
    for container in CONTAINERS[flavour]
]


@pytest.fixture(scope="module")
def sequence_files(tmp_path_factory) -> dict[str, Path]:
    """Folder of each flavour's models, both flavours built at the same time."""
    root = tmp_path_factory.mktemp("sequence_models")
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


def saved(folder: Path, name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Keras's inputs and outputs of a built model."""
    error = folder / f"{name}.error.txt"
    if error.exists():
        pytest.fail(
            f"Keras could not build/save {name!r} (a test-fixture problem):\n{error.read_text()}", pytrace=False
        )
    arrays = folder / f"{name}.npz"
    assert arrays.exists(), f"the builder wrote nothing for {name}; see {folder.parent}/*.log"
    with np.load(arrays) as data:
        count = lambda prefix: sum(key.startswith(prefix) for key in data.files)  # noqa: E731
        return [data[f"in_{i}"] for i in range(count("in_"))], [data[f"out_{i}"] for i in range(count("out_"))]


def sources(folder: Path, name: str, container: str) -> tuple[Path, Path | None]:
    """(model file, weights file or None) of a container."""
    if container == "json":
        return folder / f"{name}.json", folder / f"{name}.weights.h5"
    if container == "json_legacy_weights":
        return folder / f"{name}.json", folder / f"{name}_weights.h5"
    return folder / f"{name}.{container}", None


def convert(parity, source: Path, weights: Path | None, output: Path):
    with parity.tensorflow_blocked():
        from conversion.converter import convert_model

        return convert_model(source, output=output, weights=weights)


@pytest.mark.parametrize("flavour, name, container", CASES)
def test_sequence_model_matches_keras_or_is_refused(parity, sequence_files, tmp_path, flavour, name, container):
    spec = MODELS[name]
    inputs, expected = saved(sequence_files[flavour], name)
    source, weights = sources(sequence_files[flavour], name, container)
    output = tmp_path / "out.pth"
    if spec.refused:
        with pytest.raises(ConversionError) as refusal:
            convert(parity, source, weights, output)
        message = " ".join(str(refusal.value).split())
        assert spec.refused in message and any(f.name in message for f in (source, weights) if f), message
        assert not list(tmp_path.iterdir()), "a refused conversion wrote files"
        return
    conversion = convert(parity, source, weights, output)
    actual = parity.run_torch(conversion.model, inputs)
    assert len(actual) == len(expected), f"{len(actual)} outputs, Keras has {len(expected)}"
    names = conversion.model.output_names
    assert len(set(names)) == len(names) == len(expected), f"output names {names} must name each output once"
    vocabularies = [vocabulary or None for _, _, vocabulary in spec.inputs]  # 0: real values
    assert conversion.model.input_tokens == vocabularies, "token inputs are recorded with their vocabulary"
    for index, (have, want) in enumerate(zip(actual, expected)):
        assert have.shape == want.shape, f"output {index}: shape {have.shape}, Keras {want.shape}"
        diff = float(np.max(np.abs(have - want), initial=0.0))
        parity.record_figure(f"{flavour}/{name}.{container}", diff)
        assert diff <= parity.tolerance, f"output {index}: max abs diff {diff:.3g} against Keras"
    with parity.tensorflow_blocked():
        from model_converter import load_converted_model

        reloaded = load_converted_model(output, device="cpu")
    again = parity.run_torch(reloaded, inputs)
    assert all(np.array_equal(a, b) for a, b in zip(actual, again)), "the reloaded .pth computes otherwise"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_token_inputs_are_taken_as_integers_or_whole_floats(parity, sequence_files, tmp_path, flavour):
    """An Embedding's input may be int32/int64 or float holding whole numbers (Keras casts); the module records
    the vocabulary of its token input, and an index outside it is an error, not a silent row."""
    folder = sequence_files[flavour]
    inputs, expected = saved(folder, "embedding_rnn")
    model = convert(parity, folder / "embedding_rnn.h5", None, tmp_path / "m.pth").model
    assert model.input_tokens == [40]
    with torch.no_grad():
        as_int = model(torch.from_numpy(inputs[0]).long())
        as_float = model(torch.from_numpy(inputs[0].astype(np.float32)))
    assert torch.equal(as_int, as_float)
    assert float(np.max(np.abs(as_int.numpy() - expected[0]))) <= parity.tolerance
    for bad in (-1, 40):
        tokens = torch.from_numpy(inputs[0]).long()
        tokens[0, 3] = bad
        with pytest.raises(ValueError, match=r"token indices must lie in \[0, 40\)"):
            model(tokens)


def with_spec(model, spec):
    """`model`'s weights in a module of another spec (a cast or a mask left out), to show that it matters."""
    other = type(model)(spec)
    other.load_state_dict(model.state_dict())
    return other


def test_masked_steps_change_the_result_as_in_keras(parity, sequence_files, tmp_path):
    """The mask is reproduced, not ignored: dropping it changes the outputs by far more than the tolerance."""
    folder = sequence_files["keras3"]
    inputs, expected = saved(folder, "embedding_mask_sequences")
    model = convert(parity, folder / "embedding_mask_sequences.h5", None, tmp_path / "m.pth").model
    assert [call.get("mask") for call in model.spec["calls"]].count("tokens:0:0") == 3
    spec = copy.deepcopy(model.spec)
    for call in spec["calls"]:
        call.pop("mask", None)
    unmasked = with_spec(model, spec)
    with torch.no_grad():
        got = unmasked(torch.from_numpy(inputs[0])).numpy()
    assert float(np.max(np.abs(got - expected[0]))) > 100 * parity.tolerance


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_json_and_weights_route_caches_on_both_files(parity, sequence_files, tmp_path, flavour):
    """`model_converter.py model.json weights.h5` converts exactly, records both sha256, reuses its result, and
    converts again when the weights file changes."""
    folder = tmp_path / "model"
    folder.mkdir()
    for suffix in (".json", ".weights.h5"):
        shutil.copy(sequence_files[flavour] / f"tcn_save_reload{suffix}", folder / f"model{suffix}")
    inputs, expected = saved(sequence_files[flavour], "tcn_save_reload")
    model_json, weights = folder / "model.json", folder / "model.weights.h5"
    first = run_cli(["model_converter.py", str(model_json), str(weights), "--verify"])
    assert first.returncode == 0, first.stderr
    assert "converted" in first.stdout and "verified against" in first.stdout, first.stdout
    output = folder / "model_converted.pth"
    with open(folder / "model_converted_info.pickle", "rb") as f:
        info = pickle.load(f)
    from conversion.keras_file import file_sha256

    assert info["source_sha256"] == file_sha256(model_json) and info["weights_sha256"] == file_sha256(weights)
    again = run_cli(["model_converter.py", str(model_json), str(weights)])
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr

    with h5py.File(weights, "r+") as f:  # a changed weights file: the dense head's kernel doubled
        kernels = []
        f.visititems(lambda n, o: kernels.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 2 else None)
        f[kernels[-1]][...] = 2 * f[kernels[-1]][()]
    changed = run_cli(["model_converter.py", str(model_json), str(weights)])
    assert changed.returncode == 0 and "converted" in changed.stdout and "up to date" not in changed.stdout, (
        changed.stdout + changed.stderr
    )
    with parity.tensorflow_blocked():
        from model_converter import load_converted_model

        reloaded = load_converted_model(output, device="cpu")
    assert reloaded.metadata["weights_sha256"] == file_sha256(weights)
    assert float(np.max(np.abs(parity.run_torch(reloaded, inputs)[0] - expected[0]))) > parity.tolerance


def test_json_route_refusals_name_the_file(sequence_files, tmp_path):
    folder = sequence_files["keras3"]
    no_weights = run_cli(["model_converter.py", str(folder / "lstm_stack.json")])
    assert no_weights.returncode == 2 and "give its weights file" in no_weights.stderr, no_weights.stderr
    foreign = run_cli(
        [
            "model_converter.py",
            str(folder / "lstm_stack.json"),
            str(folder / "gru_simple_rnn_variants.weights.h5"),
            str(tmp_path / "x.pth"),
        ]
    )
    assert foreign.returncode == ConversionError.exit_code, foreign.stderr
    assert "lstm_stack.json" in foreign.stderr or "weights.h5" in foreign.stderr, foreign.stderr
    assert not list(tmp_path.iterdir())
    not_json = tmp_path / "broken.json"
    not_json.write_text("[1, 2")
    broken = run_cli(["model_converter.py", str(not_json), str(folder / "lstm_stack.weights.h5")])
    assert broken.returncode == ConversionError.exit_code and "broken.json" in broken.stderr, broken.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json"]


FUZZED = ("embedding_mask", "bidirectional_merge_modes", "recurrent_states", "time_distributed", "tcn_bidirectional")
SMALL_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 64) | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _locations(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _locations(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _locations(value, (*prefix, index))


def _mutated(config, data):
    """The config with 1-3 values replaced or keys removed, anywhere (layer configs, wrapped layers, nodes)."""
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        location = data.draw(st.sampled_from(list(_locations(config))[1:]), label="location")
        parent = config
        for step in location[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and data.draw(st.booleans(), label="delete"):
            del parent[location[-1]]
        else:
            parent[location[-1]] = data.draw(SMALL_VALUES, label="value")
    return config


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_mutated_sequence_configs_are_converted_or_refused(sequence_files, tmp_path_factory, data):
    """Any value of a sequence model's config changed (in a Keras 3 `.h5` and in a Keras 2 `.json` + weights):
    the conversion succeeds or raises a ToolError, never another exception."""
    from errors import ToolError

    flavour = data.draw(st.sampled_from(FLAVOURS), label="flavour")
    name = data.draw(st.sampled_from(FUZZED), label="model")
    folder, work = sequence_files[flavour], tmp_path_factory.mktemp("fuzz")
    if flavour == "keras3":
        source, weights = work / "m.h5", None
        shutil.copy(folder / f"{name}.h5", source)
        with h5py.File(source, "r+") as f:
            f.attrs["model_config"] = json.dumps(_mutated(json.loads(f.attrs["model_config"]), data))
    else:
        source, weights = work / "m.json", folder / f"{name}.weights.h5"
        source.write_text(json.dumps(_mutated(json.loads((folder / f"{name}.json").read_text()), data)))
    try:
        from conversion.converter import build_conversion
        from conversion.model_file import read_model_file

        build_conversion(read_model_file(source, weights_path=weights), None)
    except ToolError:
        pass


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _external_link(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["layers/elsewhere"] = h5py.ExternalLink("/etc/hostname", "/")


def _deep_json(path: Path) -> None:
    path.write_text("[" * 5000 + "]" * 5000)


# (which file is damaged, how, a fragment of the refusal, extra environment)
HOSTILE = {
    "json_fifo": ("json", _fifo, "not a regular", {}),
    "weights_fifo": ("weights", _fifo, "not a regular", {}),
    "json_missing": ("json", Path.unlink, "no such file", {}),
    "weights_missing": ("weights", Path.unlink, "no such file", {}),
    "json_array": ("json", lambda p: p.write_text("[1, 2]"), "not a Keras model description", {}),
    "json_nested_deep": ("json", _deep_json, "nested too deeply", {}),
    "json_over_size_limit": ("json", lambda p: None, "more than the limit", {"NEURON_TCN_MAX_JSON_BYTES": "100"}),
    "weights_not_hdf5": ("weights", lambda p: p.write_bytes(os.urandom(4096)), "not an HDF5 file", {}),
    "weights_external_link": ("weights", _external_link, "not stored in the file itself", {}),
    "weights_is_a_full_model": ("weights", None, "holds no Keras weights", {}),
    "json_integer_of_5000_digits": (
        "json",
        lambda p: p.write_text('{"config": ' + "7" * 5000 + "}"),
        "not valid JSON",
        {},
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_json_route_refuses_hostile_files(sequence_files, tmp_path, case):
    """Each damaged or hostile file of the pair: exit 8, one message naming that file, nothing written."""
    which, damage, fragment, env = HOSTILE[case]
    folder = sequence_files["keras3"]
    model_json, weights = tmp_path / "model.json", tmp_path / "model.weights.h5"
    shutil.copy(folder / "lstm_stack.json", model_json)
    shutil.copy(folder / ("lstm_stack.h5" if damage is None else "lstm_stack.weights.h5"), weights)
    target = model_json if which == "json" else weights
    if damage is not None:
        damage(target)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(["model_converter.py", str(model_json), str(weights), str(out / "m.pth")], env_extra=env)
    message = " ".join(result.stderr.split())
    assert result.returncode == ConversionError.exit_code, message
    assert fragment in message and target.name in message, message
    assert not list(out.iterdir())


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name", ["embedding_mask", "bidirectional_states", "tcn_bidirectional", "seq2seq_initial_state"]
)
def test_sequence_models_run_on_each_device(parity, sequence_files, tmp_path, device, name):
    """The loaded module on every device this machine has (CUDA where present) computes Keras's outputs."""
    folder = sequence_files["keras3"]
    inputs, expected = saved(folder, name)
    convert(parity, folder / f"{name}.keras", None, tmp_path / "m.pth")
    from model_converter import load_converted_model

    model = load_converted_model(tmp_path / "m.pth", device=device)
    with torch.no_grad():
        got = model(*[torch.from_numpy(a).to(device) for a in inputs])
    for have, want in zip(got if isinstance(got, tuple) else (got,), expected):
        assert float(np.max(np.abs(have.cpu().numpy() - want))) <= parity.tolerance


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_json_route_through_the_api(parity, sequence_files, tmp_path, flavour):
    folder = sequence_files[flavour]
    inputs, expected = saved(folder, "bidirectional_merge_modes")
    with parity.tensorflow_blocked():
        from model_converter import TCNModelConverter

        converter = TCNModelConverter(
            folder / "bidirectional_merge_modes.json", weights_path=folder / "bidirectional_merge_modes.weights.h5"
        )
        model = converter.convert(tmp_path / "m.pth")
    for have, want in zip(parity.run_torch(model, inputs), expected):
        assert float(np.max(np.abs(have - want))) <= parity.tolerance
    assert model.metadata["weights_path"].endswith("bidirectional_merge_modes.weights.h5")


def test_an_output_no_layer_returns_is_refused(parity, sequence_files, tmp_path):
    """A config naming a state the layer does not return (a forged or inconsistent file) is a refusal."""
    folder = sequence_files["keras3"]
    config = json.loads((folder / "recurrent_states.json").read_text())
    config["config"]["output_layers"][1][2] = 7  # the LSTM's tensor 7: it returns 3
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="not among the tensors the layers return"):
        convert(parity, forged, folder / "recurrent_states.weights.h5", tmp_path / "out.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forged.json"]


def test_json_route_reads_the_weights_file_by_content(parity, sequence_files, tmp_path):
    """The weights file may have any name: `.bin`, `.hdf5` or none are read by what they hold."""
    folder = sequence_files["keras2"]
    inputs, expected = saved(folder, "embedding_rnn")
    for name in ("weights.bin", "weights.hdf5", "weights"):
        shutil.copy(folder / "embedding_rnn_weights.h5", tmp_path / name)
        result = run_cli(
            ["model_converter.py", str(folder / "embedding_rnn.json"), str(tmp_path / name), str(tmp_path / "m.pth")]
        )
        assert result.returncode == 0, result.stderr
        with parity.tensorflow_blocked():
            from model_converter import load_converted_model

            got = parity.run_torch(load_converted_model(tmp_path / "m.pth", device="cpu"), inputs)
        assert float(np.max(np.abs(got[0] - expected[0]))) <= parity.tolerance


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_nested_model_is_refused_for_its_class_alone(parity, sequence_files, tmp_path, flavour):
    """The refusal names the unknown class, not also the model output that the nested model's call numbering
    leaves unmatched."""
    with pytest.raises(ConversionError) as refusal:
        convert(parity, sequence_files[flavour] / "nested_model_output.h5", None, tmp_path / "m.pth")
    assert "unknown layer class" in str(refusal.value) and "produced by no layer" not in str(refusal.value)


def _converted_models(flavour: str) -> list[str]:
    return [name for name in model_names(flavour) if not MODELS[name].refused]


def _layer_entries(config: dict):
    """(top-level layer name, entry) of every layer of a to_json() config, the layers wrapped in
    TimeDistributed and Bidirectional included."""
    for entry in config["config"]["layers"]:
        outer = entry.get("name") or entry["config"]["name"]
        yield outer, entry
        for key in ("layer", "backward_layer"):
            if isinstance(entry["config"].get(key), dict):
                yield outer, entry["config"][key]


def _convert_mutated(folder: Path, name: str, tmp_path: Path, mutate):
    """Build the conversion of `name`'s to_json() config after `mutate(config)`, with its weights file."""
    from conversion.converter import build_conversion
    from conversion.model_file import read_model_file

    config = json.loads((folder / f"{name}.json").read_text())
    mutate(config)
    source = tmp_path / f"{name}.json"
    source.write_text(json.dumps(config))
    return build_conversion(read_model_file(source, weights_path=folder / f"{name}.weights.h5"), None)


POLICY_FORMS = {  # a dtype policy as Keras 3 and Keras 2 write it, and as a bare name
    "DTypePolicy": lambda policy: {"module": "keras", "class_name": "DTypePolicy", "config": {"name": policy}},
    "Policy": lambda policy: {"class_name": "Policy", "config": {"name": policy}},
    "name": lambda policy: policy,
}
SIXTEEN_BIT_POLICIES = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_layer_under_a_16_bit_policy_is_refused(sequence_files, tmp_path, flavour):
    """Each layer of each model (wrapped layers too) in turn under a 16-bit policy, in each way Keras writes one:
    refused, naming the layer and the policy. Under float32 and float64 policies every layer converts."""
    folder, cases = sequence_files[flavour], 0
    for name in _converted_models(flavour):
        config = json.loads((folder / f"{name}.json").read_text())
        for position, (outer, entry) in enumerate(list(_layer_entries(config))):
            if entry["class_name"] in ("InputLayer", "NotEqual"):  # NotEqual: Keras 3's mask op, left out
                continue
            form = list(POLICY_FORMS)[cases % len(POLICY_FORMS)]
            policy = SIXTEEN_BIT_POLICIES[cases % len(SIXTEEN_BIT_POLICIES)]
            cases += 1

            def sixteen_bit(config, position=position, form=form, policy=policy):
                list(_layer_entries(config))[position][1]["config"]["dtype"] = POLICY_FORMS[form](policy)

            with pytest.raises(ConversionError) as refusal:
                _convert_mutated(folder, name, tmp_path, sixteen_bit)
            message = " ".join(str(refusal.value).split())
            assert f"under the dtype policy '{policy}'" in message and f"'{outer}'" in message, (name, message)

        def exact(config):
            for index, (_, entry) in enumerate(_layer_entries(config)):
                if entry["class_name"] != "InputLayer":
                    form = list(POLICY_FORMS)[index % len(POLICY_FORMS)]
                    entry["config"]["dtype"] = POLICY_FORMS[form](("float32", "float64", "float", "double")[index % 4])

        _convert_mutated(folder, name, tmp_path, exact)
    assert cases > 100, f"only {cases} layers tried"


def _dtype_of(class_name: str, dtype):
    """A mutation: every layer of `class_name` (wrapped ones too) with `dtype` in its config."""

    def mutate(config):
        for _, entry in _layer_entries(config):
            if entry["class_name"] == class_name:
                entry["config"]["dtype"] = dtype

    return mutate


@pytest.mark.parametrize("policy", ["_infer", "int8_from_float32", "int32"])
def test_a_policy_neither_float32_nor_16_bit_is_refused_as_such(sequence_files, tmp_path, policy):
    with pytest.raises(ConversionError, match=f"policy '{policy}', which this converter does not reproduce"):
        _convert_mutated(
            sequence_files["keras2"], "lstm_stack", tmp_path, _dtype_of("LSTM", POLICY_FORMS["Policy"](policy))
        )


CHECKED_OPTIONS = {"Embedding", "RepeatVector", "TimeDistributed", "Bidirectional", "LSTM", "GRU", "SimpleRNN"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_option_the_converter_does_not_know_is_refused(sequence_files, tmp_path, flavour):
    """An option added to any sequence layer's config (wrapped layers and keras-tcn's TCN too) is refused,
    naming the option and the layer: whether it changes the output cannot be told."""
    folder, cases = sequence_files[flavour], 0
    for name in _converted_models(flavour):
        config = json.loads((folder / f"{name}.json").read_text())
        for position, (outer, entry) in enumerate(list(_layer_entries(config))):
            if entry["class_name"].rsplit(">", 1)[-1] not in CHECKED_OPTIONS | {"TCN"}:
                continue
            cases += 1

            def add_option(config, position=position):
                list(_layer_entries(config))[position][1]["config"]["new_option"] = True

            with pytest.raises(ConversionError) as refusal:
                _convert_mutated(folder, name, tmp_path, add_option)
            message = " ".join(str(refusal.value).split())
            assert "new_option unknown to this converter" in message and f"'{outer}'" in message, (name, message)
    assert cases > 30, f"only {cases} layers tried"


@pytest.mark.parametrize("dtype", ["bool", "string", "complex64"])
def test_an_input_declared_neither_integer_nor_float_is_refused(sequence_files, tmp_path, dtype):
    for name in ("embedding_rnn", "lstm_stack"):
        with pytest.raises(ConversionError, match=f"is declared as '{dtype}': only integer and floating-point"):
            _convert_mutated(sequence_files["keras3"], name, tmp_path, _dtype_of("InputLayer", dtype))


@pytest.mark.parametrize("alias, dtype", [("float", None), ("double", None), ("half", "float16"), ("int", "int64")])
def test_an_input_dtype_alias_is_read_as_keras_reads_it(sequence_files, tmp_path, alias, dtype):
    """`float`, `double`, `half`, `int`: the names Keras also takes for float32, float64, float16 and int64."""
    conversion = _convert_mutated(sequence_files["keras3"], "lstm_stack", tmp_path, _dtype_of("InputLayer", alias))
    assert conversion.model.spec["inputs"][0].get("dtype") == dtype


def test_fractional_tokens_are_masked_by_the_declared_input_dtype(parity, sequence_files, tmp_path):
    """Fractional ids given to an int32 Input are truncated before the mask is taken, as Keras casts them:
    the module records the dtype; given to a float32 Input they are masked as given, and no cast is recorded.
    Either model with the other's cast computes otherwise than Keras."""
    folder = sequence_files["keras3"]
    for dtype in ("int32", "float32"):
        name = f"fractional_tokens_{dtype}_input"
        inputs, expected = saved(folder, name)
        assert 0 < float(inputs[0][:, 0].min()) and float(inputs[0][:, 0].max()) < 1, "padding is fractional"
        model = convert(parity, folder / f"{name}.keras", None, tmp_path / f"{dtype}.pth").model
        assert model.spec["inputs"][0].get("dtype") == (dtype if dtype == "int32" else None)
        assert float(np.max(np.abs(parity.run_torch(model, inputs)[0] - expected[0]))) <= parity.tolerance
        flipped = copy.deepcopy(model.spec)  # the other cast: the outputs are not Keras's
        if dtype == "int32":
            del flipped["inputs"][0]["dtype"]
        else:
            flipped["inputs"][0]["dtype"] = "int32"
        other = with_spec(model, flipped)
        assert float(np.max(np.abs(parity.run_torch(other, inputs)[0] - expected[0]))) > 100 * parity.tolerance


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_float16_input_rounds_what_it_is_given(parity, sequence_files, tmp_path, flavour):
    """A float16 Input rounds float32 values to 16 bits in Keras; the module does, and without that rounding
    it would differ from Keras beyond the tolerance."""
    inputs, expected = saved(sequence_files[flavour], "float16_input")
    model = convert(parity, sequence_files[flavour] / "float16_input.h5", None, tmp_path / "m.pth").model
    assert model.spec["inputs"][0]["dtype"] == "float16"
    assert float(np.max(np.abs(parity.run_torch(model, inputs)[0] - expected[0]))) <= parity.tolerance
    unrounded = copy.deepcopy(model.spec)
    del unrounded["inputs"][0]["dtype"]
    other = with_spec(model, unrounded)
    assert float(np.max(np.abs(parity.run_torch(other, inputs)[0] - expected[0]))) > 10 * parity.tolerance


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_integer_inputs_take_what_their_dtype_holds(parity, sequence_files, tmp_path, flavour):
    """int8, uint8 and int64 Inputs: reals are truncated as Keras casts them, tensors of any dtype are taken
    (cast to the layers' float32); a value the declared dtype cannot hold (Keras's cast would wrap it) or NaN
    is an error naming the input."""
    inputs, expected = saved(sequence_files[flavour], "integer_inputs")
    model = convert(parity, sequence_files[flavour] / "integer_inputs.h5", None, tmp_path / "m.pth").model
    assert [entry["dtype"] for entry in model.spec["inputs"]] == ["int8", "uint8", "int64"]
    for tensors in (
        [torch.from_numpy(a) for a in inputs],
        [torch.from_numpy(a).double() for a in inputs],
        [torch.from_numpy(a).trunc().long() for a in inputs],
    ):
        with torch.no_grad():
            got = model(*tensors).numpy()
        assert float(np.max(np.abs(got - expected[0]))) <= parity.tolerance, tensors[0].dtype
    for index, (low, high) in enumerate([(-128, 127), (0, 255), (-(2**63), 2**63 - 1)]):
        for bad in (2.0 * low - 1.5, 2.0 * high + 1.5, float("nan")):
            tensors = [torch.from_numpy(a).double() for a in inputs]
            tensors[index][0, 1, 2] = bad
            with pytest.raises(ValueError, match=f"input '{model.input_names[index]}' is declared"):
                model(*tensors)


def test_a_module_takes_inputs_of_any_dtype(parity, sequence_files, tmp_path):
    """float64, float16 and integer tensors given to a float32 Input are cast to the layers' dtype, as Keras
    layers cast their inputs."""
    inputs, expected = saved(sequence_files["keras3"], "lstm_stack")
    model = convert(parity, sequence_files["keras3"] / "lstm_stack.keras", None, tmp_path / "m.pth").model
    with torch.no_grad():
        for dtype, bound in ((torch.float64, parity.tolerance), (torch.float16, 0.05)):
            got = model(torch.from_numpy(inputs[0]).to(dtype))
            assert got.dtype == torch.float32
            assert float(np.max(np.abs(got.numpy() - expected[0]))) <= bound, dtype
        whole = torch.from_numpy(inputs[0]).round()
        assert torch.equal(model(whole.long()), model(whole))


@pytest.mark.parametrize("name", ["Model.JSON", "model_arch.txt", "architecture", "bom.cfg"])
def test_an_architecture_is_recognized_by_its_content(parity, sequence_files, tmp_path, name):
    """to_json() text under any name (a byte-order mark and blank lines before it included) converts; a text
    file that is not JSON, with a weights file after it, is a usage error naming the weights file."""
    folder = sequence_files["keras3"]
    inputs, expected = saved(folder, "embedding_mask")
    text = (folder / "embedding_mask.json").read_bytes()
    (tmp_path / name).write_bytes((b"\xef\xbb\xbf\n\n" if name == "bom.cfg" else b"") + text)
    weights = str(folder / "embedding_mask.weights.h5")
    result = run_cli(["model_converter.py", str(tmp_path / name), weights, str(tmp_path / "m.pth")])
    assert result.returncode == 0, result.stderr
    with parity.tensorflow_blocked():
        from model_converter import load_converted_model

        got = parity.run_torch(load_converted_model(tmp_path / "m.pth", device="cpu"), inputs)
    assert float(np.max(np.abs(got[0] - expected[0]))) <= parity.tolerance
    (tmp_path / "notes.txt").write_text("lr 0.001, 40 epochs\n")
    usage = run_cli(["model_converter.py", str(tmp_path / "notes.txt"), weights])
    assert usage.returncode == 2 and "goes only with a model.to_json() architecture" in usage.stderr, usage.stderr


@pytest.mark.parametrize("kind", ["fifo", "missing", "link_loop"])
def test_an_unreadable_architecture_with_weights_is_reported_as_unreadable(sequence_files, tmp_path, kind):
    """Named neither .json nor anything else, a FIFO, a missing file or a symlink loop given with a weights
    file: exit 8 naming the file and what it is, not a usage error about the weights argument."""
    source = tmp_path / "architecture"
    if kind == "fifo":
        os.mkfifo(source)
    elif kind == "link_loop":
        source.symlink_to(source)
    weights = sequence_files["keras3"] / "lstm_stack.weights.h5"
    result = run_cli(["model_converter.py", str(source), str(weights), str(tmp_path / "m.pth")])
    message = " ".join(result.stderr.split())
    assert result.returncode == ConversionError.exit_code and str(source) in message, message
    fragment = {"fifo": "not a regular", "missing": "no such file", "link_loop": "symbolic links"}[kind]
    assert fragment in message, message
    assert not (tmp_path / "m.pth").exists()

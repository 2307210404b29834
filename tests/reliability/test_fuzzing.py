"""Property-based tests (hypothesis, bounded and derandomized for CI): damaged model files and arbitrary
configurations end in one of our own errors (ToolError subclasses) or a valid result — never in any other
exception."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conversion.converter import build_conversion
from conversion.model_file import read_model_file
from errors import ToolError
from pipeline.config import AppConfig, load_config

BOUNDED = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Small JSON-like values: numbers stay small so that a mutated layer size cannot ask for gigabytes.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def fuzz_folder(keras_files, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copy(keras_files / "tcn.h5", folder / "original.h5")
    return folder


def outcome(call) -> str:
    """'ok' or 'refused'; any exception that is not a ToolError fails the test with its traceback."""
    try:
        call()
    except ToolError:
        event("refused")
        return "refused"
    event("ok")
    return "ok"


@BOUNDED
@given(data=st.data())
def test_damaged_bytes_are_read_or_refused(fuzz_folder, data):
    """Byte flips and truncations of a real Keras 3 `.h5`: the reader returns a model or a ConversionError."""
    original = (fuzz_folder / "original.h5").read_bytes()
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 24), label="flips")):
        position = data.draw(st.integers(0, len(original) - 1), label="position")
        damaged[position] ^= data.draw(st.integers(1, 255), label="xor")
    cut = data.draw(st.none() | st.integers(0, len(original)), label="truncate at")
    path = fuzz_folder / "damaged.h5"
    path.write_bytes(bytes(damaged[:cut]))
    outcome(lambda: read_model_file(path))


def _paths(node, prefix=()):
    """Every location in a JSON tree, as key/index tuples."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _at(node, path):
    for step in path:
        node = node[step]
    return node


def _replace(node, path, value):
    """`node` with the value at `path` replaced (the root itself when `path` is empty)."""
    if not path:
        return value
    _at(node, path[:-1])[path[-1]] = value
    return node


@BOUNDED
@given(data=st.data())
def test_mutated_model_config_is_converted_or_refused(fuzz_folder, data):
    """Values anywhere in the model_config replaced (or keys removed), Keras version and layer names changed:
    the whole conversion (reader, graph, layer converters, trace) succeeds or raises a ToolError."""
    path = fuzz_folder / "mutated.h5"
    shutil.copy(fuzz_folder / "original.h5", path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            location = data.draw(st.sampled_from(list(_paths(config))), label="location")
            if location and isinstance(_at(config, location[:-1]), dict) and data.draw(st.booleans(), label="delete"):
                del _at(config, location[:-1])[location[-1]]
            else:
                config = _replace(config, location, data.draw(JSON_VALUES, label="value"))
        f.attrs["model_config"] = json.dumps(config)
        if data.draw(st.booleans(), label="mutate attrs"):
            printable = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")  # what HDF5 can store
            f.attrs["keras_version"] = data.draw(st.text(printable, max_size=8), label="keras_version")
            group = f["model_weights"]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]
            group.attrs["layer_names"] = data.draw(
                st.permutations(names).map(lambda p: p[: len(p) - 1]) | st.just(names + ["ghost"]), label="layer_names"
            )
    outcome(lambda: build_conversion(read_model_file(path), None))


def _config_keys(model, prefix=()) -> list[tuple[str, ...]]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        keys.append((*prefix, name))
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys.extend(_config_keys(annotation, (*prefix, name)))
    return keys


CONFIG_KEYS = _config_keys(AppConfig)
KEY_PATHS = st.sampled_from(CONFIG_KEYS) | st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3).map(tuple)


@BOUNDED
@given(
    assignments=st.lists(st.tuples(KEY_PATHS, JSON_VALUES), max_size=6),
    overrides=st.lists(st.tuples(KEY_PATHS, st.text(max_size=12)), max_size=2),
)
def test_config_loader_accepts_or_names_the_problem(tmp_path_factory, assignments, overrides):
    """Real and made-up keys with values of any type, in the file and as KEY=VALUE overrides."""
    data: dict = {}
    for key_path, value in assignments:
        node = data
        for part in key_path[:-1]:
            child = node.setdefault(part, {})
            node = child if isinstance(child, dict) else {}
        node[key_path[-1]] = value
    path = tmp_path_factory.mktemp("config_fuzz") / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    outcome(lambda: load_config(path, [f"{'.'.join(k)}={v}" for k, v in overrides]))


@BOUNDED
@given(content=st.text(max_size=200).map(str.encode) | st.binary(max_size=200))
def test_config_loader_on_arbitrary_text(tmp_path_factory, content):
    """Any text, and bytes that are not UTF-8."""
    path = tmp_path_factory.mktemp("config_text") / "config.yaml"
    path.write_bytes(content)
    outcome(lambda: load_config(path))


# ---- sizes, aliases and nesting that inputs declare -----------------------------------------------------------


@BOUNDED
@given(anchors=st.integers(1, 6), fan_out=st.integers(1, 12), where=st.sampled_from(["seed", "sweep", "top"]))
def test_yaml_with_aliases_is_refused(tmp_path_factory, anchors, fan_out, where):
    """Chains of anchors and aliases (the "billion laughs" family): refused, never expanded."""
    lines = ["x0: &x0 [0]"] + [
        f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * fan_out) + "]" for i in range(1, anchors + 1)
    ]
    target = {
        "seed": f"seed: *x{anchors}",
        "sweep": f"sweep:\n  overrides: {{seed: *x{anchors}}}",
        "top": f"models_dir: *x{anchors}",
    }[where]
    path = tmp_path_factory.mktemp("yaml_alias") / "config.yaml"
    path.write_text("\n".join(lines) + "\n" + target + "\n")
    with pytest.raises(ToolError, match="YAML alias"):
        load_config(path)


# A pickle opcode that declares a length: BINBYTES8 / BINUNICODE8 / BYTEARRAY8 (protocol 5 framing aside).
LENGTH_OPCODES = [b"\x8e", b"\x8d", b"\x96"]


@BOUNDED
@given(
    opcode=st.sampled_from(LENGTH_OPCODES),
    declared=st.integers(0, 2**62),
    body=st.binary(max_size=64),
    constructor=st.sampled_from(["bytearray", "bytes", "ndarray", "none"]),
    size=st.integers(0, 2**40),
)
def test_pickles_that_declare_sizes_are_read_or_refused_without_allocating(
    tmp_path_factory, opcode, declared, body, constructor, size
):
    """Declared lengths far beyond the file, and constructors asked for up to a terabyte: a value or a
    PickleFileError, quickly (the limits hold the allocation, not the machine's memory)."""
    import pickle

    import numpy as np

    from safe_pickle import load_pickle
    from tests.reliability.hostile import _Reduce

    folder = tmp_path_factory.mktemp("pickle_sizes")
    raw = b"\x80\x05" + opcode + declared.to_bytes(8, "little") + body + b"."
    built = {
        "bytearray": _Reduce(bytearray, (size,)),
        "bytes": _Reduce(bytes, (size,)),
        "ndarray": _Reduce(np.ndarray, ((size,),)),
        "none": None,
    }[constructor]
    for name, content in (("raw.pickle", raw), ("built.pickle", pickle.dumps(built, protocol=2))):
        (folder / name).write_bytes(content)
        outcome(lambda: load_pickle(folder / name))  # noqa: B023 (runs at once)


@BOUNDED
@given(depth=st.integers(1, 20_000), kind=st.sampled_from(["[", '{"a":']))
def test_nested_json_is_parsed_or_refused(depth, kind):
    """Configs nested from 1 to 20,000 levels: parsed when a Keras config could be that deep, else refused."""
    from conversion.json_config import parse_config_json

    closing = "]" if kind == "[" else "}"
    text = kind * depth + "0" * (kind != "[") + closing * depth
    assert outcome(lambda: parse_config_json(text, "fuzzed config")) == ("ok" if depth <= 200 else "refused")

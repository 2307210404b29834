"""Read Keras 3 `.keras` archives with zipfile + h5py, and the numbered-variable weight layout they share with
Keras 3 `.weights.h5` files.

An archive is a zip of `config.json` (the model config), `metadata.json` (Keras version) and
`model.weights.h5`. In that weights file a layer's variables are datasets `layers/<group>/vars/0..n`, where
`<group>` is the layer's class in snake case with a per-class counter in the model's layer order
(`conv1d`, `conv1d_1`, ...), not the layer's name; recent Keras versions also store the layer name as a
`name` attribute of `vars`, which decides where present. Variables are numbered trainable first, then non-trainable,
each in creation order, so their Keras names (kernel, bias, gamma, ...) follow from the layer class and config.
The result is the same KerasModelFile as the `.h5` reader's: weights named `<layer>/<variable>`.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from conversion.json_config import parse_config_json
from conversion.keras_file import (
    ItemProblem,
    KerasModelFile,
    WeightReader,
    check_self_contained,
    file_sha256,
    read_text,
)
from conversion.registry import bare_class_name
from errors import ConversionError, listed
from fileio import read_zip_member, regular_file_size
from limits import MAX_JSON_BYTES, MAX_MEMBER_BYTES, Limit, check_stored_size

ARCHIVE_CONFIG = "config.json"
ARCHIVE_METADATA = "metadata.json"
ARCHIVE_WEIGHTS = "model.weights.h5"


def _conv_or_dense(config: dict[str, Any]) -> list[str]:
    return ["kernel", "bias"] if config.get("use_bias", True) else ["kernel"]


def _batch_norm(config: dict[str, Any]) -> list[str]:
    affine = (["gamma"] if config.get("scale", True) else []) + (["beta"] if config.get("center", True) else [])
    return affine + ["moving_mean", "moving_variance"]


def _layer_norm(config: dict[str, Any]) -> list[str]:
    rms = config.get("rms_scaling", False)
    return (["gamma"] if config.get("scale", True) or rms else []) + (
        ["beta"] if config.get("center", True) and not rms else []
    )


def _recurrent_cell(config: dict[str, Any]) -> list[str]:
    return ["kernel", "recurrent_kernel"] + (["bias"] if config.get("use_bias", True) else [])


# Keras 3 variable order of the layer classes that have variables; other known classes have none.
VARIABLE_ORDER: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "Conv1D": _conv_or_dense,
    "Convolution1D": _conv_or_dense,
    "Dense": _conv_or_dense,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "PReLU": lambda config: ["alpha"],
    "Embedding": lambda config: ["embeddings"],
    "LSTMCell": _recurrent_cell,
    "GRUCell": _recurrent_cell,
    "SimpleRNNCell": _recurrent_cell,
}
Sublayer = tuple[str, dict[str, Any]]  # (class name, config)


def _wrapped(config: dict[str, Any], key: str) -> Sublayer | None:
    entry = config.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("class_name"), str) and isinstance(entry.get("config"), dict):
        return entry["class_name"], entry["config"]
    return None


def known_sublayers(class_name: str, config: dict[str, Any]) -> dict[str, Sublayer]:
    """The sublayers whose class the config tells, by the group Keras 3 stores them in: a recurrent layer's
    `cell`, TimeDistributed's `layer`, Bidirectional's `forward_layer` and `backward_layer`."""
    bare = bare_class_name(class_name)
    if not isinstance(config, dict):
        return {}
    if bare in ("LSTM", "GRU", "SimpleRNN"):
        return {"cell": (f"{bare}Cell", config)}
    found = {}
    if bare == "TimeDistributed":
        found["layer"] = _wrapped(config, "layer")
    elif bare == "Bidirectional":
        found["forward_layer"] = _wrapped(config, "layer")
        found["backward_layer"] = _wrapped(config, "backward_layer") or found["forward_layer"]
    return {key: sublayer for key, sublayer in found.items() if sublayer is not None}


def group_base_name(class_name: str) -> str:
    """The snake-case group name Keras derives from a layer class: `Conv1D` → `conv1d`, `PReLU` → `p_re_lu`."""
    name = re.sub(r"\W+", "", bare_class_name(class_name))
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


CLASS_OF_GROUP = {group_base_name(class_name): class_name for class_name in VARIABLE_ORDER}


def variable_names(class_name: str, config: dict[str, Any], count: int) -> list[str]:
    """Keras names of a layer's `count` numbered variables; their indices (`0`, `1`, ...) for classes whose
    order is not known here (custom layers: their converter takes the weights by index)."""
    order = VARIABLE_ORDER.get(bare_class_name(class_name))
    return order(config) if order is not None else [str(i) for i in range(count)]


def _numbered(group: h5py.Group, reader: WeightReader) -> list[np.ndarray]:
    """The datasets `0..n-1` of a `vars` group, in numeric order; anything else is an error."""
    keys = list(group.keys())
    if sorted(keys, key=lambda k: (len(k), k)) != [str(i) for i in range(len(keys))]:
        raise ValueError(f"variables are not numbered 0..{len(keys) - 1}: {sorted(keys)}")
    return [reader.read(group[str(i)], f"{group.name}/{i}") for i in range(len(keys))]


def _sublayer_variable_names(key: str, values: list[np.ndarray]) -> list[str]:
    """Keras names of a sublayer's variables. Its class is known where Keras named the group after it (items
    of a layer list: `batch_normalization_1`); a group named after an attribute (`conv1D_0`) holding a
    kernel and a bias, or a kernel alone, is a convolution or dense layer. Otherwise the indices."""
    class_name = CLASS_OF_GROUP.get(re.sub(r"_\d+$", "", key))
    if class_name is not None and len(VARIABLE_ORDER[class_name]({})) == len(values):
        return VARIABLE_ORDER[class_name]({})
    ranks = [value.ndim for value in values]
    if ranks in ([2, 1], [3, 1]):
        return ["kernel", "bias"]
    if ranks in ([2], [3]):
        return ["kernel"]
    return [str(i) for i in range(len(values))]


def _nested_weights(
    group: h5py.Group, reader: WeightReader, class_name: str, config: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Variables of sublayers (keras-tcn's residual blocks, a recurrent layer's cell, a wrapped layer), named as
    the `.h5` format names them: the path of the sublayers' names (`residual_block_1/batch_normalization_3/gamma`,
    `forward_lstm/lstm_cell/kernel`); list containers add nothing to the path. A sublayer without a stored name
    is named by its group. Where the config tells a sublayer's class, its variables are named by it."""
    found: dict[str, np.ndarray] = {}

    def walk(parent: h5py.Group, path: list[str], sublayers: dict[str, Sublayer]) -> None:
        for key in parent:
            child = parent[key]
            if key == "vars" or not isinstance(child, h5py.Group):
                continue
            is_layer = "vars" in child
            child_path = path + [stored_layer_name(child) or key] if is_layer else path
            known = sublayers.get(key)
            if is_layer:
                values = _numbered(child["vars"], reader)
                names = _sublayer_variable_names(key, values)
                if known is not None and bare_class_name(known[0]) in VARIABLE_ORDER:
                    names = variable_names(known[0], known[1], len(values))
                if len(names) != len(values):
                    raise ValueError(f"{key} holds {len(values)} variable(s), its config implies {len(names)}")
                for var, value in zip(names, values):
                    name = "/".join(child_path + [var])
                    if name in found:
                        raise ValueError(f"two sublayers store a variable named {name}")
                    found[name] = value
            walk(child, child_path, known_sublayers(*known) if known is not None else {})

    walk(group, [], known_sublayers(class_name, config))
    return found


def stored_layer_name(group: h5py.Group) -> str | None:
    """The layer name a Keras 3 weights group records (its `vars` group's `name` attribute), if any."""
    return read_text(group["vars"], "name") if "vars" in group else None


def _has_data(group: h5py.Group) -> bool:
    datasets: list[str] = []
    group.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
    return bool(datasets)


def assign_layer_groups(layers_root: h5py.Group, layers: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """Map each (layer name, class name), given in the model's layer order, to its group under `layers/`.

    A group whose `name` attribute is a layer's name belongs to that layer; otherwise the class's counter in
    layer order decides, unless that group is named for another layer. Returns the mapping and the problems
    (groups holding weights that no layer takes).
    """
    named = {}
    for key in layers_root:
        stored = stored_layer_name(layers_root[key])
        if stored is not None:
            named[stored] = key
    counters: dict[str, int] = {}
    mapping: dict[str, str] = {}
    for layer_name, class_name in layers:
        base = group_base_name(class_name)
        counters[base] = counters.get(base, -1) + 1
        by_order = base if counters[base] == 0 else f"{base}_{counters[base]}"
        if layer_name in named:
            mapping[layer_name] = named[layer_name]
        elif by_order in layers_root and stored_layer_name(layers_root[by_order]) in (None, layer_name):
            mapping[layer_name] = by_order
    used = set(mapping.values())
    problems = [
        f"group 'layers/{key}' holds weights that belong to no layer of the config"
        for key in sorted(layers_root)
        if key not in used and _has_data(layers_root[key])
    ]
    return mapping, problems


def read_numbered_weights(
    source: Path, root: h5py.Group, layers: list[tuple[str, str, dict[str, Any]]], reader: WeightReader
) -> dict[str, dict[str, np.ndarray]]:
    """Weights `{layer name: {"<layer>/<variable>": array}}` of (name, class, config) layers from a Keras 3
    weights file; every mismatch is collected into one ConversionError naming `source`."""
    if "layers" not in root:
        raise ConversionError(f"{source}: the weights file has no 'layers' group; it is not a Keras 3 weights file.")
    layers_root = root["layers"]
    mapping, problems = assign_layer_groups(layers_root, [(name, cls) for name, cls, _ in layers])
    weights: dict[str, dict[str, np.ndarray]] = {}
    for name, class_name, config in layers:
        if name not in mapping:
            weights[name] = {}
            continue
        group = layers_root[mapping[name]]
        try:
            values = _numbered(group["vars"], reader) if "vars" in group else []
            nested = _nested_weights(group, reader, class_name, config)
        except ValueError as exc:
            problems.append(f"layer '{name}' ({class_name}): layers/{mapping[name]}: {exc}")
            continue
        expected = variable_names(class_name, config, len(values))
        if len(values) != len(expected):
            problems.append(
                f"layer '{name}' ({class_name}): layers/{mapping[name]}/vars holds {len(values)} "
                f"variable(s), the config implies {len(expected)} ({', '.join(expected) or 'none'})"
            )
            continue
        weights[name] = {f"{name}/{var}": value for var, value in zip(expected, values)}
        weights[name].update({f"{name}/{path}": value for path, value in nested.items()})
    if problems:
        raise ConversionError(
            f"{source}: the weights do not fit the model config: "
            + listed(problems, separator="; ")
            + ". Nothing was written."
        )
    return weights


def config_layers(model_config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, class name, config) of every layer of a Keras 3 model config, in the model's layer order."""
    entries = model_config["config"]["layers"]
    return [
        (entry.get("name") or entry["config"]["name"], entry["class_name"], entry.get("config", {}))
        for entry in entries
    ]


def _read_member(path: Path, archive: zipfile.ZipFile, member: str, limit: Limit) -> bytes:
    """A member's bytes, read only when its declared size is within `limit` and within the compression ratio of
    what it stores, and then in bounded chunks that stop at what it declares (fileio.read_zip_member); a lying,
    damaged, encrypted or unsupported-compression member is a ConversionError."""
    info = archive.getinfo(member)
    subject = f"{path}: member {member} of the Keras archive"
    limit.check(info.file_size, subject, ConversionError, "bytes")
    check_stored_size(info.file_size, info.compress_size, subject, ConversionError)
    return read_zip_member(archive, info, limit, subject, ConversionError)


def _json_object(path: Path, member: str, text: bytes) -> dict[str, Any]:
    """A member's JSON, which Keras always writes as an object."""
    value = parse_config_json(text, f"{path}: {member} in the Keras archive")
    if not isinstance(value, dict):
        raise ConversionError(
            f"{path}: {member} in the Keras archive holds a JSON {type(value).__name__}, not an object."
        )
    return value


def read_keras_archive(path: str | Path) -> KerasModelFile:
    """Parse a Keras 3 `.keras` archive; every failure is a ConversionError naming the file and the item."""
    path = Path(path)
    regular_file_size(path, ConversionError, "Keras archive")
    if not zipfile.is_zipfile(path):
        raise ConversionError(
            f"{path}: not a Keras archive: a .keras file is a zip archive, this file is not "
            "(truncated, or of another format)."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            missing = [m for m in (ARCHIVE_CONFIG, ARCHIVE_WEIGHTS) if m not in members]
            if missing:
                raise ConversionError(
                    f"{path}: the Keras archive lacks {' and '.join(missing)} "
                    f"(it holds: {listed(sorted(members)) or 'nothing'})."
                )
            config_text = _read_member(path, archive, ARCHIVE_CONFIG, MAX_JSON_BYTES)
            metadata_text = (
                _read_member(path, archive, ARCHIVE_METADATA, MAX_JSON_BYTES) if ARCHIVE_METADATA in members else b"{}"
            )
            weights_bytes = _read_member(path, archive, ARCHIVE_WEIGHTS, MAX_MEMBER_BYTES)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ConversionError(f"{path}: the Keras archive cannot be read ({type(exc).__name__}: {exc}).") from exc
    model_config = _json_object(path, ARCHIVE_CONFIG, config_text)
    metadata = _json_object(path, ARCHIVE_METADATA, metadata_text)
    try:
        layers = config_layers(model_config)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConversionError(
            f"{path}: {ARCHIVE_CONFIG} is not a Keras model config with a layer list ({type(exc).__name__}: {exc})."
        ) from exc
    try:
        with h5py.File(io.BytesIO(weights_bytes), "r") as weights_file:
            check_self_contained(path, weights_file)
            weights = read_numbered_weights(path, weights_file, layers, WeightReader(path, len(weights_bytes)))
    except ItemProblem as exc:
        raise ConversionError(f"{path}: {ARCHIVE_WEIGHTS} in the archive: {exc}. Nothing was written.") from None
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ConversionError(
            f"{path}: {ARCHIVE_WEIGHTS} in the archive cannot be read as HDF5 weights ({type(exc).__name__}: {exc})."
        ) from exc
    return KerasModelFile(
        path=path,
        sha256=file_sha256(path),
        keras_version=str(metadata.get("keras_version") or "3.x"),
        backend=str(metadata.get("backend") or "unknown"),
        model_config=model_config,
        weights=weights,
    )

"""Weights-only files (`model.save_weights`) + the params pickle's `architecture_dict` → a KerasModelFile.

The file holds weights but no architecture; the Beniaguev-style `architecture_dict` (fit_CNN.py of
SelfishGene/neuron_as_deep_net) describes the network: per layer a causal Conv1D with its activation, then a
BatchNormalization; then three 1×1 Conv1D heads `spikes` (sigmoid), `somatic` and `dendritic` (linear).
The input channels and head sizes are read from the weight shapes, the layer names from the file; every
weight's shape is checked against the architecture before a model config is built from it.

Two layouts are read: Keras 2 / tf.keras (`layer_names` at the root, one group per layer name) and Keras 3
`.weights.h5` (numbered variables in class-named groups, see conversion.keras_archive).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from conversion.families.common import single
from conversion.keras_archive import group_base_name, read_numbered_weights, stored_layer_name
from conversion.keras_file import (
    ItemProblem,
    KerasModelFile,
    WeightReader,
    check_self_contained,
    file_sha256,
    read_layer_groups,
    read_names,
    read_text,
)
from conversion.registry import LayerProblem, shape_text
from errors import ConversionError, listed

REQUIRED_KEYS = (
    "filter_sizes_per_layer",
    "num_filters_per_layer",
    "activation_function_per_layer",
    "strides_per_layer",
    "dilation_rates_per_layer",
    "input_window_size",
)
PER_LAYER_KEYS = REQUIRED_KEYS[:-1]
HEADS = (("spikes", "sigmoid"), ("somatic", "linear"), ("dendritic", "linear"))
LEAKY_RELU_SLOPE = 0.25  # fit_CNN.py's 'lrelu': a lambda around LeakyReLU(0.25)
BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")
KERAS3_VERSION = "3.x"  # Keras 3 weights files record no version


@dataclass
class Architecture:
    """The per-layer lists of an architecture_dict, checked for presence and equal lengths."""

    filters: list[int]
    kernel_sizes: list[int]
    activations: list[str]
    strides: list[int]
    dilations: list[int]
    window: int

    @property
    def depth(self) -> int:
        return len(self.filters)


@dataclass
class StoredLayer:
    """One layer of the weights file with weights: its name and its weights by Keras variable name."""

    name: str
    weights: dict[str, np.ndarray]


def parse_architecture(path: Path, params: dict[str, Any] | None) -> Architecture:
    if not params or not isinstance(params.get("architecture_dict"), dict):
        raise ConversionError(
            f"{path}: a weights-only file (saved with save_weights: no 'model_config') needs the architecture: "
            "give the training parameters pickle holding 'architecture_dict' (python model_converter.py "
            f"{path.name} PARAMS.pickle). Nothing was written."
        )
    arch = params["architecture_dict"]
    missing = [key for key in REQUIRED_KEYS if key not in arch]
    if missing:
        raise ConversionError(
            f"{path}: the params pickle's architecture_dict lacks {', '.join(missing)}, needed "
            "to rebuild the model of a weights-only file. Nothing was written."
        )
    try:
        lists = {key: list(arch[key]) for key in PER_LAYER_KEYS}
        window = int(arch["input_window_size"])
        lengths = {key: len(value) for key, value in lists.items()}
        if len(set(lengths.values())) != 1 or not lengths["num_filters_per_layer"]:
            raise ValueError(f"per-layer lists of different or zero lengths: {lengths}")
        return Architecture(
            filters=[int(v) for v in lists["num_filters_per_layer"]],
            kernel_sizes=[single(v, "filter size") for v in lists["filter_sizes_per_layer"]],
            activations=[str(v) for v in lists["activation_function_per_layer"]],
            strides=[single(v, "stride") for v in lists["strides_per_layer"]],
            dilations=[single(v, "dilation rate") for v in lists["dilation_rates_per_layer"]],
            window=window,
        )
    except (TypeError, ValueError, LayerProblem) as exc:
        raise ConversionError(
            f"{path}: the params pickle's architecture_dict is not usable ({exc}). Nothing was written."
        ) from exc


# ------------------------------------------------------------------------------------------------
# The two file layouts → the layers with weights, in model order (hidden convs and BNs, then the heads)
# ------------------------------------------------------------------------------------------------


def _keras2_layers(path: Path, f: h5py.File) -> tuple[list[StoredLayer], str | None]:
    """Layers with weights in `layer_names` order; the input layer's name (the first, weightless entry)."""
    weights, unlisted = read_layer_groups(f, WeightReader(path, path.stat().st_size))
    if unlisted:
        raise ConversionError(
            f"{path}: datasets not listed in their layer's weight_names: {unlisted}. Nothing was written."
        )
    names = list(weights)
    input_name = names[0] if names and not weights[names[0]] else None
    stored = []
    for name, values in weights.items():
        if values:
            stored.append(StoredLayer(name, {key.rsplit("/", 1)[-1]: value for key, value in values.items()}))
    return stored, input_name


def _keras3_groups(f: h5py.File, base: str) -> list[str]:
    """Groups `base`, `base_1`, `base_2`, ... under `layers/`, in counter order."""
    keys = [
        key for key in f["layers"] if key == base or (key.startswith(base + "_") and key[len(base) + 1 :].isdigit())
    ]
    return sorted(keys, key=lambda key: 0 if key == base else int(key[len(base) + 1 :]))


def _keras3_layers(path: Path, f: h5py.File, depth: int) -> tuple[list[StoredLayer], str | None]:
    """Conv1D and BatchNormalization groups in counter order, interleaved as the model runs them (a conv and
    its BN per layer, then the heads). Names come from the groups' `name` attributes, else fit_CNN.py's."""
    convs = _keras3_groups(f, group_base_name("Conv1D"))
    norms = _keras3_groups(f, group_base_name("BatchNormalization"))
    layers_root = f["layers"]
    default_conv_names = [f"layer_{i + 1}" for i in range(depth)] + [head for head, _ in HEADS]
    conv_names = [
        stored_layer_name(layers_root[key]) or (default_conv_names[i] if i < len(default_conv_names) else key)
        for i, key in enumerate(convs)
    ]
    norm_names = [stored_layer_name(layers_root[key]) or f"layer_{i + 1}_BN" for i, key in enumerate(norms)]
    if len(convs) != depth + len(HEADS) or len(norms) != depth:
        raise ConversionError(
            f"{path}: the weights file holds {len(convs)} Conv1D and {len(norms)} "
            f"BatchNormalization layers, the architecture_dict (depth {depth}) implies "
            f"{depth + len(HEADS)} and {depth}. Nothing was written."
        )
    layers: list[tuple[str, str, dict[str, Any]]] = [(name, "Conv1D", {}) for name in conv_names]
    layers += [(name, "BatchNormalization", {}) for name in norm_names]
    weights = read_numbered_weights(path, f, layers, WeightReader(path, path.stat().st_size))
    order = [name for pair in zip(conv_names, norm_names) for name in pair] + conv_names[depth:]
    stored = [
        StoredLayer(name, {key.rsplit("/", 1)[-1]: value for key, value in weights[name].items()}) for name in order
    ]
    inputs = _keras3_groups(f, group_base_name("InputLayer"))
    return stored, (stored_layer_name(layers_root[inputs[0]]) if inputs else None)


# ------------------------------------------------------------------------------------------------
# Checking the stored layers against the architecture
# ------------------------------------------------------------------------------------------------


def _expect(path: Path, layer: StoredLayer, role: str, shapes: dict[str, tuple[int | None, ...]]) -> None:
    if set(layer.weights) != set(shapes):
        raise ConversionError(
            f"{path}: layer '{layer.name}' should be {role} with weights "
            f"{', '.join(shapes)}, but holds {', '.join(layer.weights) or 'none'}. "
            "The weights file does not fit the architecture_dict. Nothing was written."
        )
    for var, shape in shapes.items():
        have = layer.weights[var].shape
        if len(have) != len(shape) or any(s is not None and s != h for s, h in zip(shape, have)):
            raise ConversionError(
                f"{path}: weight '{layer.name}/{var}' has shape {tuple(have)}, the "
                f"architecture_dict implies {shape_text(shape)} ({role}). Nothing was written."
            )


def _match(path: Path, arch: Architecture, stored: list[StoredLayer]) -> tuple[list[StoredLayer], list[StoredLayer]]:
    """Split the stored layers into the hidden (conv, BN) pairs and the three heads; check every shape."""
    expected = 2 * arch.depth + len(HEADS)
    if len(stored) != expected:
        raise ConversionError(
            f"{path}: the weights file holds {len(stored)} layers with weights, the "
            f"architecture_dict (depth {arch.depth}: a Conv1D and a BatchNormalization per "
            f"layer, then {len(HEADS)} heads) implies {expected}: "
            f"{listed(layer.name for layer in stored)}. Nothing was written."
        )
    hidden, heads = stored[: 2 * arch.depth], stored[2 * arch.depth :]
    channels = None
    for i in range(arch.depth):
        conv, norm = hidden[2 * i], hidden[2 * i + 1]
        filters = arch.filters[i]
        _expect(
            path,
            conv,
            f"Conv1D layer {i + 1}",
            {"kernel": (arch.kernel_sizes[i], channels, filters), "bias": (filters,)},
        )
        _expect(path, norm, f"BatchNormalization of layer {i + 1}", {var: (filters,) for var in BN_VARIABLES})
        channels = filters
    heads = _order_heads(heads)
    for (role, _), head in zip(HEADS, heads):
        _expect(
            path,
            head,
            f"the {role} head",
            {"kernel": (1, channels, 1 if role != "dendritic" else None), "bias": (None,)},
        )
    return hidden, heads


def _order_heads(heads: list[StoredLayer]) -> list[StoredLayer]:
    """Heads named spikes/somatic/dendritic are taken by name, otherwise in the file's order."""
    by_name = {head.name: head for head in heads}
    names = [role for role, _ in HEADS]
    return [by_name[name] for name in names] if set(by_name) == set(names) else heads


# ------------------------------------------------------------------------------------------------
# The model config
# ------------------------------------------------------------------------------------------------


def _layer(class_name: str, config: dict[str, Any], source: str | None) -> dict[str, Any]:
    """A layer entry in the Keras 2 config style, which the graph parser, tf_keras and Keras 3 all read."""
    return {
        "class_name": class_name,
        "config": config,
        "name": config["name"],
        "inbound_nodes": [] if source is None else [[[source, 0, 0, {}]]],
    }


def _conv(name: str, filters: int, kernel: int, stride: int, dilation: int, activation: str) -> dict[str, Any]:
    return {
        "name": name,
        "trainable": True,
        "dtype": "float32",
        "filters": filters,
        "kernel_size": [kernel],
        "strides": [stride],
        "padding": "causal",
        "data_format": "channels_last",
        "dilation_rate": [dilation],
        "groups": 1,
        "activation": activation,
        "use_bias": True,
    }


def build_model_config(
    arch: Architecture,
    input_name: str,
    channels: int,
    hidden: list[StoredLayer],
    heads: list[StoredLayer],
    keras_major: int,
) -> dict[str, Any]:
    """The Functional config fit_CNN.py would have saved (LeakyReLU's slope under the file's Keras name)."""
    layers = [
        _layer(
            "InputLayer",
            {
                "name": input_name,
                "batch_input_shape": [None, arch.window, channels],
                "dtype": "float32",
                "sparse": False,
                "ragged": False,
            },
            None,
        )
    ]
    current = input_name
    for i in range(arch.depth):
        conv, norm = hidden[2 * i].name, hidden[2 * i + 1].name
        activation = arch.activations[i]
        lrelu = activation == "lrelu"
        layers.append(
            _layer(
                "Conv1D",
                _conv(
                    conv,
                    arch.filters[i],
                    arch.kernel_sizes[i],
                    arch.strides[i],
                    arch.dilations[i],
                    "linear" if lrelu else activation,
                ),
                current,
            )
        )
        current = conv
        if lrelu:
            slope_key = "negative_slope" if keras_major >= 3 else "alpha"
            layers.append(
                _layer(
                    "LeakyReLU",
                    {"name": f"{conv}_lrelu", "trainable": True, "dtype": "float32", slope_key: LEAKY_RELU_SLOPE},
                    current,
                )
            )
            current = f"{conv}_lrelu"
        layers.append(
            _layer(
                "BatchNormalization",
                {
                    "name": norm,
                    "trainable": True,
                    "dtype": "float32",
                    "axis": -1,
                    "momentum": 0.99,
                    "epsilon": 0.001,
                    "center": True,
                    "scale": True,
                },
                current,
            )
        )
        current = norm
    for (_, activation), head in zip(HEADS, heads):
        units = head.weights["kernel"].shape[-1]
        layers.append(_layer("Conv1D", _conv(head.name, units, 1, 1, 1, activation), current))
    return {
        "class_name": "Functional",
        "config": {
            "name": "model",
            "trainable": True,
            "layers": layers,
            "input_layers": [[input_name, 0, 0]],
            "output_layers": [[head.name, 0, 0] for head in heads],
        },
    }


def read_weights_only(path: str | Path, params: dict[str, Any] | None) -> KerasModelFile:
    """Parse a `save_weights` file (Keras 2 `.h5` or Keras 3 `.weights.h5`) with the params' architecture_dict."""
    path = Path(path)
    arch = parse_architecture(path, params)
    try:
        with h5py.File(path, "r") as f:
            check_self_contained(path, f)
            if read_names(f, "layer_names") is not None:
                keras_major = 2
                keras_version = read_text(f, "keras_version") or "2.x"
                backend = read_text(f, "backend") or "unknown"
                stored, input_name = _keras2_layers(path, f)
            elif "layers" in f:
                keras_major, keras_version, backend = 3, KERAS3_VERSION, "unknown"
                stored, input_name = _keras3_layers(path, f, arch.depth)
            else:
                raise ConversionError(
                    f"{path}: an HDF5 file with neither a Keras model nor Keras weights "
                    "(no 'model_config', 'layer_names' or 'layers'). Nothing was written."
                )
    except ItemProblem as exc:
        raise ConversionError(f"{path}: {exc}. Nothing was written.") from None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ConversionError(
            f"{path}: cannot be read as a Keras weights file ({type(exc).__name__}: {exc}). Nothing was written."
        ) from exc
    hidden, heads = _match(path, arch, stored)
    channels = int(hidden[0].weights["kernel"].shape[1])
    model_config = build_model_config(arch, input_name or "input_layer", channels, hidden, heads, keras_major)
    weights = {
        layer.name: {f"{layer.name}/{var}": value for var, value in layer.weights.items()} for layer in hidden + heads
    }
    return KerasModelFile(
        path=path,
        sha256=file_sha256(path),
        keras_version=keras_version,
        backend=backend,
        model_config=model_config,
        weights=weights,
        weights_only=True,
    )

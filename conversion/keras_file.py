"""Read a Keras `.h5` model file with h5py alone: the model config, the Keras version and every weight by name.

Handles files written by Keras 2 (standalone and tf.keras: `layer/kernel:0` names, `training_config`,
`optimizer_weights`) and Keras 3 (names without `:0`, `top_level_model_weights`). Attributes may be bytes or str;
long lists may be split into numbered attributes (`layer_names0`, `layer_names1`, ...).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from errors import ConversionError


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_attr(obj: h5py.HLObject, name: str) -> Any:
    """An attribute as str / list of str, joining Keras's numbered chunks (`name0`, `name1`, ...)."""
    if name in obj.attrs:
        value = obj.attrs[name]
    else:
        chunks, index = [], 0
        while f"{name}{index}" in obj.attrs:
            chunks.extend(obj.attrs[f"{name}{index}"])
            index += 1
        if not index:
            return None
        value = chunks
    if isinstance(value, (bytes, str)):
        return _text(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _text(value.item())
    return [_text(v) for v in value]


def normalize_weight_name(name: str) -> str:
    """`layer_1/kernel:0` → `layer_1/kernel`: the Keras 2 suffix carries no information."""
    return name[:-2] if name.endswith(":0") else name


@dataclass
class KerasModelFile:
    path: Path
    sha256: str
    keras_version: str
    backend: str
    model_config: dict[str, Any]
    # layer name -> {normalized weight name: array}, in the file's order
    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # layer name -> datasets stored in its group but missing from its `weight_names`
    unlisted: dict[str, list[str]] = field(default_factory=dict)
    # True for `save_weights` files: model_config was built from the params pickle's architecture_dict
    weights_only: bool = False
    # layer name -> how its activation, stored as a Python function, was resolved (conversion.lambdas)
    resolved_activations: dict[str, Any] = field(default_factory=dict)

    @property
    def keras_major(self) -> int:
        try:
            return int(self.keras_version.split(".")[0])
        except ValueError:
            return 2


def read_keras_h5(path: str | Path) -> KerasModelFile:
    """Parse a full-model `.h5`; every failure is a ConversionError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file.")
    try:
        with h5py.File(path, "r") as f:
            return _read_open_file(path, f)
    except ConversionError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:  # h5py's errors on damaged files
        raise ConversionError(f"{path}: cannot be read as a Keras HDF5 model file ({type(exc).__name__}: {exc}). "
                              "The file may be truncated, empty or of another format.") from exc


def _read_open_file(path: Path, f: h5py.File) -> KerasModelFile:
    config_text = read_attr(f, "model_config")
    if config_text is None:
        kind = ("a weights-only file (saved with save_weights): it has layer groups but no architecture"
                if read_attr(f, "layer_names") else "an HDF5 file without a Keras model")
        raise ConversionError(f"{path}: no 'model_config' attribute: this is {kind}. "
                              "Save the whole model with model.save(...).")
    try:
        model_config = json.loads(config_text)
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: the 'model_config' attribute is not valid JSON ({exc}).") from exc
    weights_root = f["model_weights"] if "model_weights" in f else None
    if weights_root is None:
        raise ConversionError(f"{path}: has a model_config but no 'model_weights' group; the file is incomplete.")
    keras_version = read_attr(f, "keras_version") or read_attr(weights_root, "keras_version") or "unknown"
    backend = read_attr(f, "backend") or read_attr(weights_root, "backend") or "unknown"
    weights, unlisted = read_layer_groups(weights_root)
    return KerasModelFile(path=path, sha256=file_sha256(path), keras_version=keras_version, backend=backend,
                          model_config=model_config, weights=weights, unlisted=unlisted)


def read_layer_groups(weights_root: h5py.Group) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[str]]]:
    """The Keras 2 / legacy layout (`layer_names`, one group per layer with `weight_names`): weights by layer
    name, and the datasets stored in a layer's group but not listed in its `weight_names`."""
    weights, unlisted = {}, {}
    for layer_name in read_attr(weights_root, "layer_names") or []:
        group = weights_root[layer_name]
        names = read_attr(group, "weight_names") or []
        weights[layer_name] = {normalize_weight_name(n): np.asarray(group[n]) for n in names}
        stored: list[str] = []
        group.visititems(lambda name, obj: stored.append(name) if isinstance(obj, h5py.Dataset) else None)
        extra = sorted(set(stored) - set(names))
        if extra:
            unlisted[layer_name] = extra
    return weights, unlisted

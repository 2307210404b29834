"""Read a Keras `.h5` model file with h5py alone: the model config, the Keras version and every weight by name.

Handles files written by Keras 2 (standalone and tf.keras: `layer/kernel:0` names, `training_config`,
`optimizer_weights`) and Keras 3 (names without `:0`, `top_level_model_weights`). Attributes may be bytes or str;
long lists may be split into numbered attributes (`layer_names0`, `layer_names1`, ...).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from conversion.json_config import parse_config_json
from errors import ConversionError
from fileio import regular_file_size
from limits import MAX_WEIGHT_BYTES, check_stored_size


def file_sha256(path: str | Path) -> str:
    """The sha256 of a regular file (a FIFO or device is refused, never opened)."""
    regular_file_size(path, ConversionError)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ConversionError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
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


def check_self_contained(path: Path, root: h5py.Group) -> None:
    """Only the file's own bytes may become weights: links to other files, datasets whose data lies in other
    files (external raw storage) and virtual datasets are refused before anything is read; soft links inside
    the file are followed as usual."""
    problems: list[str] = []

    def link(name: str, found: Any) -> None:
        if isinstance(found, h5py.ExternalLink):
            problems.append(f"'{name}' is a link into another file ({found.filename})")
        elif not isinstance(found, (h5py.HardLink, h5py.SoftLink)):
            problems.append(f"'{name}' is a {type(found).__name__}")

    def dataset(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            if item.external:
                problems.append(f"dataset '{name}' keeps its data in another file ({item.external[0][0]})")
            if item.is_virtual:
                problems.append(f"dataset '{name}' is a virtual dataset, made of data elsewhere")

    root.visititems_links(link)
    if not problems:  # visiting objects behind an external link would open the other file
        root.visititems(dataset)
    if problems:
        raise ConversionError(f"{path}: holds data that is not stored in the file itself: {'; '.join(problems)}. "
                              "Only the file's own bytes can become a model's weights. Nothing was written.")


class WeightReader:
    """Reads the weight datasets of one HDF5 file, each only after checking what it declares: a numeric type,
    data inside the file, a declared size within the compression ratio of what it stores, and all weights of
    the file within MAX_WEIGHT_BYTES (limits.py)."""

    def __init__(self, path: Path, file_bytes: int):
        self.path, self.file_bytes, self.total = path, file_bytes, 0

    def read(self, dataset: h5py.Dataset, name: str) -> np.ndarray:
        subject = f"{self.path}: weight '{name}'"
        if dataset.dtype.kind not in "fiub":
            raise ConversionError(f"{subject} is stored as {dataset.dtype}, not as real numbers. Nothing was written.")
        declared = math.prod(dataset.shape) * dataset.dtype.itemsize
        offset = dataset.id.get_offset()
        if offset is not None and offset + declared > self.file_bytes:
            raise ConversionError(f"{subject}: its data would lie beyond the end of the file ({self.file_bytes} "
                                  "bytes): the file is truncated or forged. Nothing was written.")
        check_stored_size(declared, dataset.id.get_storage_size(), subject, ConversionError)
        self.total += declared
        MAX_WEIGHT_BYTES.check(self.total, f"{self.path}: its weights", ConversionError, "bytes")
        return dataset[()]


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
    regular_file_size(path, ConversionError, "Keras model file")
    try:
        with h5py.File(path, "r") as f:
            check_self_contained(path, f)
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
    model_config = parse_config_json(config_text, f"{path}: the 'model_config' attribute")
    if not isinstance(model_config, dict):
        raise ConversionError(f"{path}: the 'model_config' attribute holds a JSON {type(model_config).__name__}, "
                              "not a model description.")
    weights_root = f["model_weights"] if "model_weights" in f else None
    if weights_root is None:
        raise ConversionError(f"{path}: has a model_config but no 'model_weights' group; the file is incomplete.")
    keras_version = read_attr(f, "keras_version") or read_attr(weights_root, "keras_version") or "unknown"
    backend = read_attr(f, "backend") or read_attr(weights_root, "backend") or "unknown"
    weights, unlisted = read_layer_groups(weights_root, WeightReader(path, path.stat().st_size))
    return KerasModelFile(path=path, sha256=file_sha256(path), keras_version=keras_version, backend=backend,
                          model_config=model_config, weights=weights, unlisted=unlisted)


def read_layer_groups(weights_root: h5py.Group, reader: WeightReader
                      ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[str]]]:
    """The Keras 2 / legacy layout (`layer_names`, one group per layer with `weight_names`): weights by layer
    name, and the datasets stored in a layer's group but not listed in its `weight_names`."""
    weights, unlisted = {}, {}
    for layer_name in read_attr(weights_root, "layer_names") or []:
        group = weights_root[layer_name]
        names = read_attr(group, "weight_names") or []
        weights[layer_name] = {normalize_weight_name(n): reader.read(group[n], f"{layer_name}/{n}") for n in names}
        stored: list[str] = []
        group.visititems(lambda name, obj: stored.append(name) if isinstance(obj, h5py.Dataset) else None)
        extra = sorted(set(stored) - set(names))
        if extra:
            unlisted[layer_name] = extra
    return weights, unlisted

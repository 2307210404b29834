"""A model as two files: the architecture as Keras's `model.to_json()` text and the weights of `save_weights`.

    Keras 2: `model.json` + `weights.h5`        (weights by layer name: `layer_names`, `weight_names`)
    Keras 3: `model.json` + `model.weights.h5`  (numbered variables under `layers/`, see conversion.keras_archive)

The weights file's layout decides how it is read; the JSON's `keras_version` (Keras 2) or `module` keys
(Keras 3) tell the Keras version. The result is the KerasModelFile every reader returns, with `weights_path`
and `weights_sha256` set: a conversion is current only for the same pair of files.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import h5py

from conversion.json_config import parse_config_json
from conversion.keras_archive import config_layers, read_numbered_weights
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
from errors import ConversionError
from fileio import regular_file_size
from limits import MAX_JSON_BYTES

JSON_SUFFIX = ".json"
KERAS3_VERSION = "3.x"  # Keras 3 writes no version into to_json() or .weights.h5 files


def is_model_description(path: Path) -> bool:
    """Whether `path` is to be read as model.to_json() text: named `.json` (in any case, so that a damaged one
    is reported as JSON), or a regular file that is neither HDF5 nor zip and starts with `{`. A FIFO or a
    folder is never opened here; the readers report it."""
    if path.suffix.lower() == JSON_SUFFIX:
        return True
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) or h5py.is_hdf5(path) or zipfile.is_zipfile(path):
            return False
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{")


def read_model_json(path: Path) -> dict[str, Any]:
    """The model description in a `to_json()` file, read only within MAX_JSON_BYTES."""
    size = regular_file_size(path, ConversionError, "Keras model description (JSON)")
    MAX_JSON_BYTES.check(size, f"{path}: the model description", ConversionError, "bytes")
    config = parse_config_json(path.read_bytes(), f"{path}: the model description")
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ConversionError(
            f"{path}: holds JSON that is not a Keras model description (model.to_json() writes an object "
            "with 'class_name' and 'config'). Nothing was written."
        )
    return config


def read_json_and_weights(path: str | Path, weights_path: str | Path | None) -> KerasModelFile:
    """The model of `path` (to_json() text) with the weights of `weights_path`; every failure names the file."""
    path = Path(path)
    if weights_path is None:
        raise ConversionError(
            f"{path}: a model description (model.to_json()) holds no weights: give its weights file too "
            "(model_converter.py model.json weights.h5). Nothing was written."
        )
    weights_path = Path(weights_path)
    model_config = read_model_json(path)
    try:
        layers = config_layers(model_config)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConversionError(
            f"{path}: is not a Keras model description with a layer list ({type(exc).__name__}: {exc}). "
            "Nothing was written."
        ) from exc
    keras3 = "module" in model_config or str(model_config.get("keras_version", "")).startswith("3")
    size = regular_file_size(weights_path, ConversionError, "Keras weights file")
    if not h5py.is_hdf5(weights_path):
        raise ConversionError(
            f"{weights_path}: not an HDF5 file: the weights of model.save_weights(...) are (.h5, .weights.h5). "
            "Nothing was written."
        )
    try:
        with h5py.File(weights_path, "r") as f:
            check_self_contained(weights_path, f)
            reader = WeightReader(weights_path, size)
            if read_names(f, "layer_names") is not None:
                weights, unlisted = read_layer_groups(f, reader)
            elif "layers" in f:
                weights, unlisted = read_numbered_weights(weights_path, f, layers, reader), {}
            else:
                raise ConversionError(
                    f"{weights_path}: holds no Keras weights (neither 'layer_names' nor a 'layers' group). "
                    "Nothing was written."
                )
            keras_version = str(model_config.get("keras_version") or read_text(f, "keras_version") or KERAS3_VERSION)
    except ConversionError:
        raise
    except ItemProblem as exc:
        raise ConversionError(f"{weights_path}: {exc}. Nothing was written.") from None
    except (OSError, KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise ConversionError(
            f"{weights_path}: cannot be read as the weights of {path.name} ({type(exc).__name__}: {exc}). "
            "Nothing was written."
        ) from exc
    if keras3 and keras_version.startswith("2"):
        keras_version = KERAS3_VERSION
    return KerasModelFile(
        path=path,
        sha256=file_sha256(path),
        keras_version=keras_version,
        backend=str(model_config.get("backend") or "unknown"),
        model_config=model_config,
        weights=weights,
        unlisted=unlisted,
        weights_path=weights_path,
        weights_sha256=file_sha256(weights_path),
    )

"""One entry point for every Keras input: the file's content picks the reader, except that a `.keras` name
always goes to the archive reader and a `.json` name (any case) to the JSON reader, so that a damaged file is
reported as what it is named.

    zip archive, or named `.keras`       → Keras 3 `.keras` archive (conversion.keras_archive)
    HDF5 with a `model_config`           → full-model `.h5`, Keras 2 or 3 (conversion.keras_file)
    HDF5 with weights but no config      → `save_weights` file + the params' architecture_dict
                                           (conversion.architecture_dict)
    text starting `{` (model.to_json())  → conversion.json_model, with its weights file
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import h5py

from conversion.architecture_dict import read_weights_only
from conversion.json_model import is_model_description, read_json_and_weights
from conversion.keras_archive import read_keras_archive
from conversion.keras_file import KerasModelFile, read_attr, read_keras_h5
from conversion.lambdas import resolve_stored_functions
from errors import ConversionError
from fileio import regular_file_size

ARCHIVE_SUFFIX = ".keras"


def _is_weights_only(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return read_attr(f, "model_config") is None and (read_attr(f, "layer_names") is not None or "layers" in f)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError):  # damaged: read_keras_h5 explains it
        return False


def read_model_file(
    path: str | Path,
    params: dict[str, Any] | None = None,
    params_path: str | Path | None = None,
    weights_path: str | Path | None = None,
) -> KerasModelFile:
    """The Keras model in `path` (with `params`' architecture_dict for weights-only files, and for activations
    stored as Python functions; with `weights_path` for a `.json` architecture) as a KerasModelFile; every
    failure is a ConversionError naming the file and the problem."""
    path = Path(path)
    regular_file_size(path, ConversionError, "Keras model file")
    description = is_model_description(path)
    if weights_path is not None and not description:
        raise ConversionError(
            f"{path}: a separate weights file ({weights_path}) goes with a model description from "
            "model.to_json() (a .json file), not with a model file. Nothing was written."
        )
    if description:
        keras_file = read_json_and_weights(path, weights_path)
    elif zipfile.is_zipfile(path) or path.suffix == ARCHIVE_SUFFIX:
        keras_file = read_keras_archive(path)
    elif h5py.is_hdf5(path) and _is_weights_only(path):
        return read_weights_only(path, params)
    else:
        keras_file = read_keras_h5(path)
    keras_file.resolved_activations = resolve_stored_functions(
        path, keras_file.model_config, keras_file.keras_major, params, params_path
    )
    return keras_file

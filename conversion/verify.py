"""Compare a converted model with the original Keras model on a realistic input (needs TensorFlow).

Neuron models get binary spike trains at a few percent density, other models standard normal noise.
A output passes when max |torch − keras| ≤ ATOL + RTOL · max |keras| (float32 rounding only).
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from conversion.keras_file import KerasModelFile
from conversion.record import OutputParity, Verification
from models.graph import KerasGraphModule

log = logging.getLogger(__name__)

ATOL = 1e-5
RTOL = 1e-5
SPIKE_DENSITY = 0.03
VERIFY_BATCH = 4


class KerasUnavailable(RuntimeError):
    """Keras cannot be used to check this file (not installed here, or it cannot load the file, e.g. one that
    needs a package Keras lacks): verification is skipped, and the caller says so."""


@dataclass
class KerasRebuild:
    """How Keras builds a model it cannot load from the file itself: a model config, the custom activations that
    config names (name -> LeakyReLU slope), then the file's weights loaded into it."""

    config: dict[str, Any]
    how: str  # said with the figures: the comparison is against this rebuild, not the file loaded by Keras
    leaky_relu: dict[str, float] = field(default_factory=dict)
    from_json: bool = False  # `config` is a whole to_json() description (any model class), else a Functional one


def keras_rebuild(keras_file: KerasModelFile) -> KerasRebuild | None:
    """None when Keras loads the file itself; else the config a weights-only file was given by its
    architecture_dict, or the file's config with each activation stored as a Python function replaced by the
    one the training record names (conversion.lambdas)."""
    if keras_file.weights_only:
        return KerasRebuild(
            keras_file.model_config,
            "a Keras model built from the architecture_dict, with the weights file loaded into it",
        )
    if keras_file.weights_path is not None and not keras_file.resolved_activations:
        return KerasRebuild(
            keras_file.model_config,
            f"the Keras model of {keras_file.path.name}, with {keras_file.weights_path.name} loaded into it",
            from_json=True,
        )
    if not keras_file.resolved_activations:
        return None
    config = copy.deepcopy(keras_file.model_config)
    custom: dict[str, float] = {}
    for entry in config["config"]["layers"]:
        resolved = keras_file.resolved_activations.get(entry.get("name") or entry["config"].get("name"))
        if resolved is None:
            continue
        entry["config"]["activation"] = resolved.recorded
        if isinstance(resolved.module, dict):
            custom[resolved.recorded] = float(resolved.module["negative_slope"])
            if keras_file.keras_major >= 3:  # how Keras 3 names a custom function (found in the custom objects)
                entry["config"]["activation"] = {
                    "module": "builtins",
                    "class_name": "function",
                    "config": resolved.recorded,
                    "registered_name": "function",
                }
    layers = ", ".join(keras_file.resolved_activations)
    return KerasRebuild(
        config,
        f"a Keras model rebuilt from the file's config with the activations of {layers} "
        "taken from the architecture_dict (Keras cannot load the file itself)",
        custom,
    )


def quiet_keras() -> bool:
    """TensorFlow's C++ and absl logging stay off unless the user or --verbose set TF_CPP_MIN_LOG_LEVEL."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"


@contextmanager
def _stderr_silenced(active: bool) -> Iterator[None]:
    """File descriptor 2 to /dev/null: TensorFlow's C++ side writes its start-up lines (absl, oneDNN) there
    before any Python setting can reach it."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _keras_module(keras_major: int) -> ModuleType:
    quiet = quiet_keras()
    if keras_major < 3:  # keras-tcn builds on tensorflow.keras: make that tf_keras for Keras 2 files
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    candidates = ["tf_keras", "keras"] if keras_major < 3 else ["keras"]
    for name in candidates:
        try:
            with _stderr_silenced(quiet):
                module = importlib.import_module(name)
                if quiet:
                    importlib.import_module("absl.logging").set_verbosity("error")
            return module
        except ImportError:
            continue
    raise KerasUnavailable("TensorFlow/Keras is not installed")


def _leaky_relu(keras: ModuleType, slope: float) -> Callable[[Any], Any]:
    if keras.__name__ == "keras" and int(keras.__version__.split(".")[0]) >= 3:
        return lambda x: keras.ops.leaky_relu(x, negative_slope=slope)
    import tensorflow as tf

    return lambda x: tf.nn.leaky_relu(x, alpha=slope)


def realistic_input(
    shapes: Sequence[tuple],
    length: int,
    neuron: bool,
    seed: int = 0,
    batch: int = VERIFY_BATCH,
    tokens: Sequence[int | None] = (),
) -> list[np.ndarray]:
    """Test inputs: binary spikes (neuron models) or standard normal noise; token indices drawn uniformly from
    [0, n) (as float32, which Keras and the module both take) for the inputs with `tokens[i] = n`."""
    rng = np.random.default_rng(seed)
    arrays = []
    for index, shape in enumerate(shapes):
        full = (batch, *[length if s is None else s for s in shape])
        count = tokens[index] if index < len(tokens) else None
        if count is not None:
            arrays.append(rng.integers(0, count, full).astype(np.float32))
        elif neuron:
            arrays.append((rng.random(full) < SPIKE_DENSITY).astype(np.float32))
        else:
            arrays.append(rng.standard_normal(full).astype(np.float32))
    return arrays


def input_kind(model: KerasGraphModule, neuron: bool) -> str:
    """How realistic_input fills the model's inputs, in words."""
    kind = f"binary spikes at {SPIKE_DENSITY:.0%} density" if neuron else "standard normal noise"
    if model.input_tokens and all(model.input_tokens):
        return "token indices drawn uniformly below each Embedding's input_dim"
    return kind + (" (token indices for the inputs of Embeddings)" if any(model.input_tokens) else "")


def _keras_tcn_classes() -> dict[str, Any]:
    """keras-tcn's TCN where installed: Keras needs the class to load a file that uses it."""
    try:
        from tcn import TCN
    except ImportError:
        return {}
    return {"TCN": TCN}


def load_keras_model(keras: ModuleType, path: str | Path, rebuild: KerasRebuild | None = None) -> Any:
    """The original Keras model; with `rebuild`, the file's weights loaded into the model built from its config."""
    try:
        if rebuild is None:
            return keras.models.load_model(str(path), compile=False, custom_objects=_keras_tcn_classes())
        custom = {name: _leaky_relu(keras, slope) for name, slope in rebuild.leaky_relu.items()}
        if rebuild.from_json:
            custom.update(_keras_tcn_classes())
        with keras.utils.custom_object_scope(custom):  # also for layers deserialized in Keras 3's native format
            keras_model = (
                keras.models.model_from_json(json.dumps(rebuild.config), custom_objects=custom)
                if rebuild.from_json
                else keras.Model.from_config(rebuild.config["config"], custom_objects=custom)
            )
        keras_model.load_weights(str(path))
        return keras_model
    except Exception as exc:  # Keras raises many types for files it cannot rebuild
        message = " ".join(str(exc).split())[:300]
        raise KerasUnavailable(
            f"{keras.__name__} {keras.__version__} cannot load {path} ({type(exc).__name__}: {message})"
        ) from exc


def is_neuron_model(model: torch.nn.Module, params: dict[str, Any] | None) -> bool:
    """A neuron model (a params pickle with an architecture_dict, or an output named `spikes`) is checked on
    binary spike trains, any other on standard normal noise."""
    return bool((params or {}).get("architecture_dict")) or "spikes" in getattr(model, "output_names", [])


def verify_model(
    keras_file: KerasModelFile,
    model: KerasGraphModule,
    params: dict[str, Any] | None,
    *,
    length: int,
    test_input: Sequence[np.ndarray] | np.ndarray | None = None,
) -> Verification:
    """Compare `model` with Keras on the already read `keras_file` (rebuilt by Keras where it cannot load the file
    itself); time axes of `length` steps. A neuron model (a params pickle, or an output named `spikes`) gets
    binary spikes, others standard normal noise. Without a usable Keras the result records why (`skipped`)."""
    try:
        return compare_with_keras(
            keras_file.weights_path or keras_file.path,
            model,
            keras_file.keras_major,
            length,
            is_neuron_model(model, params),
            test_input,
            keras_rebuild(keras_file),
        )
    except KerasUnavailable as exc:
        log.warning("verification skipped: %s", exc)
        return Verification(skipped=str(exc))


def compare_with_keras(
    path: str | Path,
    model: KerasGraphModule,
    keras_major: int,
    length: int,
    neuron: bool,
    test_input: Sequence[np.ndarray] | np.ndarray | None = None,
    rebuild: KerasRebuild | None = None,
) -> Verification:
    """`path`: a model file Keras loads (.h5, .keras), or one whose weights go into the `rebuild` model."""
    keras = _keras_module(keras_major)
    if test_input is None:
        inputs = realistic_input(model.input_shapes, length, neuron, tokens=model.input_tokens)
        described = input_kind(model, neuron)
    else:
        inputs = [
            np.asarray(a, dtype=np.float32)
            for a in (test_input if isinstance(test_input, (list, tuple)) else [test_input])
        ]
        described = "given by the caller"
    with _stderr_silenced(quiet_keras()):
        keras_model = load_keras_model(keras, path, rebuild)
        expected = keras_model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    with torch.no_grad():
        got = model(*[torch.from_numpy(a) for a in inputs])
    got = got if isinstance(got, tuple) else (got,)
    outputs = {}
    for name, want, have in zip(model.output_names, expected, got):
        want = np.asarray(want, dtype=np.float32)
        diff = np.abs(have.cpu().numpy() - want)
        largest = float(np.max(np.abs(want)))
        outputs[name] = OutputParity(
            max_abs_diff=float(diff.max()),
            mean_abs_diff=float(diff.mean()),
            max_abs_value=largest,
            passed=bool(diff.max() <= ATOL + RTOL * largest),
        )
    return Verification(
        outputs=outputs,
        keras=f"{keras.__name__} {keras.__version__}",
        keras_model=rebuild.how if rebuild else "loaded from the file",
        input=described,
        input_shapes=[list(a.shape) for a in inputs],
        tolerance=ATOL,
        rtol=RTOL,
    )

"""Orchestration: Keras file → graph → one converter per layer → KerasGraphModule → `.pth` + info pickle.

Nothing is guessed: weights are matched by name, every weight must be used and every parameter and buffer
filled; all problems found are reported together in one ConversionError, and nothing is written.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import conversion.families  # noqa: F401  (registers the layer converters)
from conversion import CONVERTER_VERSION
from conversion.graph import ModelGraph, parse_model_config
from conversion.keras_file import KerasModelFile
from conversion.model_file import read_model_file
from conversion.registry import KerasLayer, LayerProblem, WeightBag, find_converter
from errors import ConversionError, OutputError, ToolError
from fileio import atomic_paths, load_pickle
from limits import MAX_INPUT_LENGTH
from models.checkpoint import FORMAT_VERSION, checkpoint_payload, model_from_payload
from models.graph import KerasGraphModule

log = logging.getLogger(__name__)
DEFAULT_TRACE_LENGTH = 64
MAX_TRACE_ELEMENTS = 5e7  # per input of the shape trace: 200 MB of float32 (400 ms × 1279 segments is 5e5)


@dataclass
class Conversion:
    model: KerasGraphModule
    metadata: dict[str, Any]


def module_key(name: str, taken: set[str]) -> str:
    """A ModuleDict key from a Keras layer name (no dots or slashes), unique within the model."""
    key = re.sub(r"\W", "_", name) or "layer"
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def convert_keras_file(path: str | Path, params: dict[str, Any] | None = None,
                       params_path: str | Path | None = None) -> Conversion:
    keras_file = read_model_file(path, params, params_path)
    try:
        graph = parse_model_config(keras_file.model_config)
    except ConversionError as exc:
        raise ConversionError(f"{keras_file.path}: {exc}") from exc
    except Exception as exc:  # the config is untrusted data: any failure to read it is this refusal
        raise ConversionError(f"{keras_file.path}: the model_config is not a Keras model description we can "
                              f"read ({type(exc).__name__}: {exc}).") from exc
    return build_conversion(keras_file, graph, params)


def build_conversion(keras_file: KerasModelFile, graph: ModelGraph, params: dict[str, Any] | None) -> Conversion:
    problems: list[str] = list(graph.problems)
    non_finite: list[str] = []
    layer_specs, state, keys = [], {}, set()
    names_in_graph = {layer.name for layer in graph.layers}
    for layer in graph.layers:
        converter = find_converter(layer.class_name) if isinstance(layer.class_name, str) else None
        if converter is None:
            problems.append(f"layer '{layer.name}' ({layer.class_name}): unknown layer class, no converter "
                            "is registered for it")
            continue
        bag = WeightBag(layer.name, keras_file.weights.get(layer.name, {}))
        resolved = keras_file.resolved_activations.get(layer.name)
        try:
            converted = converter(KerasLayer(layer.name, layer.class_name, layer.config, bag, keras_file.keras_major,
                                             resolved.module if resolved is not None else None))
        except LayerProblem as exc:
            problems.append(f"layer '{layer.name}' ({layer.class_name}): {exc}")
            continue
        except Exception as exc:  # a converter reads an untrusted config: any failure is this layer's problem
            problems.append(f"layer '{layer.name}' ({layer.class_name}): unreadable config ({type(exc).__name__}: {exc})")
            continue
        if bag.non_finite:
            non_finite.append(f"'{layer.name}' (" + ", ".join(f"{name.rsplit('/', 1)[-1]}: {count}"
                                                           for name, count in bag.non_finite.items()) + ")")
        extra = bag.leftovers() + keras_file.unlisted.get(layer.name, [])
        if extra:
            problems.append(f"layer '{layer.name}' ({layer.class_name}): unexpected extra weight(s) {', '.join(extra)}")
        key = module_key(layer.name, keys)
        layer_specs.append({"name": layer.name, "key": key, "class_name": layer.class_name,
                            "type": converted.type, "config": converted.config})
        state.update({f"layers.{key}.{p}": torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                      for p, v in converted.params.items()})
    for stray in sorted(set(keras_file.weights) - names_in_graph):
        if keras_file.weights[stray]:
            problems.append(f"weights stored for '{stray}', which is not a layer of the model")
    produced = {output for _, _, output in graph.calls}
    problems += [f"model output '{output}' is produced by no layer call" for output in graph.outputs
                 if output not in produced]
    problems += [f"input '{name}' has shape {shape}: dimensions must be positive integers or null"
                 for name, shape in graph.inputs
                 if not all(size is None or (type(size) is int and size > 0) for size in shape)]
    if non_finite:
        raise ConversionError(
            f"{keras_file.path}: the weights are not finite: NaN/Inf values in layer(s) {', '.join(non_finite)}. "
            "A training run that diverged saves such weights; the model cannot be used (take a model saved "
            "before the divergence)" + (f"; also: {'; '.join(problems)}" if problems else "")
            + ". Nothing was written.")
    if problems:
        raise ConversionError(f"{keras_file.path}: cannot be converted exactly: " + "; ".join(problems)
                              + ". Nothing was written.")

    key_of = {spec["name"]: spec["key"] for spec in layer_specs}
    spec = {
        "inputs": [{"name": t.split(":")[0], "tensor": t, "shape": shape} for t, shape in graph.inputs],
        "layers": layer_specs,
        "calls": [{"layer": key_of[name], "inputs": refs, "output": out} for name, refs, out in graph.calls],
        "outputs": graph.outputs,
        "output_names": graph.output_names,
    }
    model = _build_module(keras_file, spec, state)
    trace_length = _trace_length(spec, params)
    _check_trace_size(keras_file, model, trace_length)
    layer_shapes = _trace(keras_file, model, trace_length)
    model.metadata = _metadata(keras_file, model, layer_specs, state, layer_shapes, trace_length, params)
    return Conversion(model=model, metadata=model.metadata)


def _build_module(keras_file: KerasModelFile, spec: dict[str, Any], state: dict[str, torch.Tensor]) -> KerasGraphModule:
    try:
        model = KerasGraphModule(spec)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # missing / unexpected keys, shape mismatches, configs no module accepts
        message = " ".join(str(exc).split())
        raise ConversionError(f"{keras_file.path}: the weights do not fit the layers they belong to: {message}. "
                              "Nothing was written.") from exc
    return model.eval()


def _trace_length(spec: dict[str, Any], params: dict[str, Any] | None) -> int:
    architecture = (params or {}).get("architecture_dict") or {}
    for inp in spec["inputs"]:
        if len(inp["shape"]) > 1 and inp["shape"][0] is not None:
            return int(inp["shape"][0])
    return int(architecture.get("input_window_size") or DEFAULT_TRACE_LENGTH)


def _check_trace_size(keras_file: KerasModelFile, model: KerasGraphModule, length: int) -> None:
    """The test input the trace allocates, checked first: a file may declare an input of 1e8 time steps."""
    for name, shape in zip(model.input_names, model.input_shapes):
        dims = [length if s is None else s for s in shape]
        MAX_INPUT_LENGTH.check(dims[0] if dims else 1, f"{keras_file.path}: input '{name}'", ConversionError,
                               " time steps")
        if math.prod(dims) > MAX_TRACE_ELEMENTS:
            raise ConversionError(f"{keras_file.path}: input '{name}' has shape {tuple(dims)}, "
                                  f"{math.prod(dims):.3g} values per sample, more than the {MAX_TRACE_ELEMENTS:.0e} "
                                  "a model input may have. Nothing was written.")


def _trace(keras_file: KerasModelFile, model: KerasGraphModule, length: int) -> dict[str, tuple[int, ...]]:
    """Run a zero input through the model once, to catch shape mismatches and record output shapes."""
    inputs = [torch.zeros(1, *[length if s is None else s for s in shape]) for shape in model.input_shapes]
    try:
        with torch.no_grad():
            return dict(model.trace(*inputs))
    except ValueError as exc:
        raise ConversionError(f"{keras_file.path}: shape mismatch: {exc}. Nothing was written.") from exc
    except Exception as exc:  # e.g. a layer called without inputs in the config
        raise ConversionError(f"{keras_file.path}: the layer graph cannot be run on a test input "
                              f"({type(exc).__name__}: {exc}). Nothing was written.") from exc


def _metadata(keras_file, model, layer_specs, state, layer_shapes, trace_length, params) -> dict[str, Any]:
    counts = {spec["key"]: sum(v.numel() for k, v in state.items() if k.startswith(f"layers.{spec['key']}."))
              for spec in layer_specs}
    outputs = [layer_shapes[next(c["layer"] for c in model.spec["calls"] if c["output"] == out)]
               for out in model.spec["outputs"]]
    architecture = (params or {}).get("architecture_dict")
    return {
        "converter_version": CONVERTER_VERSION,
        "format_version": FORMAT_VERSION,
        "source_path": str(keras_file.path.resolve()),
        "source_sha256": keras_file.sha256,
        "weights_only": keras_file.weights_only,  # the architecture came from the params pickle
        "keras_version": keras_file.keras_version,
        "backend": keras_file.backend,
        "model_class": keras_file.model_config.get("class_name"),
        "converted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float32",
        "inputs": [{"name": n, "shape": [None, *s]} for n, s in zip(model.input_names, model.input_shapes)],
        "outputs": [{"name": n, "shape": [None, *s[1:]]} for n, s in zip(model.output_names, outputs)],
        "shapes_traced_with_length": trace_length,
        "layers": [{"name": spec["name"], "class_name": spec["class_name"], "module": spec["type"],
                    "parameters": counts[spec["key"]], "output_shape": [None, *layer_shapes[spec["key"]][1:]],
                    "activation_source": ("architecture_dict" if spec["name"] in keras_file.resolved_activations
                                          else "file")}
                   for spec in layer_specs if spec["key"] in layer_shapes],
        # activations stored as Python functions, resolved from the training record (conversion.lambdas)
        "resolved_activations": [r.as_record() for r in keras_file.resolved_activations.values()],
        "architecture_dict": plain(architecture) if architecture is not None else None,
        "verification": None,
    }


def plain(value: Any) -> Any:
    """Numpy values, dtypes, sets and tuples as plain Python types, so that metadata loads with
    weights_only=True (a pickle's nesting depth is bounded when it is read: fileio.check_plain_structure)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.dtype, type, complex)):
        return str(value)
    return value


def info_path_for(pth_path: str | Path) -> Path:
    pth_path = Path(pth_path)
    return pth_path.with_name(pth_path.stem + "_info.pickle")


def _loads_back(data: bytes, source: Any) -> None:
    """A conversion is written only when load_converted_model can read it back: "converted" means loadable."""
    try:
        model_from_payload(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), "<new conversion>")
    except Exception as exc:  # the record holds a type weights_only refuses, or the spec does not rebuild
        raise ConversionError(f"{source}: the conversion cannot be loaded back ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:300]}), so it is not written. Nothing was written.") from exc


def info_record(metadata: dict[str, Any], pth_bytes: bytes) -> dict[str, Any]:
    """The info pickle: the `.pth`'s metadata and the sha256 of the `.pth` it belongs to."""
    return {**metadata, "pth_sha256": hashlib.sha256(pth_bytes).hexdigest()}


def write_conversion(conversion: Conversion, pth_path: str | Path) -> tuple[Path, Path]:
    """Write the `.pth` and its info pickle atomically (temporary names in the target folder, then rename).

    Serialized in memory first, so that a full disk is an OSError (an OutputError from atomic_paths), not
    torch.save's bare RuntimeError. The info pickle is renamed into place first and records the sha256 of
    its `.pth`, whose rename commits the pair: a kill in between leaves the old model beside an info pickle
    that names another `.pth` (sync_info repairs it when the model is next reused), never a new model beside
    old info.
    """
    pth_path = Path(pth_path)
    info_path = info_path_for(pth_path)
    payload = io.BytesIO()
    torch.save(checkpoint_payload(conversion.model, conversion.metadata), payload)
    data = payload.getvalue()
    _loads_back(data, conversion.metadata.get("source_path"))
    with atomic_paths(info_path, pth_path) as (info_tmp, pth_tmp):
        info_tmp.write_bytes(pickle.dumps(info_record(conversion.metadata, data), protocol=4))
        pth_tmp.write_bytes(data)
    return pth_path, info_path


def sync_info(pth_path: Path, metadata: dict[str, Any]) -> None:
    """Rewrite the info pickle of a reused `.pth` when it records another `.pth`'s sha256 (a conversion killed
    between its two renames); a folder that cannot be written keeps the old record, with a warning."""
    info_path = info_path_for(pth_path)
    try:
        recorded = load_pickle(info_path).get("pth_sha256") if info_path.is_file() else None
    except (ToolError, AttributeError):
        return  # not a record of ours: left alone
    data = pth_path.read_bytes()
    if recorded is None or recorded == hashlib.sha256(data).hexdigest():
        return
    try:
        with atomic_paths(info_path) as (info_tmp,):
            info_tmp.write_bytes(pickle.dumps(info_record(metadata, data), protocol=4))
        log.info("rewrote %s: it did not describe %s", info_path.name, pth_path.name)
    except OutputError as exc:
        log.warning("%s does not describe %s and cannot be rewritten: %s", info_path.name, pth_path.name, exc)

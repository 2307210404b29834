"""The conversion pipeline: Keras file → graph → one converter per layer → KerasGraphModule → verification →
rounding → `.pth` + info pickle, in `convert_model`, which the CLI, the TCNModelConverter facade, main.py and
folder conversion all call (through conversion.cache, which reuses current conversions).

Nothing is guessed: weights are matched by name, every weight must be used and every parameter and buffer
filled; all problems found are reported together in one ConversionError, and nothing is written.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import conversion.families  # noqa: F401  (registers the layer converters)
from conversion.config import ExportConfig
from conversion.export import ExportRefused, export_model
from conversion.graph import ModelGraph, parse_model_config
from conversion.keras_file import KerasModelFile, file_sha256
from conversion.masks import MaskPlan, plan_masks
from conversion.model_file import read_model_file
from conversion.output import write_conversion
from conversion.pairing import default_output_path, info_path_for
from conversion.record import ConversionRecord, ExportRecord, plain
from conversion.registry import (
    EXACT_COMPUTE_DTYPES,
    KerasLayer,
    LayerProblem,
    WeightBag,
    dtype_policy,
    find_converter,
    inexact_dtype_problem,
)
from conversion.verify import is_neuron_model, verify_model
from errors import ConversionError, listed
from fileio import outputs_apart_from_inputs, real_path
from limits import MAX_INPUT_LENGTH
from models.checkpoint import FORMAT_VERSION
from models.graph import CAST_DTYPES, KerasGraphModule, tensor_base
from models.layers import unusable_normalizations
from safe_pickle import load_pickle
from version import VERSION

log = logging.getLogger(__name__)
DEFAULT_TRACE_LENGTH = 64  # time steps of the shape trace when neither the file nor the pickle states a window
MAX_TRACE_ELEMENTS = 5e7  # per input of the shape trace: 200 MB of float32 (400 ms × 1279 segments is 5e5)


@dataclass
class Conversion:
    model: KerasGraphModule
    record: ConversionRecord


def read_params(path: str | Path | None, trust: bool = False) -> dict[str, Any] | None:
    """The training parameters pickle (architecture, history) as a dict; None without a path."""
    if path is None:
        return None
    params = load_pickle(path, trust=trust)
    if not isinstance(params, dict):
        raise ConversionError(
            f"{path}: the parameters pickle holds a {type(params).__name__}, expected a dict with 'architecture_dict'."
        )
    return params


def convert_model(
    source: str | Path,
    params_path: str | Path | None = None,
    output: str | Path | None = None,
    *,
    params: dict[str, Any] | None = None,
    verify: bool = False,
    export: ExportConfig | None = None,
    trust_pickles: bool = False,
    weights: str | Path | None = None,
) -> Conversion:
    """Convert `source` (with its params pickle; a `.json` architecture with its `weights` file) into `output`
    (default `<stem>_converted.pth`) and its info pickle.

    `verify` compares the float32 conversion with Keras on the file already read (a failed comparison refuses;
    no Keras here is recorded as skipped). An `export` other than float32 (half precision, int8, pruning) is
    made from the float32 conversion after that, its cost against it measured and recorded (conversion.export),
    and refused beyond `export.max_error`; the returned module holds the weights as loaded from the file.
    `params` may be given already read (from `params_path`).
    """
    source = Path(source)
    export = export or ExportConfig()
    output = Path(output) if output else default_output_path(source)
    outputs_apart_from_inputs([output, info_path_for(output)], [source, params_path, weights], ConversionError)
    params = read_params(params_path, trust_pickles) if params is None else params
    keras_file = read_model_file(source, params, params_path, weights)
    conversion = build_conversion(keras_file, params)
    record = conversion.record
    if verify:
        record.verification = verify_model(
            keras_file, conversion.model, params, length=record.shapes_traced_with_length
        )
        if record.verification.skipped is None and not record.verification.passed:
            worst = record.verification.worst()
            figures = f"output '{worst[0]}': max abs diff {worst[1]:.3g}" if worst is not None else "no output compared"
            raise ConversionError(
                f"{source}: the converted model differs from Keras beyond the tolerance ({figures}). "
                "Nothing was written."
            )
    record.params_pickle = str(params_path) if params_path else None
    record.params_sha256 = file_sha256(params_path) if params_path else None
    model = conversion.model
    packed: dict[str, dict[str, Any]] = {}
    if not export.exact:
        model, packed, record.export = exported_with_cost(source, conversion.model, export, record, params)
    record.dtype = export.dtype
    model.metadata = record.to_dict()
    write_conversion(model, output, packed)
    return Conversion(model=model, record=record)


def exported_with_cost(
    source: Path, model: KerasGraphModule, export: ExportConfig, record: ConversionRecord, params: dict[str, Any] | None
) -> tuple[KerasGraphModule, dict[str, Any], ExportRecord]:
    """The export of the float32 `model` with its measured cost; refused when it cannot be made or measured, when
    it overflows, or beyond max_error (a NaN error is beyond every bound)."""
    try:
        exported, packed, export_record = export_model(
            model, export, record.shapes_traced_with_length, is_neuron_model(model, params)
        )
    except ExportRefused as exc:
        raise ConversionError(
            f"{source}: cannot be exported as {export.describe()}: {exc}. Nothing was written."
        ) from exc
    if export_record.overflowed:
        raise ConversionError(
            f"{source}: weights beyond the range of {export.dtype} "
            f"({listed(export_record.overflowed)}); store them as bfloat16 or float32. "
            "Nothing was written."
        )
    beyond = {
        name: cost.error
        for name, cost in export_record.outputs.items()
        if export.max_error is not None and not cost.error <= export.max_error
    }
    if beyond:
        figures = ", ".join(f"{name} {error:.3g}" for name, error in beyond.items())
        raise ConversionError(
            f"{source}: the {export.describe()} export changes output(s) {figures} by more than "
            f"max_error {export.max_error:g} (max abs diff to the float32 conversion ÷ max(1, "
            f"largest |output|), on {export_record.input}). Nothing was written."
        )
    return exported, packed, export_record


def module_key(name: str, taken: set[str]) -> str:
    """A ModuleDict key from a Keras layer name (no dots or slashes), unique within the model."""
    key = re.sub(r"\W", "_", name) or "layer"
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def model_graph(keras_file: KerasModelFile) -> tuple[ModelGraph, MaskPlan]:
    """The layer graph of the file's config and where its masks go; any failure to read them is a refusal."""
    try:
        graph = parse_model_config(keras_file.model_config)
        return graph, plan_masks(graph)
    except ConversionError as exc:
        raise ConversionError(f"{keras_file.path}: {exc}") from exc
    except MemoryError:  # not a property of the config: the entry point reports it as such
        raise
    except Exception as exc:  # the config is untrusted data: any failure to read it is this refusal
        raise ConversionError(
            f"{keras_file.path}: the model_config is not a Keras model description we can "
            f"read ({type(exc).__name__}: {exc})."
        ) from exc


def build_conversion(keras_file: KerasModelFile, params: dict[str, Any] | None) -> Conversion:
    """The module of an already read Keras file, and its record (not yet verified, rounded or written)."""
    graph, masks = model_graph(keras_file)
    problems: list[str] = list(graph.problems)
    non_finite: list[str] = []
    layer_specs: list[dict[str, Any]] = []
    state: dict[str, torch.Tensor] = {}
    keys: set[str] = set()
    names_in_graph = {layer.name for layer in graph.layers}
    inexact_policies: dict[str, list[str]] = {}  # dtype policy -> the layers computing under it
    unknown: set[str] = set()  # layers of classes without a converter (a nested model numbers its calls otherwise)
    for layer in graph.layers:
        if layer.name in masks.dropped:
            continue
        converter = find_converter(layer.class_name) if isinstance(layer.class_name, str) else None
        if converter is None:
            problems.append(
                f"layer '{layer.name}' ({layer.class_name}): unknown layer class, no converter is registered for it"
            )
            unknown.add(layer.name)
            continue
        if (policy := dtype_policy(layer.config)) not in EXACT_COMPUTE_DTYPES:
            inexact_policies.setdefault(policy, []).append(layer.name)
            continue
        bag = WeightBag(layer.name, keras_file.weights.get(layer.name, {}))
        resolved = keras_file.resolved_activations.get(layer.name)
        try:
            converted = converter(
                KerasLayer(
                    layer.name,
                    layer.class_name,
                    layer.config,
                    bag,
                    keras_file.keras_major,
                    resolved.module if resolved is not None else None,
                )
            )
        except LayerProblem as exc:
            problems.append(f"layer '{layer.name}' ({layer.class_name}): {exc}")
            continue
        except MemoryError:
            raise
        except Exception as exc:  # a converter reads an untrusted config: any failure is this layer's problem
            problems.append(
                f"layer '{layer.name}' ({layer.class_name}): unreadable config ({type(exc).__name__}: {exc})"
            )
            continue
        if bag.non_finite:
            non_finite.append(
                f"'{layer.name}' ("
                + ", ".join(f"{name.rsplit('/', 1)[-1]}: {count}" for name, count in bag.non_finite.items())
                + ")"
            )
        extra = bag.leftovers() + keras_file.unlisted.get(layer.name, [])
        if extra:
            lora = any("lora_" in name.rsplit("/", 1)[-1] for name in extra)
            problems.append(
                f"layer '{layer.name}' ({layer.class_name}): unexpected extra weight(s) {listed(extra)}"
                + (
                    " (LoRA factors kept apart, as Keras 3 saves a LoRA-enabled layer in .h5: save the model as "
                    ".keras, which merges them into the layer's weights)"
                    if lora
                    else ""
                )
            )
        key = module_key(layer.name, keys)
        layer_specs.append(
            {
                "name": layer.name,
                "key": key,
                "class_name": layer.class_name,
                "type": converted.type,
                "config": converted.config,
            }
        )
        state.update(
            {
                f"layers.{key}.{p}": torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                for p, v in converted.params.items()
            }
        )
    problems += [inexact_dtype_problem(policy, names) for policy, names in inexact_policies.items()]
    problems += masks.problems  # after the layers' own: a layer that cannot be converted is the first reason
    for stray in sorted(set(keras_file.weights) - names_in_graph):
        if keras_file.weights[stray]:
            problems.append(f"weights stored for '{stray}', which is not a layer of the model")
    produced = {tensor_base(output) for _, _, output in masks.calls}
    problems += [
        f"model output '{output}' is produced by no layer call"
        for output in graph.outputs
        if tensor_base(output) not in produced and output.split(":")[0] not in unknown
    ]
    problems += [
        f"input '{name}' has shape {shape}: dimensions must be positive integers or null"
        for name, shape in graph.inputs
        if not all(size is None or (type(size) is int and size > 0) for size in shape)
    ]
    problems += [
        f"input '{tensor.split(':')[0]}' is declared as {dtype[:40]!r}: only integer and floating-point inputs "
        "are supported"
        for tensor, dtype in graph.input_dtypes.items()
        if dtype not in CAST_DTYPES | set(EXACT_COMPUTE_DTYPES)
    ]
    if non_finite:
        raise ConversionError(
            f"{keras_file.path}: the weights are not finite: NaN/Inf values in layer(s) {listed(non_finite)}. "
            "A training run that diverged saves such weights; the model cannot be used (take a model saved "
            "before the divergence)"
            + (f"; also: {listed(problems, separator='; ')}" if problems else "")
            + ". Nothing was written."
        )
    if problems:
        raise ConversionError(
            f"{keras_file.path}: cannot be converted exactly: "
            + listed(problems, separator="; ")
            + ". Nothing was written."
        )

    key_of = {spec["name"]: spec["key"] for spec in layer_specs}
    calls: list[dict[str, Any]] = [
        {"layer": key_of[name], "inputs": refs, "output": out} for name, refs, out in masks.calls
    ]
    for index, token_tensor in masks.masks.items():
        calls[index]["mask"] = token_tensor
    spec = {
        "inputs": [
            _input_entry(tensor, shape, graph.input_dtypes.get(tensor, "float32"), layer_specs, calls)
            for tensor, shape in graph.inputs
        ],
        "layers": layer_specs,
        "calls": calls,
        "outputs": graph.outputs,
        "output_names": graph.output_names,
    }
    model = _build_module(keras_file, spec, state)
    trace_length = _trace_length(spec, params)
    _check_trace_size(keras_file, model, trace_length)
    tensor_shapes = _trace(keras_file, model, trace_length)
    record = _record(keras_file, model, layer_specs, state, tensor_shapes, trace_length, params)
    model.metadata = record.to_dict()
    return Conversion(model=model, record=record)


def _input_entry(
    tensor: str,
    shape: list[int | None],
    dtype: str,
    layer_specs: list[dict[str, Any]],
    calls: list[dict[str, Any]],
) -> dict[str, Any]:
    """A spec's input, with its declared dtype where Keras's cast to it changes values; one that only
    Embeddings read holds token indices below the smallest table's size."""
    entry: dict[str, Any] = {"name": tensor.split(":")[0], "tensor": tensor, "shape": shape}
    if dtype in CAST_DTYPES:
        entry["dtype"] = dtype
    by_key = {spec["key"]: spec for spec in layer_specs}
    counts = [_token_count(by_key[call["layer"]]) for call in calls if tensor in call["inputs"]]
    if counts and None not in counts:
        entry["tokens"] = min(count for count in counts if count is not None)
    return entry


def _token_count(layer_spec: dict[str, Any]) -> int | None:
    """The vocabulary of an Embedding (also inside TimeDistributed), None for layers that take real values."""
    if layer_spec["type"] == "time_distributed":
        return _token_count(layer_spec["config"]["layer"])
    return int(layer_spec["config"]["input_dim"]) if layer_spec["type"] == "embedding" else None


def _build_module(keras_file: KerasModelFile, spec: dict[str, Any], state: dict[str, torch.Tensor]) -> KerasGraphModule:
    """The module of `spec` with `state` loaded strictly; a config no module accepts and weights that do not fit
    are refusals of this file."""
    with _refusal(keras_file, "the layers cannot be built as configured"):
        model = KerasGraphModule(spec)
    with _refusal(keras_file, "the weights do not fit the layers they belong to"):
        model.load_state_dict(state, strict=True)
    unusable = unusable_normalizations(model)
    if unusable:
        raise ConversionError(
            f"{keras_file.path}: {unusable}, in Keras too; the model cannot be used. Nothing was written."
        )
    return model.eval()


@contextmanager
def _refusal(keras_file: KerasModelFile, problem: str) -> Iterator[None]:
    """Any failure inside (the spec and weights are data from a file) as a ConversionError; MemoryError stays."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())
        raise ConversionError(f"{keras_file.path}: {problem}: {message}. Nothing was written.") from exc


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
        MAX_INPUT_LENGTH.check(
            dims[0] if dims else 1, f"{keras_file.path}: input '{name}'", ConversionError, " time steps"
        )
        if math.prod(dims) > MAX_TRACE_ELEMENTS:
            raise ConversionError(
                f"{keras_file.path}: input '{name}' has shape {tuple(dims)}, "
                f"{math.prod(dims):.3g} values per sample, more than the {MAX_TRACE_ELEMENTS:.0e} "
                "a model input may have. Nothing was written."
            )


def _trace(keras_file: KerasModelFile, model: KerasGraphModule, length: int) -> dict[str, tuple[int, ...]]:
    """Run a zero input through the model once, to catch shape mismatches and record every tensor's shape."""
    inputs = [torch.zeros(1, *[length if s is None else s for s in shape]) for shape in model.input_shapes]
    try:
        with torch.no_grad():
            shapes = model.trace(*inputs)
        missing = [name for name in model.spec["outputs"] if name not in shapes]
        if missing:
            raise ValueError(
                f"model output(s) {listed(missing)} are not among the tensors the layers return (a layer "
                "returns fewer outputs than the config declares)"
            )
        return shapes
    except ValueError as exc:
        raise ConversionError(f"{keras_file.path}: shape mismatch: {exc}. Nothing was written.") from exc
    except Exception as exc:  # e.g. a layer called without inputs in the config
        raise ConversionError(
            f"{keras_file.path}: the layer graph cannot be run on a test input "
            f"({type(exc).__name__}: {exc}). Nothing was written."
        ) from exc


def _record(
    keras_file: KerasModelFile,
    model: KerasGraphModule,
    layer_specs: list[dict[str, Any]],
    state: dict[str, torch.Tensor],
    tensor_shapes: dict[str, tuple[int, ...]],
    trace_length: int,
    params: dict[str, Any] | None,
) -> ConversionRecord:
    counts = {
        spec["key"]: sum(v.numel() for k, v in state.items() if k.startswith(f"layers.{spec['key']}."))
        for spec in layer_specs
    }
    layer_shapes: dict[str, tuple[int, ...]] = {}
    for call in model.spec["calls"]:  # a layer's first call, its first output
        layer_shapes.setdefault(call["layer"], tensor_shapes[call["output"]])
    outputs = [tensor_shapes[out] for out in model.spec["outputs"]]
    architecture = (params or {}).get("architecture_dict")
    return ConversionRecord(
        converter_version=VERSION,
        format_version=FORMAT_VERSION,
        source_path=str(real_path(keras_file.path)),
        source_sha256=keras_file.sha256,
        weights_only=keras_file.weights_only,
        keras_version=keras_file.keras_version,
        backend=keras_file.backend,
        model_class=keras_file.model_config.get("class_name"),
        converted_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        inputs=[{"name": n, "shape": [None, *s]} for n, s in zip(model.input_names, model.input_shapes)],
        outputs=[{"name": n, "shape": [None, *s[1:]]} for n, s in zip(model.output_names, outputs)],
        shapes_traced_with_length=trace_length,
        layers=[
            {
                "name": spec["name"],
                "class_name": spec["class_name"],
                "module": spec["type"],
                "parameters": counts[spec["key"]],
                "output_shape": [None, *layer_shapes[spec["key"]][1:]],
                "activation_source": (
                    "architecture_dict" if spec["name"] in keras_file.resolved_activations else "file"
                ),
            }
            for spec in layer_specs
            if spec["key"] in layer_shapes
        ],
        resolved_activations=[r.as_record() for r in keras_file.resolved_activations.values()],
        architecture_dict=plain(architecture) if architecture is not None else None,
        weights_path=str(real_path(keras_file.weights_path)) if keras_file.weights_path is not None else None,
        weights_sha256=keras_file.weights_sha256,
    )

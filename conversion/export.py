"""A smaller model with a measured cost: the float32 conversion → BatchNorm folded where exact → magnitude pruning →
storage precision → int8 quantization → the packed weights the `.pth` stores (models.packed), and the module
that computes with exactly what a load of that file gives.

The cost is measured here, against the float32 conversion, on a fixed input set (binary spikes at the
verification's density for neuron models, standard normal noise for others, at the traced window), and
recorded with the export: per output max/mean abs diff and the scaled error `max_error` bounds; for a `spikes`
output also the ROC AUC against spikes drawn from the float32 model's own probabilities, and the trials whose
spike verdict (max probability ≥ 0.5, as the evaluation counts one) changes.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from conversion.config import ExportConfig
from conversion.record import ExportRecord, OutputCost, SpikeCost
from conversion.verify import SPIKE_DENSITY, realistic_input
from models.checkpoint import STORAGE_DTYPES, round_to_storage
from models.graph import KerasGraphModule
from models.layers import Conv1d, Dense
from models.packed import pack_weight, packed_bytes, unpack_weight

COST_SAMPLES = 16
COST_SEED = 20240601
COST_BUDGET = 2e7  # input values of the cost's input set (80 MB of float32); fewer samples for long inputs
SPIKE_THRESHOLD = 0.5  # a trial spikes when its max probability reaches this (optimization's evaluation default)
WEIGHT_TYPES = ("conv1d", "dense")


def export_model(model: KerasGraphModule, options: ExportConfig) -> tuple[KerasGraphModule, dict[str, Any],
                                                                           ExportRecord]:
    """(the exported module, its packed weights, the record without the cost) from the float32 `model`, which
    stays as it is. The module holds exactly the weights a load of the `.pth` gives."""
    spec, state = copy.deepcopy(model.spec), {k: v.clone() for k, v in model.state_dict().items()}
    folded, not_folded = fold_batch_norms(spec, state) if options.quantize or options.prune else ([], [])
    exported = KerasGraphModule(spec)
    exported.load_state_dict(state, strict=True)
    names = prunable_weights(exported)
    if options.prune:
        prune_by_magnitude(exported, names, options.prune, options.prune_scope)
    overflowed = round_to_storage(exported, options.dtype)
    packed = {}
    if options.quantize or options.prune:
        declared = exported.state_dict()
        packed = {name: pack_weight(declared[name], options.quantize == "int8", bool(options.prune),
                                    STORAGE_DTYPES[options.dtype]) for name in names}
        with torch.no_grad():
            for name, entry in packed.items():
                declared[name].copy_(unpack_weight(entry, declared[name].shape))
    record = ExportRecord(
        options=options.model_dump(), folded=folded, not_folded=not_folded, overflowed=overflowed,
        sparsity={name: float((exported.state_dict()[name] == 0).float().mean()) for name in names},
        weight_bytes=_state_bytes(exported, packed, options.dtype), float32_weight_bytes=_state_bytes(model, {}, "float32"))
    exported.metadata = dict(model.metadata)
    return exported.eval(), packed, record


def _state_bytes(model: KerasGraphModule, packed: dict[str, Any], dtype: str) -> int:
    size = STORAGE_DTYPES[dtype].itemsize
    plain = sum(v.numel() * (size if v.is_floating_point() else v.element_size())
                for k, v in model.state_dict().items() if k not in packed)
    return plain + sum(packed_bytes(entry) for entry in packed.values())


def prunable_weights(model: KerasGraphModule) -> list[str]:
    """The state_dict names of every conv and dense kernel, nested ones (keras-tcn blocks) included."""
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, (Conv1d, Dense))]


def prune_by_magnitude(model: KerasGraphModule, names: list[str], sparsity: float, scope: str) -> None:
    """Zero the `sparsity` fraction of smallest-magnitude weights: of each tensor (`layer`) or of all together
    (`global`); ties go by position, so the result is the same on every run."""
    state = model.state_dict()
    groups = [[name] for name in names] if scope == "layer" else [names]
    with torch.no_grad():
        for group in groups:
            flat = torch.cat([state[name].reshape(-1) for name in group])
            drop = math.floor(sparsity * flat.numel())
            keep = torch.ones(flat.numel(), dtype=torch.bool)
            keep[torch.sort(flat.abs(), stable=True).indices[:drop]] = False
            start = 0
            for name in group:
                count = state[name].numel()
                state[name].mul_(keep[start:start + count].reshape(state[name].shape))
                start += count


def fold_batch_norms(spec: dict[str, Any], state: dict[str, torch.Tensor]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fold each top-level BatchNorm into a neighbour where that is exact, editing `spec` and `state`:
    into the conv/dense before it when that one's activation is linear and the BN is its only consumer, or
    else into the conv/dense layers after it when it feeds only them and they add no zero padding (1×1 or
    'valid' convolutions: zeros padded after the normalization would not be normalized in the folded model).
    Returns (what was folded, what was not and why)."""
    folded, not_folded = [], []
    for bn in [layer for layer in spec["layers"] if layer["type"] == "batch_norm"]:
        before = _producer_name(spec, bn)
        why_not = _fold_into_previous(spec, state, bn)
        consumers = _fold_into_next(spec, state, bn) if why_not is not None else [before]
        if isinstance(consumers, list):
            folded.append({"batch_norm": bn["name"], "into": consumers,
                           "side": "before" if why_not is None else "after"})
            _remove_layer(spec, state, bn["key"])
        else:
            why = why_not if consumers == why_not else f"{why_not}; {consumers}"
            not_folded.append({"batch_norm": bn["name"], "why": why})
    return folded, not_folded


def _calls_of(spec: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [call for call in spec["calls"] if call["layer"] == key]


def _layer(spec: dict[str, Any], key: str) -> dict[str, Any]:
    return next(layer for layer in spec["layers"] if layer["key"] == key)


def _producer_name(spec: dict[str, Any], bn: dict[str, Any]) -> str | None:
    calls = _calls_of(spec, bn["key"])
    sources = calls[0]["inputs"] if calls else []
    producers = [c["layer"] for c in spec["calls"] if c["output"] in sources]
    return _layer(spec, producers[0])["name"] if producers else None


def _bn_affine(state: dict[str, torch.Tensor], key: str, config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of the BatchNorm at inference, in float64."""
    prefix = f"layers.{key}."
    scale = torch.rsqrt(state[prefix + "running_var"].double() + config.get("epsilon", 1e-3))
    if config.get("scale", True):
        scale = scale * state[prefix + "weight"].double()
    shift = -state[prefix + "running_mean"].double() * scale
    if config.get("center", True):
        shift = shift + state[prefix + "bias"].double()
    return scale, shift


def _single_bn_call(spec: dict[str, Any], bn: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    calls = _calls_of(spec, bn["key"])
    if len(calls) != 1 or len(calls[0]["inputs"]) != 1:
        return None, f"'{bn['name']}' is called {len(calls)} times"
    if bn["config"].get("axis", -1) != -1:
        return None, f"'{bn['name']}' normalizes axis {bn['config'].get('axis')}, not the channels"
    return calls[0], ""


def _fold_into_previous(spec: dict[str, Any], state: dict[str, torch.Tensor], bn: dict[str, Any]) -> str | None:
    call, why = _single_bn_call(spec, bn)
    if call is None:
        return why
    source = call["inputs"][0]
    producers = [c for c in spec["calls"] if c["output"] == source]
    if not producers:
        return f"'{bn['name']}' normalizes a model input"
    layer = _layer(spec, producers[0]["layer"])
    if layer["type"] not in WEIGHT_TYPES:
        return f"'{layer['name']}' before it is a {layer['class_name']}"
    if layer["config"].get("activation", "linear") != "linear":
        return f"the activation of '{layer['name']}' before it comes first"
    users = [c for c in spec["calls"] if source in c["inputs"]]
    if len(_calls_of(spec, layer["key"])) != 1 or len(users) != 1 or source in spec["outputs"]:
        return f"the output of '{layer['name']}' is used elsewhere too"
    scale, shift = _bn_affine(state, bn["key"], bn["config"])
    prefix = f"layers.{layer['key']}."
    weight = state[prefix + "weight"].double()
    state[prefix + "weight"] = (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).float()
    bias = state.get(prefix + "bias")
    state[prefix + "bias"] = ((bias.double() if bias is not None else 0.0) * scale + shift).float()
    layer["config"]["bias"] = True
    producers[0]["output"] = call["output"]  # the BN's call is removed with its layer
    return None


def _zero_padding_free(layer: dict[str, Any]) -> bool:
    config = layer["config"]
    if layer["type"] == "dense":
        return True
    return (layer["type"] == "conv1d" and config.get("groups", 1) == 1
            and (config["kernel_size"] == 1 or config.get("padding", "valid") == "valid"))


def _fold_into_next(spec: dict[str, Any], state: dict[str, torch.Tensor], bn: dict[str, Any]) -> list[str] | str:
    call, why = _single_bn_call(spec, bn)
    if call is None:
        return why
    output = call["output"]
    users = [c for c in spec["calls"] if output in c["inputs"]]
    layers = [_layer(spec, c["layer"]) for c in users]
    if output in spec["outputs"] or not users:
        return f"'{bn['name']}' gives a model output"
    for user, layer in zip(users, layers):
        if not _zero_padding_free(layer) or len(user["inputs"]) != 1 or len(_calls_of(spec, layer["key"])) != 1:
            return (f"it feeds '{layer['name']}' ({layer['class_name']}), not only 1×1 or unpadded convolutions "
                    "and dense layers called once")
    scale, shift = _bn_affine(state, bn["key"], bn["config"])
    for user, layer in zip(users, layers):
        prefix = f"layers.{layer['key']}."
        weight = state[prefix + "weight"].double()  # (out, in[, kernel])
        in_view = scale.reshape(1, -1, *[1] * (weight.ndim - 2))
        added = (weight * shift.reshape(1, -1, *[1] * (weight.ndim - 2))).sum(dim=tuple(range(1, weight.ndim)))
        bias = state.get(prefix + "bias")
        state[prefix + "weight"] = (weight * in_view).float()
        state[prefix + "bias"] = ((bias.double() if bias is not None else 0.0) + added).float()
        layer["config"]["bias"] = True
        user["inputs"] = [call["inputs"][0]]
    return [layer["name"] for layer in layers]


def _remove_layer(spec: dict[str, Any], state: dict[str, torch.Tensor], key: str) -> None:
    spec["layers"] = [layer for layer in spec["layers"] if layer["key"] != key]
    spec["calls"] = [call for call in spec["calls"] if call["layer"] != key]
    for item in [k for k in state if k.startswith(f"layers.{key}.")]:
        del state[item]


def cost_input(model: KerasGraphModule, length: int, neuron: bool) -> list[np.ndarray]:
    """The fixed input set of the cost: COST_SAMPLES samples, fewer when one sample is large (at least one)."""
    per_sample = sum(math.prod(length if s is None else s for s in shape) for shape in model.input_shapes)
    samples = max(1, min(COST_SAMPLES, int(COST_BUDGET // max(per_sample, 1))))
    return realistic_input(model.input_shapes, length, neuron, seed=COST_SEED, batch=samples)


def _outputs(model: torch.nn.Module, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        got = model(*[torch.from_numpy(a) for a in inputs])
    return [t.cpu().numpy().astype(np.float64) for t in (got if isinstance(got, tuple) else (got,))]


def measure_cost(reference: KerasGraphModule, exported: KerasGraphModule, length: int, neuron: bool,
                 record: ExportRecord) -> None:
    """Fill `record`'s cost: `exported` against the float32 `reference` on the fixed input set."""
    inputs = cost_input(reference, length, neuron)
    expected, got = _outputs(reference, inputs), _outputs(exported, inputs)
    record.input = (f"{inputs[0].shape[0]} samples × {length} steps of "
                    + (f"binary spikes at {SPIKE_DENSITY:.0%} density" if neuron else "standard normal noise")
                    + f" (seed {COST_SEED})")
    for name, want, have in zip(reference.output_names, expected, got):
        diff = np.abs(have - want)
        largest = float(np.max(np.abs(want)))
        record.outputs[name] = OutputCost(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
                                          max_abs_value=largest, error=float(diff.max()) / max(1.0, largest))
    if "spikes" in reference.output_names:
        index = reference.output_names.index("spikes")
        record.spikes = spike_cost(expected[index], got[index])


def spike_cost(reference: np.ndarray, exported: np.ndarray) -> SpikeCost:
    """The spike output's change: AUC of both against spikes drawn from the reference's own probabilities
    (None when the draw holds only one class), trials spiking and trials whose verdict changed."""
    probabilities = np.clip(reference.reshape(reference.shape[0], -1), 0.0, 1.0)
    changed = np.clip(exported.reshape(exported.shape[0], -1), 0.0, 1.0)
    drawn = np.random.default_rng(COST_SEED).random(probabilities.shape) < probabilities
    both = drawn.any() and not drawn.all()
    auc_reference = float(roc_auc_score(drawn.ravel(), probabilities.ravel())) if both else None
    auc_export = float(roc_auc_score(drawn.ravel(), changed.ravel())) if both else None
    spiking_reference = probabilities.max(axis=1) >= SPIKE_THRESHOLD
    spiking_export = changed.max(axis=1) >= SPIKE_THRESHOLD
    return SpikeCost(auc_float32=auc_reference, auc_export=auc_export,
                     auc_change=None if auc_reference is None else auc_export - auc_reference,
                     threshold=SPIKE_THRESHOLD, trials=int(probabilities.shape[0]),
                     spiking_float32=int(spiking_reference.sum()), spiking_export=int(spiking_export.sum()),
                     verdicts_changed=int((spiking_reference != spiking_export).sum()),
                     bins_above_float32=int((probabilities >= SPIKE_THRESHOLD).sum()),
                     bins_above_export=int((changed >= SPIKE_THRESHOLD).sum()))

"""A smaller model with a measured cost: the float32 conversion → BatchNorm folded where exact → magnitude pruning →
storage precision → int8 quantization → the packed weights the `.pth` stores (models.packed), and the module
that computes with exactly what a load of that file gives.

The cost is measured here, against the float32 conversion, on a fixed input set (binary spikes at the
verification's density for neuron models, standard normal noise for others, at the traced window), and
recorded with the export: per output max/mean abs diff and the scaled error `max_error` bounds; for a `spikes`
output also the ROC AUC against spikes drawn from the float32 model's own probabilities, and the trials whose
spike verdict (max probability ≥ 0.5, as the evaluation counts one) changes. Folding is exact in real arithmetic;
where float32 rounding of the folded weights moves the outputs beyond the conversion's own tolerance (a large
mean cancelling a large bias), nothing is folded and the record says so.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from conversion.config import ExportConfig
from conversion.record import ExportRecord, OutputCost, SpikeCost
from conversion.verify import ATOL, RTOL, input_kind, realistic_input
from models.checkpoint import STORAGE_DTYPES, round_to_storage
from models.graph import KerasGraphModule
from models.packed import pack_weight, packable_weights, packed_bytes, unpack_weight

COST_SAMPLES = 16
COST_SEED = 20240601
COST_BUDGET = 2e7  # input values of the cost's input set (80 MB of float32); fewer samples for long inputs
SPIKE_THRESHOLD = 0.5  # a trial spikes when its max probability reaches this (optimization's evaluation default)
WEIGHT_TYPES = ("conv1d", "dense")
Fits = Callable[[torch.Tensor, torch.Tensor], bool]  # whether folded (weight, bias) tensors can be stored


class ExportRefused(ValueError):
    """The export cannot be made, or its cost cannot be measured (the converter names the file)."""


def export_model(
    model: KerasGraphModule, options: ExportConfig, length: int, neuron: bool
) -> tuple[KerasGraphModule, dict[str, Any], ExportRecord]:
    """(the exported module, its packed weights, its record with the cost) from the float32 `model`, which stays
    as it is. The module holds exactly the weights a load of the `.pth` gives. `length`: time steps of the cost's
    input set; `neuron`: binary spikes (else standard normal noise)."""
    compress = bool(options.quantize or options.prune)
    if compress and not packable_weights(model):
        raise ExportRefused("the model has no conv or dense weights to quantize or prune")
    inputs = cost_input(model, length, neuron)
    reference = _outputs(model, inputs)
    if not all(np.isfinite(out).all() for out in reference):
        raise ExportRefused(
            f"the float32 conversion's outputs on {describe_input(model, inputs, length, neuron)} are not "
            "finite, so no export's cost can be measured"
        )
    record = ExportRecord(
        options=options.model_dump(),
        input=describe_input(model, inputs, length, neuron),
        float32_weight_bytes=_state_bytes(model, {}, "float32"),
    )
    exported = _folded(model, options, inputs, reference, record) if compress else copy.deepcopy(model)
    names = packable_weights(exported)
    if options.prune:
        prune_by_magnitude(exported, names, options.prune, options.prune_scope)
    quantized = set(names) if options.quantize else set()
    record.overflowed = round_to_storage(exported, options.dtype, skip=quantized)  # int8 is made from float32
    packed = {}
    if compress:
        declared = exported.state_dict()
        storage = STORAGE_DTYPES[options.dtype]
        packed = {name: pack_weight(declared[name], name in quantized, bool(options.prune), storage) for name in names}
        with torch.no_grad():
            for name, entry in packed.items():
                declared[name].copy_(unpack_weight(entry, declared[name].shape, storage))
    record.sparsity = {name: float((exported.state_dict()[name] == 0).float().mean()) for name in names}
    record.weight_bytes = _state_bytes(exported, packed, options.dtype)
    if not record.overflowed:
        measure_cost(reference, _outputs(exported, inputs), exported.output_names, record)
    exported.metadata = dict(model.metadata)
    return exported.eval(), packed, record


def _folded(
    model: KerasGraphModule,
    options: ExportConfig,
    inputs: list[np.ndarray],
    reference: list[np.ndarray],
    record: ExportRecord,
) -> KerasGraphModule:
    """The model with its BatchNorms folded where exact and where the folded weights still fit how they are
    stored; the unfolded copy when float32 rounding makes the folded outputs differ beyond the conversion's
    tolerance. Folds (and their absence, with why) go into `record`."""
    spec, state = copy.deepcopy(model.spec), {k: v.clone() for k, v in model.state_dict().items()}
    ranks = tensor_ranks(model, inputs)
    storage = STORAGE_DTYPES[options.dtype]
    folded, not_folded = fold_batch_norms(spec, state, ranks, None if options.quantize else storage, storage)
    candidate = KerasGraphModule(spec)
    candidate.load_state_dict(state, strict=True)
    candidate.eval()
    moved = max(
        (
            float(np.abs(have - want).max() - (ATOL + RTOL * np.abs(want).max()))
            for want, have in zip(reference, _outputs(candidate, inputs))
        ),
        default=0.0,
    )
    if folded and not moved <= 0:
        why = (
            f"folding moves the outputs beyond the float32 tolerance ({ATOL:g} + {RTOL:g}·max|output|) on the "
            "cost's input set: float32 rounding of the folded weights (e.g. a large moving mean cancelling a "
            "large bias)"
        )
        record.not_folded = not_folded + [{"batch_norm": f["batch_norm"], "why": why} for f in folded]
        return copy.deepcopy(model)
    record.folded, record.not_folded = folded, not_folded
    return candidate


def tensor_ranks(model: KerasGraphModule, inputs: list[np.ndarray]) -> dict[str, int]:
    """Rank of every named tensor of the graph, from one traced pass over the first sample."""
    first = [torch.from_numpy(a[:1]) for a in inputs]
    with torch.no_grad():
        return {name: len(shape) for name, shape in model.trace(*first).items()}


def _state_bytes(model: KerasGraphModule, packed: dict[str, Any], dtype: str) -> int:
    size = STORAGE_DTYPES[dtype].itemsize
    plain = sum(
        v.numel() * (size if v.is_floating_point() else v.element_size())
        for k, v in model.state_dict().items()
        if k not in packed
    )
    return plain + sum(packed_bytes(entry) for entry in packed.values())


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
                state[name].mul_(keep[start : start + count].reshape(state[name].shape))
                start += count


def fold_batch_norms(
    spec: dict[str, Any],
    state: dict[str, torch.Tensor],
    ranks: dict[str, int],
    weight_storage: torch.dtype | None = None,
    bias_storage: torch.dtype = torch.float32,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fold each top-level BatchNorm over the channel axis into a neighbour where that is exact, editing `spec`
    and `state`: into the conv/dense before it when that one's activation is linear and the BN is its only
    consumer, or else into the conv/dense layers after it when it feeds only them and they add no zero padding
    (1×1 or 'valid' convolutions: zeros padded after the normalization would not be normalized in the folded
    model). A fold whose weights (stored in `weight_storage`, None: int8 with scales) or biases (in
    `bias_storage`) would not be finite is not made. `ranks`: the rank of each tensor (tensor_ranks).
    Returns (what was folded, what was not and why)."""
    folded, not_folded = [], []
    for bn in [layer for layer in spec["layers"] if layer["type"] == "batch_norm"]:
        before = _producer_name(spec, bn)
        fits = _storable(weight_storage, bias_storage)
        why_not = _fold_into_previous(spec, state, bn, ranks, fits)
        consumers = _fold_into_next(spec, state, bn, ranks, fits) if why_not is not None else [before]
        if isinstance(consumers, list):
            folded.append(
                {"batch_norm": bn["name"], "into": consumers, "side": "before" if why_not is None else "after"}
            )
            _remove_layer(spec, state, bn["key"])
        else:
            why = why_not if consumers == why_not else f"{why_not}; {consumers}"
            not_folded.append({"batch_norm": bn["name"], "why": why})
    return folded, not_folded


def _storable(weight_storage: torch.dtype | None, bias_storage: torch.dtype) -> Fits:
    """A check that folded (weight, bias) tensors stay finite in float32 and in the dtypes they are stored in."""

    def fits(weight: torch.Tensor, bias: torch.Tensor) -> bool:
        checks = [(weight, torch.float32), (bias, torch.float32), (bias, bias_storage)]
        checks += [(weight, weight_storage)] if weight_storage is not None else []
        return all(bool(torch.isfinite(t.to(dtype)).all()) for t, dtype in checks)

    return fits


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


def _single_bn_call(
    spec: dict[str, Any], bn: dict[str, Any], ranks: dict[str, int]
) -> tuple[dict[str, Any] | None, str]:
    calls = _calls_of(spec, bn["key"])
    if len(calls) != 1 or len(calls[0]["inputs"]) != 1:
        return None, f"'{bn['name']}' is called {len(calls)} times"
    axis, rank = bn["config"].get("axis", -1), ranks.get(calls[0]["inputs"][0], 0)
    if not isinstance(axis, int) or rank < 2 or axis % rank != rank - 1:
        return None, f"'{bn['name']}' normalizes axis {axis} of a rank-{rank} tensor, not its last (the channels)"
    return calls[0], ""


def _fold_into_previous(
    spec: dict[str, Any], state: dict[str, torch.Tensor], bn: dict[str, Any], ranks: dict[str, int], fits: Fits
) -> str | None:
    call, why = _single_bn_call(spec, bn, ranks)
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
    weight, bias = state[prefix + "weight"].double(), state.get(prefix + "bias")
    new_weight = (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).float()
    new_bias = ((bias.double() if bias is not None else 0.0) * scale + shift).float()
    if not fits(new_weight, new_bias):
        return f"folded into '{layer['name']}', its weights would overflow how they are stored"
    state[prefix + "weight"], state[prefix + "bias"] = new_weight, new_bias
    layer["config"]["bias"] = True
    producers[0]["output"] = call["output"]  # the BN's call is removed with its layer
    return None


def _zero_padding_free(layer: dict[str, Any]) -> bool:
    config = layer["config"]
    if layer["type"] == "dense":
        return True
    return (
        layer["type"] == "conv1d"
        and config.get("groups", 1) == 1
        and (config["kernel_size"] == 1 or config.get("padding", "valid") == "valid")
    )


def _fold_into_next(
    spec: dict[str, Any], state: dict[str, torch.Tensor], bn: dict[str, Any], ranks: dict[str, int], fits: Fits
) -> list[str] | str:
    call, why = _single_bn_call(spec, bn, ranks)
    if call is None:
        return why
    output = call["output"]
    users = [c for c in spec["calls"] if output in c["inputs"]]
    layers = [_layer(spec, c["layer"]) for c in users]
    if output in spec["outputs"] or not users:
        return f"'{bn['name']}' gives a model output"
    for user, layer in zip(users, layers):
        if not _zero_padding_free(layer) or len(user["inputs"]) != 1 or len(_calls_of(spec, layer["key"])) != 1:
            return (
                f"it feeds '{layer['name']}' ({layer['class_name']}), not only 1×1 or unpadded convolutions "
                "and dense layers called once"
            )
    scale, shift = _bn_affine(state, bn["key"], bn["config"])
    updates = {}
    for layer in layers:
        prefix = f"layers.{layer['key']}."
        weight, bias = state[prefix + "weight"].double(), state.get(prefix + "bias")  # weight: (out, in[, kernel])
        in_view = [1, -1, *[1] * (weight.ndim - 2)]
        added = (weight * shift.reshape(in_view)).sum(dim=tuple(range(1, weight.ndim)))
        updates[prefix] = (
            (weight * scale.reshape(in_view)).float(),
            ((bias.double() if bias is not None else 0.0) + added).float(),
        )
        if not fits(*updates[prefix]):
            return f"folded into '{layer['name']}', its weights would overflow how they are stored"
    for user, layer in zip(users, layers):
        prefix = f"layers.{layer['key']}."
        state[prefix + "weight"], state[prefix + "bias"] = updates[prefix]
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
    return realistic_input(model.input_shapes, length, neuron, seed=COST_SEED, batch=samples, tokens=model.input_tokens)


def _outputs(model: torch.nn.Module, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        got = model(*[torch.from_numpy(a) for a in inputs])
    return [t.cpu().numpy().astype(np.float64) for t in (got if isinstance(got, tuple) else (got,))]


def describe_input(model: KerasGraphModule, inputs: list[np.ndarray], length: int, neuron: bool) -> str:
    """'16 samples × 200 steps of binary spikes at 3% density (seed …)', as the record states the input set."""
    kind = input_kind(model, neuron)
    samples = inputs[0].shape[0]
    extent = f"{samples} samples × {length} steps" if inputs[0].ndim > 2 else f"{samples} samples"
    return f"{extent} of {kind} (seed {COST_SEED})"


def measure_cost(expected: list[np.ndarray], got: list[np.ndarray], names: list[str], record: ExportRecord) -> None:
    """Fill `record`'s cost: the export's outputs `got` against the float32 conversion's `expected`, on the
    fixed input set; an export whose outputs are not finite where the float32 conversion's are is refused."""
    broken = [name for name, have in zip(names, got) if not np.isfinite(have).all()]
    if broken:
        raise ExportRefused(
            f"the export's output(s) {', '.join(broken)} are not finite on {record.input}, where "
            "the float32 conversion's are"
        )
    for name, want, have in zip(names, expected, got):
        diff = np.abs(have - want)
        largest = float(np.max(np.abs(want)))
        record.outputs[name] = OutputCost(
            max_abs_diff=float(diff.max()),
            mean_abs_diff=float(diff.mean()),
            max_abs_value=largest,
            error=float(diff.max()) / max(1.0, largest),
        )
    if "spikes" in names:
        index = names.index("spikes")
        record.spikes = spike_cost(expected[index], got[index])


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic: the probability that a positive scores above a negative, ties
    counting half (average ranks)."""
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based average rank of each tied group
    positives = int(labels.sum())
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def spike_cost(reference: np.ndarray, exported: np.ndarray) -> SpikeCost:
    """The spike output's change: AUC of both against spikes drawn from the reference's own probabilities
    (None when the draw holds only one class), trials spiking and trials whose verdict changed."""
    probabilities = np.clip(reference.reshape(reference.shape[0], -1), 0.0, 1.0)
    changed = np.clip(exported.reshape(exported.shape[0], -1), 0.0, 1.0)
    drawn = np.random.default_rng(COST_SEED).random(probabilities.shape) < probabilities
    both = drawn.any() and not drawn.all()
    auc_reference = roc_auc(drawn.ravel(), probabilities.ravel()) if both else None
    auc_export = roc_auc(drawn.ravel(), changed.ravel()) if both else None
    spiking_reference = probabilities.max(axis=1) >= SPIKE_THRESHOLD
    spiking_export = changed.max(axis=1) >= SPIKE_THRESHOLD
    return SpikeCost(
        auc_float32=auc_reference,
        auc_export=auc_export,
        auc_change=None if auc_reference is None or auc_export is None else auc_export - auc_reference,
        threshold=SPIKE_THRESHOLD,
        trials=int(probabilities.shape[0]),
        spiking_float32=int(spiking_reference.sum()),
        spiking_export=int(spiking_export.sum()),
        verdicts_changed=int((spiking_reference != spiking_export).sum()),
        bins_above_float32=int((probabilities >= SPIKE_THRESHOLD).sum()),
        bins_above_export=int((changed >= SPIKE_THRESHOLD).sum()),
    )

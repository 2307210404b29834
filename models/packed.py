"""Weights a `.pth` stores compressed: int8 with one float32 scale per output channel, and/or sparse (the nonzero
values plus a bit mask of where they are). A compressed file's payload holds them under `"packed"`, keyed by
the state_dict name they replace; loading widens each once into the float32 tensor the module computes with.

The shape of every packed tensor is the one its module declares (built from the spec), never one read from the
entry, so a forged entry cannot make the loader allocate more than the model itself; every entry is checked
(dtype, sizes, scales finite and positive, mask and values agreeing) before it is widened.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from models.layers import Conv1d, Dense

INT8_LIMIT = 127  # symmetric: -127 … 127, so that the scale maps max |w| to 127 exactly
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


class PackedWeightError(ValueError):
    """A packed entry that does not describe the tensor it replaces."""


def packable_weights(model: nn.Module) -> list[str]:
    """The state_dict names of every conv and dense kernel, nested ones (keras-tcn blocks) included: the only
    tensors a file may store packed."""
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, (Conv1d, Dense))]


def channel_scales(weight: Tensor) -> Tensor:
    """Per output channel (axis 0): max |w| / 127 in float32, at least the smallest normal float32 (a channel of
    zeros, or of weights so small that their scale would underflow, is stored as zeros)."""
    largest = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).to(torch.float32)
    return torch.clamp(largest / INT8_LIMIT, min=torch.finfo(torch.float32).tiny)


def _pack_bits(mask: Tensor) -> Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    padded = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return (padded.reshape(-1, 8) * _BIT_WEIGHTS).sum(dim=1).to(torch.uint8)


def _unpack_bits(bits: Tensor, count: int) -> Tensor:
    return ((bits.unsqueeze(1) & _BIT_WEIGHTS) > 0).reshape(-1)[:count]


def pack_weight(weight: Tensor, quantize: bool, sparse: bool, storage: torch.dtype) -> dict[str, Any]:
    """The entry storing `weight` (a finite conv/dense weight in float32, output channels on axis 0): int8 values
    with float32 scales when `quantize`, else values in `storage`; only the nonzero ones and their mask when
    `sparse`."""
    weight = weight.detach().cpu().to(torch.float32)
    entry: dict[str, Any] = {}
    if quantize:
        scales = channel_scales(weight)
        view = scales.reshape(-1, *[1] * (weight.ndim - 1))
        values = torch.clamp(torch.round(weight / view), -INT8_LIMIT, INT8_LIMIT).to(torch.int8)
        entry["scales"] = scales
    else:
        values = weight.to(storage)
    if sparse:
        mask = values != 0
        entry["mask"] = _pack_bits(mask)
        values = values[mask]
    entry["values"] = values.reshape(-1).clone()
    return entry


def unpack_weight(entry: Any, shape: torch.Size, storage: torch.dtype) -> Tensor:
    """The float32 tensor of `shape` an entry stores (unscaled values in `storage`, the file's dtype);
    PackedWeightError when the entry does not describe one."""
    if not isinstance(entry, dict) or not isinstance(entry.get("values"), Tensor):
        raise PackedWeightError("is not a packed weight (a dict with a 'values' tensor)")
    unknown = set(entry) - {"values", "scales", "mask"}
    if unknown:
        raise PackedWeightError(f"has unknown keys {sorted(map(str, unknown))[:5]}")
    count = math.prod(shape)
    values = entry["values"]
    if values.ndim != 1:
        raise PackedWeightError(f"has values of shape {tuple(values.shape)}, not one flat tensor")
    if values.numel() > count:
        raise PackedWeightError(f"has {values.numel()} values for a tensor of {count}")
    mask = entry.get("mask")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.uint8 or mask.shape != ((count + 7) // 8,):
            raise PackedWeightError(f"has a mask that is not {(count + 7) // 8} bytes of bits")
        where = _unpack_bits(mask, count)
        if int(where.sum()) != values.numel():
            raise PackedWeightError(f"has a mask marking {int(where.sum())} values, and {values.numel()} values")
    elif values.numel() != count:
        raise PackedWeightError(f"has {values.numel()} values for a dense tensor of {count}")
    scales = entry.get("scales")
    if scales is not None:
        if values.dtype != torch.int8:
            raise PackedWeightError(f"has scaled values of {values.dtype}, not int8")
        if (
            not isinstance(scales, Tensor)
            or scales.dtype != torch.float32
            or scales.shape != (shape[0],)
            or not bool(torch.isfinite(scales).all())
            or not bool((scales > 0).all())
        ):
            raise PackedWeightError(f"has scales that are not {shape[0]} finite positive float32 numbers")
        widened = values.to(torch.float32)
    elif values.dtype == storage:
        widened = values.to(torch.float32)
    else:
        raise PackedWeightError(f"has unscaled values of {values.dtype}; this file stores {storage}")
    if mask is not None:
        dense = torch.zeros(count, dtype=torch.float32)
        dense[where] = widened
        widened = dense
    widened = widened.reshape(shape)
    if scales is not None:
        widened = widened * scales.reshape(-1, *[1] * (len(shape) - 1))
    return widened


def packed_bytes(entry: dict[str, Any]) -> int:
    """Bytes the entry's tensors take."""
    return sum(t.numel() * t.element_size() for t in entry.values() if isinstance(t, Tensor))

"""The `.pth` format of converted models: spec + state_dict + metadata (+ packed weights of a compressed export,
models.packed), plain types and tensors only.

`torch.load(path, weights_only=True)` reads it; `load_converted_model` rebuilds the module without TensorFlow,
Keras or the converter.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from errors import ModelFileError, ToolError
from fileio import read_zip_member, regular_file_size
from limits import MAX_MEMBER_BYTES, MAX_PICKLE_BYTES, MAX_WEIGHT_BYTES, check_stored_size
from models.graph import KerasGraphModule
from models.layers import unusable_normalizations
from models.packed import PackedWeightError, packable_weights, unpack_weight
from safe_pickle import check_pickle_stream
from version import VERSION

FORMAT_NAME = "keras-graph-torch"
FORMAT_VERSION = 1


# Precisions a `.pth` may store its floating-point weights in (metadata "dtype"); loading computes in float32.
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_payload(
    model: KerasGraphModule, metadata: dict[str, Any], packed: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """What a `.pth` holds (with the version of the tool that wrote it); tensors are cloned to plain CPU tensors, floating ones in metadata["dtype"]; the
    weights in `packed` are stored only there."""
    storage = STORAGE_DTYPES[metadata.get("dtype", "float32")]
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "written_by": f"neuron-tcn {VERSION}",
        "spec": model.spec,
        "state_dict": {
            k: v.detach().cpu().to(storage if v.is_floating_point() else v.dtype, copy=True)
            for k, v in model.state_dict().items()
            if k not in (packed or {})
        },
        "metadata": metadata,
    }
    if packed:
        payload["packed"] = packed
    return payload


def round_to_storage(model: nn.Module, dtype: str, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Round the model's floating tensors (but those in `skip`: stored another way) in place to what a `.pth` in
    `dtype` stores (computation stays in float32), so that the module in memory equals the one loaded from the
    file; returns the names of tensors that do not fit the dtype's range (they would become inf)."""
    storage = STORAGE_DTYPES[dtype]
    overflowed = []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and name not in skip:
                rounded = tensor.to(storage)
                if not torch.isfinite(rounded).all() and torch.isfinite(tensor).all():
                    overflowed.append(name)
                tensor.copy_(rounded)
    return overflowed


def check_torch_archive(path: str | Path, error: type[ToolError]) -> None:
    """A file torch.save wrote (a zip archive), checked before torch reads it: a regular file whose members
    declare sizes within the budgets (limits.py), each and together. torch stores members uncompressed, so a
    member that inflates far beyond what it stores is forged. Its pickles (`<archive>/data.pkl`, any `*.pkl`
    member torch might unpickle) are read in bounded chunks and their opcodes scanned for depth and steps
    (safe_pickle.check_pickle_stream), as a parameters pickle's are: torch's own unpickler would spend minutes
    on 30 million references, or crash on a key nested 300,000 tuples deep."""
    path = Path(path)
    regular_file_size(path, error, "PyTorch file")
    if not zipfile.is_zipfile(path):
        raise error(
            f"{path}: cannot be read as a PyTorch file: torch.save writes a zip archive and this is none "
            "(truncated, or of another format)."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for info in members:
                subject = f"{path}: member {info.filename}"
                MAX_MEMBER_BYTES.check(info.file_size, subject, error, "bytes")
                check_stored_size(info.file_size, info.compress_size, subject, error)
            MAX_WEIGHT_BYTES.check(
                sum(info.file_size for info in members), f"{path}: its members together", error, "bytes"
            )
            for info in members:
                if info.filename.endswith(".pkl"):
                    subject = f"{path}: member {info.filename}"
                    check_pickle_stream(
                        read_zip_member(archive, info, MAX_PICKLE_BYTES, subject, error), subject, error
                    )
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise error(f"{path}: cannot be read as a PyTorch file ({type(exc).__name__}: {exc}).") from exc


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a converted `.pth`, loaded with weights_only=True; ModelFileError if it is not one."""
    path = Path(path)
    check_torch_archive(path, ModelFileError)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise ModelFileError(
            f"{path}: cannot be read as a PyTorch file ({type(exc).__name__}: {exc}). "
            "It may be truncated or not a converted model; convert the .h5 again."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: not a model written by this converter (no '{FORMAT_NAME}' format tag); "
            "convert the Keras file with model_converter.py."
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {payload.get('format_version')!r} is not the supported "
            f"version {FORMAT_VERSION}; convert the Keras file again."
        )
    return payload


def declared_weight_bytes(spec: dict[str, Any]) -> int:
    """Bytes of float32 parameters and buffers the spec's layers declare, found without allocating them."""
    with torch.device("meta"):
        model = KerasGraphModule(spec)
    return sum(t.numel() * 4 for t in model.state_dict().values())


def model_from_payload(payload: dict[str, Any], source: str | Path = "<memory>") -> KerasGraphModule:
    """Build the module (its declared size checked against the weight budget first: a small file may declare
    huge layers) and load its state strictly (every parameter and buffer, nothing extra)."""
    try:
        MAX_WEIGHT_BYTES.check(
            declared_weight_bytes(payload["spec"]), f"{source}: the layers its spec declares", ModelFileError, "bytes"
        )
        model = KerasGraphModule(payload["spec"])
        model.load_state_dict(_with_packed_widened(model, payload), strict=True)
    except PackedWeightError as exc:
        raise ModelFileError(f"{source}: a packed weight {exc}.") from exc
    except ModelFileError:
        raise
    except Exception as exc:  # the spec is data from a file: any failure to build from it is this refusal
        raise ModelFileError(
            f"{source}: the stored spec and weights do not build a model ({type(exc).__name__}: {exc})."
        ) from exc
    not_finite = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if not_finite:
        raise ModelFileError(
            f"{source}: the weights are not finite (NaN/Inf in {', '.join(not_finite[:5])}"
            f"{', ...' if len(not_finite) > 5 else ''}), as a diverged training run leaves "
            "them; this model cannot be used."
        )
    unusable = unusable_normalizations(model)
    if unusable:
        raise ModelFileError(f"{source}: {unusable}; this model cannot be used.")
    model.metadata = payload.get("metadata", {})
    return model.eval()


def _with_packed_widened(model: KerasGraphModule, payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict with each packed weight widened to float32 in the shape its module declares; only conv and
    dense kernels may be packed, their unscaled values in the file's dtype."""
    state, packed = dict(payload["state_dict"]), payload.get("packed", {})
    if not isinstance(packed, dict):
        raise PackedWeightError(f"table is a {type(packed).__name__}, not a dict")
    metadata = payload.get("metadata")
    dtype = metadata.get("dtype", "float32") if isinstance(metadata, dict) else "float32"
    if packed and dtype not in STORAGE_DTYPES:
        raise PackedWeightError(
            f"table belongs to a file of dtype {str(dtype)[:40]!r}, not one of {', '.join(STORAGE_DTYPES)}"
        )
    declared, packable = model.state_dict(), set(packable_weights(model))
    for name, entry in packed.items():
        if name not in packable or name in state:
            raise PackedWeightError(
                f"{str(name)[:100]!r} is "
                + ("stored twice" if name in state else "not a conv or dense kernel of the model")
            )
        try:
            state[name] = unpack_weight(entry, declared[name].shape, STORAGE_DTYPES[dtype])
        except PackedWeightError as exc:
            raise PackedWeightError(f"'{name}' {exc}") from None
    return state


def load_converted_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a converted model from its `.pth` alone, in eval mode, on `device`.

    The module computes in float32 whatever precision the file stores its weights in (float16 / bfloat16
    weights are widened exactly, int8 ones multiplied by their scales once, here); `.to(torch.bfloat16)`
    afterwards runs it in half precision.
    """
    return model_from_payload(read_checkpoint(path), path).to(device)

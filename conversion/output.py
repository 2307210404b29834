"""Writing a conversion: the `.pth` and its info pickle, as a pair a kill cannot split wrongly.

Both are serialized in memory first, so that a full disk is an OSError (an OutputError from atomic_paths), not
torch.save's bare RuntimeError, and the `.pth` is loaded back before anything is written: "converted" always
means loadable. The info pickle is renamed into place first and records the sha256 of its `.pth`, whose rename
commits the pair: a kill in between leaves the old model beside an info pickle that names another `.pth`
(sync_info repairs it when the model is next reused), never a new model beside old info.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from conversion.pairing import info_path_for
from errors import ConversionError, OutputError, ToolError
from fileio import atomic_paths
from models.checkpoint import checkpoint_payload, model_from_payload
from models.graph import KerasGraphModule
from safe_pickle import load_pickle

log = logging.getLogger(__name__)
LOAD_TIMINGS = 3  # loads back; the fastest is the recorded load time


def _loads_back(data: bytes, source: Any) -> float:
    """Seconds a load of `data` takes (torch.load with weights_only=True, then the module built and filled)."""
    try:
        started = time.perf_counter()
        model_from_payload(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), "<new conversion>")
        return time.perf_counter() - started
    except Exception as exc:  # the record holds a type weights_only refuses, or the spec does not rebuild
        raise ConversionError(
            f"{source}: the conversion cannot be loaded back ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}), so it is not written. Nothing was written."
        ) from exc


def info_record(metadata: dict[str, Any], pth_bytes: bytes, load_time_s: float | None = None) -> dict[str, Any]:
    """The info pickle: the `.pth`'s metadata, the sha256 and size of the `.pth` it belongs to, and the seconds
    its load took when it was written (from memory: torch.load and the module built)."""
    return {
        **metadata,
        "pth_sha256": hashlib.sha256(pth_bytes).hexdigest(),
        "pth_bytes": len(pth_bytes),
        "load_time_s": load_time_s,
    }


def write_conversion(
    model: KerasGraphModule, pth_path: str | Path, packed: dict[str, dict[str, Any]] | None = None
) -> tuple[Path, Path]:
    """Write `model` (its spec, weights, `packed` weights and `metadata`) as `pth_path` and its info pickle,
    atomically."""
    pth_path = Path(pth_path)
    info_path = info_path_for(pth_path)
    payload = io.BytesIO()
    torch.save(checkpoint_payload(model, model.metadata, packed), payload)
    data = payload.getvalue()
    load_time_s = min(_loads_back(data, model.metadata.get("source_path")) for _ in range(LOAD_TIMINGS))
    with atomic_paths(info_path, pth_path) as (info_tmp, pth_tmp):
        info_tmp.write_bytes(pickle.dumps(info_record(model.metadata, data, load_time_s), protocol=4))
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

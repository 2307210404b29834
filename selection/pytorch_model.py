"""Find the chosen model's PyTorch file, or convert its Keras file — once, under a lock, verified when possible.

A `.pth`/`.pt`/`_converted.pth` beside the model is used only if it loads with weights_only=True as a model of
this converter and, when the Keras file (`.h5`, `.keras` or `.weights.h5`, conversion.pairing) is there,
records that file's sha256. Anything else is reported and the Keras file is converted again into
`<stem>_converted.pth`, which the next run reuses. The reuse rule and the per-model lock are
conversion.cache's, shared with model_converter.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from conversion.cache import current_conversion
from conversion.converter import sync_info
from conversion.keras_file import file_sha256
from conversion.verify import worst_output
from errors import SelectionError
from model_converter import convert_or_reuse
from conversion.pairing import pytorch_candidates

log = logging.getLogger(__name__)


@dataclass
class PyTorchModel:
    model: nn.Module
    path: Path
    converted: bool  # True when this run converted the Keras file


def _reuse(stem_path: Path, h5_sha256: str | None, params_sha256: str | None) -> PyTorchModel | None:
    """The first current conversion beside the model. A verification is not required here (main reuses
    unverified files, see README); a weights-only conversion must come from this params pickle."""
    for candidate in pytorch_candidates(stem_path):
        model, why_not = current_conversion(candidate, h5_sha256, params_sha256=params_sha256)
        if model is not None:
            log.info("using existing PyTorch model %s", candidate)
            sync_info(candidate, model.metadata)
            return PyTorchModel(model, candidate, converted=False)
        log.warning("not using %s: %s", candidate, why_not)
    return None


def ensure_pytorch_model(stem_path: Path, keras_file: Path | None, params: Path | None, verify: bool,
                         trust_pickles: bool = False, lock_timeout_s: float = 600) -> PyTorchModel:
    """The model's PyTorch module: reused when a current conversion exists, else converted now."""
    params_sha256 = file_sha256(params) if params is not None and params.is_file() else None
    if keras_file is None:
        found = _reuse(stem_path, None, params_sha256)
        if found is None:
            raise SelectionError(f"{stem_path}: no Keras file to convert and no usable PyTorch file beside it.")
        return found
    found = _reuse(stem_path, file_sha256(keras_file), params_sha256)
    if found is not None:
        return found
    log.info("converting %s%s", keras_file.name, " (verifying against Keras)" if verify else "")
    outcome = convert_or_reuse(keras_file, params, verify=verify, trust_pickles=trust_pickles,
                               lock_timeout_s=lock_timeout_s)
    if outcome.cached:  # another job converted it while we waited for the lock
        log.info("using %s, converted meanwhile by another job", outcome.path)
        return PyTorchModel(outcome.model, outcome.path, converted=False)
    verification = outcome.model.metadata.get("verification") or {}
    worst = worst_output(verification)
    if worst is not None:
        log.info("verified against %s: max abs diff %.2g", verification["keras"], worst[1])
    elif verify:
        log.warning("conversion not verified: %s", verification.get("skipped", "unknown reason"))
    return PyTorchModel(outcome.model, outcome.path, converted=True)

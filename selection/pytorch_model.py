"""Find the chosen model's PyTorch file, or convert its `.h5` — once, under a lock, verified when possible.

A `.pth`/`.pt`/`_converted.pth` beside the model is used only if it loads with weights_only=True as a model of
this converter and, when the `.h5` is there, records that `.h5`'s sha256. Anything else is reported and the
`.h5` is converted again into `<stem>_converted.pth`, which the next run reuses.
"""
from __future__ import annotations

import fcntl
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from torch import nn

from conversion.keras_file import file_sha256
from errors import ModelFileError, SelectionError
from model_converter import TCNModelConverter, default_output_path
from models.checkpoint import model_from_payload, read_checkpoint
from selection.table import pytorch_candidates

log = logging.getLogger(__name__)


@dataclass
class PyTorchModel:
    model: nn.Module
    path: Path
    converted: bool  # True when this run converted the .h5


def usable_checkpoint(pth: Path, h5: Path | None, h5_sha256: str | None) -> tuple[nn.Module | None, str]:
    """(model, "") when `pth` is a safe, current conversion of `h5`; (None, why not) otherwise."""
    try:
        payload = read_checkpoint(pth)
        model = model_from_payload(payload, pth)
    except ModelFileError as exc:
        return None, str(exc)
    recorded = payload.get("metadata", {}).get("source_sha256")
    if h5_sha256 is not None and recorded != h5_sha256:
        return None, (f"{pth.name} is stale or foreign: it records source sha256 {str(recorded)[:12]}…, "
                      f"but {h5.name} has {h5_sha256[:12]}…")
    return model, ""


@contextmanager
def conversion_lock(h5: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive lock per model file, so that two jobs never convert the same model at once."""
    lock_path = h5.with_name(f".{h5.name}.lock")
    try:
        handle = open(lock_path, "a")
    except OSError as exc:
        raise SelectionError(f"{h5}: cannot create the conversion lock {lock_path} ({exc.strerror}); the models "
                             "folder must be writable to convert into it.") from None
    with handle:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SelectionError(f"{h5}: another job has held the conversion lock {lock_path} for more "
                                         f"than {timeout_s:.0f} s.") from None
                if not waited:
                    log.info("waiting for another job converting %s", h5.name)
                    waited = True
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _reuse(stem_path: Path, h5: Path | None, h5_sha256: str | None) -> PyTorchModel | None:
    for candidate in pytorch_candidates(stem_path):
        model, why_not = usable_checkpoint(candidate, h5, h5_sha256)
        if model is not None:
            log.info("using existing PyTorch model %s", candidate)
            return PyTorchModel(model, candidate, converted=False)
        log.warning("not using %s: %s", candidate, why_not)
    return None


def ensure_pytorch_model(stem_path: Path, params: Path | None, verify: bool, trust_pickles: bool = False,
                         lock_timeout_s: float = 600) -> PyTorchModel:
    """The model's PyTorch module: reused when a current conversion exists, else converted now."""
    h5 = stem_path.with_suffix(".h5")
    if not h5.is_file():
        found = _reuse(stem_path, None, None)
        if found is None:
            raise SelectionError(f"{stem_path}: no .h5 to convert and no usable PyTorch file beside it.")
        return found
    h5_sha256 = file_sha256(h5)
    found = _reuse(stem_path, h5, h5_sha256)
    if found is not None:
        return found
    with conversion_lock(h5, lock_timeout_s):
        found = _reuse(stem_path, h5, h5_sha256)  # another job may have converted it while we waited
        if found is not None:
            return found
        output = default_output_path(h5)
        log.info("converting %s -> %s%s", h5.name, output.name, " (verifying against Keras)" if verify else "")
        converter = TCNModelConverter(h5, params, trust_pickles=trust_pickles)
        model = converter.convert(output, verify=verify)
        verification = converter.last_conversion.metadata.get("verification") or {}
        if "outputs" in verification:
            worst = max(o["max_abs_diff"] for o in verification["outputs"].values())
            log.info("verified against %s: max abs diff %.2g", verification["keras"], worst)
        elif verify:
            log.warning("conversion not verified: %s", verification.get("skipped", "unknown reason"))
        return PyTorchModel(model, output, converted=True)

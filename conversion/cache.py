"""Reuse a current conversion instead of converting again; convert each output file by one job at a time.

A converted `.pth` is current for a Keras file when it loads with `weights_only=True` as a model of this
converter (same format version), records the Keras file's sha256 and stores the requested dtype; when a
verified conversion is asked for, it must also record a verification that passed. Conversions run under an
exclusive lock per output file (fcntl) and are written through atomic renames, so jobs converting the same
model at the same time leave exactly one valid file: the first converts, the others find its result.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from torch import nn

from conversion.converter import sync_info
from conversion.keras_file import file_sha256
from errors import ConversionError, ModelFileError, OutputError
from models.checkpoint import model_from_payload, read_checkpoint

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 600.0
LOCK_POLL_S = 0.2


@dataclass
class ConversionOutcome:
    model: nn.Module
    path: Path
    cached: bool  # True when an existing current conversion was used


def lock_path_for(output: Path) -> Path:
    """The lock file of an output: hidden, beside it, removed by the job that held it."""
    return output.with_name(f".{output.name}.lock")


@contextmanager
def conversion_lock(output: Path, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive lock of `output`, waiting at most `timeout_s` for another job to release it.

    The holder removes the lock file before releasing it; a job that was waiting on the removed file then
    finds that the path no longer names the file it locked, and locks the path anew.
    """
    lock_path = lock_path_for(output)
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock_path, "a")
        except OSError as exc:
            raise OutputError(f"{output}: cannot create the conversion lock {lock_path} ({exc.strerror}); the "
                              "output folder must be writable.") from None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.close()
                    raise ConversionError(f"{output}: another job has held the conversion lock {lock_path} for "
                                          f"more than {timeout_s:.0f} s.") from None
                if not waited:
                    log.info("waiting for another job converting into %s", output.name)
                    waited = True
                time.sleep(LOCK_POLL_S)
        if _names_same_file(lock_path, handle):
            break
        handle.close()  # the previous holder removed this file: lock the path's new file
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()  # releases the lock


def _names_same_file(path: Path, handle) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def current_conversion(pth: Path, source_sha256: str | None, dtype: str = "float32",
                       verified: bool = False, params_sha256: str | None = None) -> tuple[nn.Module | None, str]:
    """(model, "") when `pth` is a current conversion (see the module doc); (None, why not) otherwise.

    `source_sha256=None` skips the source check (no Keras file to compare with). Where the params pickle
    supplied part of the model (a weights-only file's architecture, activations stored as Python functions), the
    conversion is current only for the same params pickle.
    """
    try:
        payload = read_checkpoint(pth)
        model = model_from_payload(payload, pth)
    except ModelFileError as exc:
        return None, str(exc)
    metadata = payload.get("metadata", {})
    recorded = metadata.get("source_sha256")
    if source_sha256 is not None and recorded != source_sha256:
        return None, (f"{pth.name} is stale or foreign: it records source sha256 {str(recorded)[:12]}…, "
                      f"the Keras file has {source_sha256[:12]}…")
    if ((metadata.get("weights_only") or metadata.get("resolved_activations"))
            and metadata.get("params_sha256") != params_sha256):
        return None, (f"{pth.name} was built with the architecture_dict of another (or no) params pickle")
    stored_dtype = metadata.get("dtype", "float32")
    if stored_dtype != dtype:
        return None, f"{pth.name} stores {stored_dtype} weights, {dtype} was asked for"
    if verified and not (metadata.get("verification") or {}).get("passed"):
        return None, f"{pth.name} records no passed verification against Keras"
    return model, ""


def convert_once(source: Path, output: Path, convert: Callable[[], nn.Module], *, params: Path | None = None,
                 dtype: str = "float32", verified: bool = False, force: bool = False,
                 lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> ConversionOutcome:
    """Reuse `output` when it is a current conversion of `source`, else call `convert` (which writes `output`).

    The check is repeated under the lock: a job that waited finds what the job before it converted.
    `force` converts regardless.
    """
    try:
        source_sha256 = file_sha256(source)
        params_sha256 = file_sha256(params) if params is not None else None
    except FileNotFoundError as exc:
        raise ConversionError(f"{exc.filename}: no such file.") from None
    except OSError as exc:
        raise ConversionError(f"{exc.filename}: cannot be read ({exc.strerror}).") from None
    if not force:
        model, _ = current_conversion(output, source_sha256, dtype, verified, params_sha256)
        if model is not None:
            sync_info(output, model.metadata)
            return ConversionOutcome(model, output, cached=True)
    with conversion_lock(output, lock_timeout_s):
        if not force:
            model, why_not = current_conversion(output, source_sha256, dtype, verified, params_sha256)
            if model is not None:
                sync_info(output, model.metadata)
                return ConversionOutcome(model, output, cached=True)
            if output.exists():
                log.info("converting again: %s", why_not)
        return ConversionOutcome(convert(), output, cached=False)

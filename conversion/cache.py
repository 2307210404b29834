"""Reuse a current conversion instead of converting again; convert each output file by one job at a time; and
main.py's rule for finding or making the PyTorch file of a selected model.

A converted `.pth` is current for a Keras file when it loads with `weights_only=True` as a model of this
converter (same format version), records the Keras file's sha256 and stores the requested export; when a
verified conversion is asked for, it must also record a verification that passed. Conversions run under an
exclusive lock per output file (fcntl) and are written through atomic renames, so jobs converting the same
model at the same time leave exactly one valid file: the first converts, the others find its result.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from conversion.config import DEFAULT_LOCK_TIMEOUT_S, ExportConfig
from conversion.converter import convert_model
from conversion.keras_file import file_sha256
from conversion.messages import export_cost_lines
from conversion.output import sync_info
from conversion.pairing import default_output_path, info_path_for, pytorch_candidates
from conversion.record import ConversionRecord
from errors import ConversionError, ModelFileError, OutputError, SelectionError
from fileio import open_lock_file, outputs_apart_from_inputs
from models.checkpoint import STORAGE_DTYPES, model_from_payload, read_checkpoint
from models.graph import KerasGraphModule

log = logging.getLogger(__name__)

LOCK_POLL_S = 0.2


@dataclass
class ConversionOutcome:
    model: KerasGraphModule
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
            handle = open_lock_file(lock_path)
        except OSError as exc:
            raise OutputError(
                f"{output}: cannot use the conversion lock {lock_path} ({exc.strerror}); the output "
                "folder must be writable, and the lock a regular file (remove it when no job is "
                "converting this model)."
            ) from None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.close()
                    raise ConversionError(
                        f"{output}: another job has held the conversion lock {lock_path} for "
                        f"more than {timeout_s:.0f} s."
                    ) from None
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


def _names_same_file(path: Path, handle: IO[str]) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def current_conversion(
    pth: Path,
    source_sha256: str | None,
    export: ExportConfig | None = None,
    verified: bool = False,
    params_sha256: str | None = None,
    weights_sha256: str | None = None,
) -> tuple[KerasGraphModule | None, str]:
    """(model, "") when `pth` is a current conversion (see the module doc); (None, why not) otherwise.

    `source_sha256=None` skips the source check (no Keras file to compare with); else a model given as JSON +
    weights file is current only for the same weights file (`weights_sha256`, None for one-file models). Where
    the params pickle supplied part of the model (a weights-only file's architecture, activations stored as
    Python functions), the conversion is current only for the same params pickle.
    """
    try:
        payload = read_checkpoint(pth)
        model = model_from_payload(payload, pth)
        metadata = payload.get("metadata") or {}
        if isinstance(metadata, dict) and "refined" in metadata:
            return None, (
                f"{pth.name} is a model fine-tuned by a refinement round (metadata 'refined'), not a "
                "conversion of the Keras file"
            )
        record = ConversionRecord.from_dict(metadata)
    except ModelFileError as exc:
        return None, str(exc)
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"{pth.name} records no conversion of this converter ({type(exc).__name__}: {exc})"
    if source_sha256 is not None and record.source_sha256 != source_sha256:
        return None, (
            f"{pth.name} is stale or foreign: it records source sha256 {str(record.source_sha256)[:12]}…, "
            f"the Keras file has {source_sha256[:12]}…"
        )
    if source_sha256 is not None and record.weights_sha256 != weights_sha256:
        return None, (
            f"{pth.name} is stale or foreign: it records weights sha256 {str(record.weights_sha256)[:12]}…, "
            f"the weights file has {str(weights_sha256)[:12]}…"
        )
    if record.needs_params and record.params_sha256 != params_sha256:
        return None, f"{pth.name} was built with the architecture_dict of another (or no) params pickle"
    why_not = _weights_disagree(payload, record) or _export_differs(record, export or ExportConfig())
    if why_not:
        return None, f"{pth.name} {why_not}"
    if verified and not (record.verification is not None and record.verification.passed):
        return None, f"{pth.name} records no passed verification against Keras"
    return model, ""


def _weights_disagree(payload: dict, record: ConversionRecord) -> str:
    """'' when the tensors are stored as the record says (its dtype; int8 and/or sparse entries exactly for the
    quantization and pruning it records), else what disagrees: the form asked for is judged on the weights."""
    options = record.export.options if record.export else {}
    storage = STORAGE_DTYPES.get(record.dtype)
    floats = {str(t.dtype) for t in payload["state_dict"].values() if t.is_floating_point()}
    if storage is None or floats - {str(storage)}:
        return f"stores {', '.join(sorted(floats))} tensors, and its record says {str(record.dtype)[:40]}"
    packed = payload.get("packed", {})
    kinds = {("scales" in entry, "mask" in entry) for entry in packed.values()}
    expected = (
        {(options.get("quantize") == "int8", bool(options.get("prune")))}
        if packed or any(options.get(key) for key in ("quantize", "prune"))
        else set()
    )
    if kinds != expected:
        return "stores its weights otherwise than its record says (int8, sparse or plain)"
    if record.export is None and record.dtype != "float32":
        return f"records no measured cost for its {record.dtype} weights"
    return ""


def _export_differs(record: ConversionRecord, export: ExportConfig) -> str:
    """Why the stored form is not the one asked for ('' when it is): the same dtype, quantization and pruning,
    and a recorded cost within max_error (a cost that is not a number is beyond every bound)."""
    try:
        stored = ExportConfig(
            **{**(record.export.options if record.export else {}), "dtype": record.dtype, "max_error": None}
        )
    except (TypeError, ValueError):  # a record written by something else
        return "records a storage form this converter does not know"
    if stored != export.model_copy(update={"max_error": None}):
        return f"is stored as '{stored.describe()}', and '{export.describe()}' was asked for"
    worst = record.export.worst() if record.export else None
    if export.max_error is not None and worst is not None and not worst[1] <= export.max_error:
        return f"records an error of {worst[1]:.3g} on '{worst[0]}', more than max_error {export.max_error:g}"
    return ""


def convert_or_reuse(
    source: str | Path,
    params: str | Path | None = None,
    output: str | Path | None = None,
    *,
    verify: bool = False,
    export: ExportConfig | None = None,
    force: bool = False,
    trust_pickles: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    weights: str | Path | None = None,
) -> ConversionOutcome:
    """The model converted into `output` (default `<stem>_converted.pth`), or the current conversion already
    there: same source sha256 (and `weights` file's, for a `.json` source), format version and export (dtype,
    quantization, pruning, within max_error), and a passed verification when `verify`.

    Under the output's lock, where the check is repeated: a job that waited finds what the job before it
    converted. `force` converts regardless.
    """
    source = Path(source)
    params = Path(params) if params is not None else None
    output = Path(output) if output else default_output_path(source)
    weights = Path(weights) if weights is not None else None
    outputs_apart_from_inputs([output, info_path_for(output)], [source, params, weights], ConversionError)
    source_sha256 = file_sha256(source)
    params_sha256 = file_sha256(params) if params is not None else None
    weights_sha256 = file_sha256(weights) if weights is not None else None

    def reused(locked: bool) -> ConversionOutcome | None:
        model, why_not = current_conversion(output, source_sha256, export, verify, params_sha256, weights_sha256)
        if model is None:
            if locked and output.exists():  # said once, by the check that decides
                log.info("converting again: %s", why_not)
            return None
        sync_info(output, model.metadata)
        return ConversionOutcome(model, output, cached=True)

    if not force and (outcome := reused(locked=False)) is not None:
        return outcome
    with conversion_lock(output, lock_timeout_s):
        if not force and (outcome := reused(locked=True)) is not None:
            return outcome
        conversion = convert_model(
            source, params, output, verify=verify, export=export, trust_pickles=trust_pickles, weights=weights
        )
        return ConversionOutcome(conversion.model, output, cached=False)


@dataclass
class PyTorchModel:
    model: KerasGraphModule
    path: Path
    converted: bool  # True when this call converted the Keras file


def _reuse(
    stem_path: Path, keras_sha256: str | None, params_sha256: str | None, export: ExportConfig
) -> PyTorchModel | None:
    """The first current conversion beside the model, stored as `export` asks. A verification is not required
    here (main.py reuses unverified files, see docs/running.md); a conversion that took part of its model from a params
    pickle must come from this one."""
    for candidate in pytorch_candidates(stem_path):
        model, why_not = current_conversion(candidate, keras_sha256, export, params_sha256=params_sha256)
        if model is not None:
            log.info("using existing PyTorch model %s", candidate)
            sync_info(candidate, model.metadata)
            return PyTorchModel(model, candidate, converted=False)
        log.warning("not using %s: %s", candidate, why_not)
    return None


def find_or_convert(
    stem_path: Path,
    keras_file: Path | None,
    params: Path | None,
    verify: bool,
    trust_pickles: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    export: ExportConfig | None = None,
) -> PyTorchModel:
    """main.py's rule for a selected model: a current PyTorch file beside it (`<stem>.pth`, `<stem>.pt`,
    `<stem>_converted.pth`) stored as `export` asks, else its Keras file converted now into
    `<stem>_converted.pth`."""
    export = export or ExportConfig()
    params_sha256 = file_sha256(params) if params is not None and params.is_file() else None
    if keras_file is None:
        found = _reuse(stem_path, None, params_sha256, export)
        if found is None:
            raise SelectionError(
                f"{stem_path}: no Keras file to convert and no usable PyTorch file beside it"
                + ("" if export.exact else f" stored as {export.describe()} (conversion.export)")
                + "."
            )
        return found
    found = _reuse(stem_path, file_sha256(keras_file), params_sha256, export)
    if found is not None:
        return found
    log.info(
        "converting %s%s%s",
        keras_file.name,
        " (verifying against Keras)" if verify else "",
        "" if export.exact else f", stored as {export.describe()}",
    )
    outcome = convert_or_reuse(
        keras_file, params, verify=verify, export=export, trust_pickles=trust_pickles, lock_timeout_s=lock_timeout_s
    )
    if outcome.cached:  # another job converted it while we waited for the lock
        log.info("using %s, converted meanwhile by another job", outcome.path)
        return PyTorchModel(outcome.model, outcome.path, converted=False)
    verification = ConversionRecord.from_dict(outcome.model.metadata).verification
    worst = verification.worst() if verification is not None else None
    if verification is not None and worst is not None:
        log.info("verified against %s: max abs diff %.2g", verification.keras, worst[1])
    elif verify:
        log.warning("conversion not verified: %s", verification.skipped if verification else "unknown reason")
    for line in export_cost_lines(outcome.model.metadata):
        log.info("%s", line)
    return PyTorchModel(outcome.model, outcome.path, converted=True)

"""Convert every Keras model file in a folder, in parallel worker processes, reusing current conversions.

Each model runs through conversion.cache.convert_or_reuse (which reuses current conversions and locks per
output), in a pool of spawned processes: TensorFlow, when verification loads it, stays per
process, and each worker's torch threads get an equal share of the cores. A model that fails becomes a
`failed` row with its message; the others go on.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch

from conversion.cache import ConversionOutcome, convert_or_reuse
from conversion.config import ExportConfig
from conversion.messages import stored_as
from conversion.pairing import KERAS_SUFFIXES, default_output_path, find_keras_models, info_path_for, params_pickle_for
from conversion.record import ConversionRecord
from errors import ConversionError, ToolError
from fileio import outputs_apart_from_inputs
from progress import NO_PROGRESS, Progress, ProgressStyle

log = logging.getLogger(__name__)

# convert(source, params or None, output) -> ConversionOutcome; must be picklable (a module-level function
# or a functools.partial of one), since it runs in the worker processes.
ConvertOne = Callable[[Path, Path | None, Path], ConversionOutcome]
NO_WORKER = 0
WORKER_START_TIMEOUT_S = 60.0  # how long started workers wait for the others before taking models


@dataclass
class BatchJob:
    source: Path
    params: Path | None  # the sibling `<stem>.pickle`, when there is one
    output: Path


@dataclass
class BatchRow:
    model: str
    status: str  # converted / cached / failed
    output: str | None
    stored: str | None  # how the weights are stored (conversion.config.ExportConfig.describe): float32, int8, ...
    max_abs_diff: float | None  # worst output's difference to Keras, when the conversion was verified
    seconds: float
    worker_pid: int  # NO_WORKER when the worker died before reporting
    error: str | None = None
    export_error: float | None = None  # worst output's error against the float32 conversion, for a compressed one


def plan_jobs(folder: str | Path, output_dir: str | Path | None = None) -> list[BatchJob]:
    """One job per model file; outputs beside the models or in `output_dir` as `<stem>_converted.pth`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: no such folder.")
    models = find_keras_models(folder)
    if not models:
        raise ConversionError(f"{folder}: no Keras model files ({', '.join('*' + s for s in KERAS_SUFFIXES)}).")
    jobs = []
    for source in models:
        output = default_output_path(source)
        jobs.append(
            BatchJob(
                source, params_pickle_for(source), Path(output_dir) / output.name if output_dir is not None else output
            )
        )
    by_output: dict[Path, list[str]] = {}
    for job in jobs:
        by_output.setdefault(job.output, []).append(job.source.name)
    clashes = [f"{' and '.join(names)} -> {output.name}" for output, names in by_output.items() if len(names) > 1]
    if clashes:
        raise ConversionError(
            f"{folder}: several model files would be converted into the same file "
            f"({'; '.join(clashes)}); convert them one by one with explicit output paths."
        )
    inputs = [path for job in jobs for path in (job.source, job.params)]
    for job in jobs:
        outputs_apart_from_inputs([job.output, info_path_for(job.output)], inputs, ConversionError)
    return jobs


def run_job(convert: ConvertOne, job: BatchJob) -> BatchRow:
    """One model in a worker process: its row, never an exception, so that the other models go on."""
    started = time.perf_counter()
    row = BatchRow(
        model=str(job.source),
        status="failed",
        output=None,
        stored=None,
        max_abs_diff=None,
        seconds=0.0,
        worker_pid=os.getpid(),
    )
    try:
        outcome = convert(job.source, job.params, job.output)
    except ToolError as exc:
        row.error = str(exc)
    except Exception as exc:  # a converter bug on one model must not stop the batch; reported in its row
        row.error = f"{job.source}: unexpected {type(exc).__name__} while converting: {exc}"
    else:
        record = ConversionRecord.from_dict(outcome.model.metadata)
        row.status = "cached" if outcome.cached else "converted"
        row.output = str(outcome.path)
        row.stored = stored_as(record, short=True)
        worst = record.verification.worst() if record.verification is not None else None
        row.max_abs_diff = worst[1] if worst is not None else None
        cost = record.export.worst() if record.export is not None else None
        row.export_error = cost[1] if cost is not None else None
    row.seconds = time.perf_counter() - started
    return row


def start_worker(threads: int, all_started: threading.Barrier) -> None:
    """Worker start: torch would take every core in each worker, `threads` each keeps the workers to one thread
    per core together; and wait for the other workers, so that the first one up (importing torch takes seconds)
    does not take every model of a folder of quick conversions alone."""
    torch.set_num_threads(threads)
    try:
        all_started.wait(timeout=WORKER_START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        pass  # a worker slow to start: the others go on without it


def run_batch(
    jobs: list[BatchJob], convert: ConvertOne, n_jobs: int | None = None, progress: ProgressStyle = NO_PROGRESS
) -> list[BatchRow]:
    """Run the jobs in `n_jobs` spawned processes (default: one per core); rows in the order of `jobs`."""
    cores = os.cpu_count() or 1
    n_workers = max(1, min(n_jobs or cores, len(jobs)))
    rows: dict[int, BatchRow] = {}
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(
            n_workers,
            mp_context=context,
            initializer=start_worker,
            initargs=(max(1, cores // n_workers), context.Barrier(n_workers)),
        ) as pool,
        Progress(len(jobs), "converting models", "model", progress, log) as bar,
    ):
        futures = {pool.submit(run_job, convert, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                rows[i] = future.result()
            except BrokenProcessPool as exc:  # a worker killed (out of memory, signal): its jobs cannot finish
                rows[i] = BatchRow(
                    model=str(jobs[i].source),
                    status="failed",
                    output=None,
                    stored=None,
                    max_abs_diff=None,
                    seconds=0.0,
                    worker_pid=NO_WORKER,
                    error=f"{jobs[i].source}: the worker process died ({exc}).",
                )
            bar.show(last=f"{jobs[i].source.name} {rows[i].status}")
            bar.advance()
    return [rows[i] for i in range(len(jobs))]


def batch_convert(
    model_dir: str | Path,
    output_dir: str | Path | None = None,
    *,
    verify: bool = False,
    export: ExportConfig | None = None,
    force: bool = False,
    trust_pickles: bool = False,
    jobs: int | None = None,
    progress: ProgressStyle = NO_PROGRESS,
) -> list[BatchRow]:
    """Convert (or find current) every Keras model file in `model_dir`, with its sibling `<stem>.pickle`, into
    `output_dir` (default: beside each model), in `jobs` processes (default: one per core).

    One failing model does not stop the others; each row says what happened (converted / cached / failed).
    """
    convert = functools.partial(
        convert_or_reuse, verify=verify, export=export, force=force, trust_pickles=trust_pickles
    )
    return run_batch(plan_jobs(model_dir, output_dir), convert, jobs, progress)


def batch_table(rows: list[BatchRow]) -> str:
    """The final report: one line per model, the failures' messages below, and the counts."""
    header = ("model", "status", "stored", "max diff", "export error", "seconds", "worker")
    lines = [header] + [
        (
            Path(r.model).name,
            r.status,
            r.stored or "-",
            f"{r.max_abs_diff:.2g}" if r.max_abs_diff is not None else "-",
            f"{r.export_error:.2g}" if r.export_error is not None else "-",
            f"{r.seconds:.1f}",
            str(r.worker_pid) if r.worker_pid != NO_WORKER else "-",
        )
        for r in rows
    ]
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.extend(f"\nfailed: {r.error}" for r in rows if r.status == "failed")
    counts = {status: sum(r.status == status for r in rows) for status in ("converted", "cached", "failed")}
    workers = len({r.worker_pid for r in rows if r.worker_pid != NO_WORKER})
    text.append(
        f"\n{len(rows)} models: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + f" ({workers} worker process{'es' if workers != 1 else ''})"
    )
    return "\n".join(text)

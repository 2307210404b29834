"""The work of one sweep run, importable by worker processes and Ray tasks: load the `.pth`, optimize, report.

A run never raises: whatever goes wrong is logged into its run.log and comes back as a failed result, so that
one bad combination never stops the sweep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from errors import SweepError, ToolError
from models.checkpoint import load_converted_model
from pipeline.config import AppConfig
from pipeline.lifecycle import ChosenModel, RelatedModels, check_run, run_lifecycle
from pipeline.run_folder import RunFiles, claim_run_folder, run_log_handler, setup_logging, working_in
from pipeline.summary import RunSummary
from progress import ProgressStyle

log = logging.getLogger("sweep")

# The evaluation figures and facts of a run that the manifest records, in its column order.
FIGURES = (
    "difference",
    "p_spike_stim",
    "p_spike_control",
    "n_trials",
    "initial_difference",
    "ground_truth_difference",
    "final_loss",
    "iterations_run",
    "stopped_because",
    "stimulus_segments",
    "device",
    "seconds",
)


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs for one run; plain picklable data (paths on a filesystem every worker sees)."""

    run_id: str
    config: AppConfig
    model: ChosenModel
    run_dir: Path
    related: RelatedModels = RelatedModels()


def run_task(task: RunTask) -> dict[str, Any]:
    """Run one combination in its folder, through the lifecycle of every run (pipeline.lifecycle); returns its
    manifest columns (status, figures, error). A failure is this run's, never the sweep's."""
    started = time.monotonic()
    files = RunFiles(task.run_dir)
    with _logging_into(files.log):
        log.info("sweep run %s: model %s, seed %d", task.run_id, task.model.stem, task.config.seed)
        claim = claim_run_folder(task.run_dir)
        if claim is None:
            return failed_result(SweepError(f"{task.run_dir}: another live job works in this run folder."))
        try:
            with working_in(task.run_dir, claim):
                model = load_converted_model(task.model.pytorch_path)
                checked = check_run(model, task.model, task.config).with_related(task.related)
                _, summary = run_lifecycle(
                    files, model, task.model, task.config, checked, ProgressStyle("log"), started
                )
        except ToolError as exc:
            log.error("sweep run %s failed: %s", task.run_id, exc)
            return failed_result(exc)
        except Exception as exc:  # a bug or a crash in one run must not end the sweep
            log.exception("sweep run %s failed", task.run_id)
            return failed_result(exc)
    return {"status": "done", "error": "", **_figures(summary)}


def run_task_in_worker(task: RunTask) -> dict[str, Any]:
    """`run_task` in a worker process (local or Ray): console warnings only; the run log gets everything."""
    buffer = setup_logging(quiet=True, verbose=False)
    logging.getLogger().removeHandler(buffer)  # records go straight to the run log instead
    return run_task(task)


def failed_result(exc: BaseException) -> dict[str, Any]:
    """The manifest columns of a run that raised `exc` (our own errors carry their message alone)."""
    message = str(exc) if isinstance(exc, ToolError) else f"{type(exc).__name__}: {exc}"
    return {"status": "failed", "error": " ".join(message.split())}


def _figures(summary: RunSummary) -> dict[str, Any]:
    evaluation = summary.evaluation
    return {
        **{key: evaluation[key] for key in ("difference", "p_spike_stim", "p_spike_control", "n_trials")},
        "initial_difference": summary.evaluation_initial["difference"],
        "ground_truth_difference": summary.ground_truth.get("difference"),
        "final_loss": summary.final_loss,
        "iterations_run": summary.iterations_run,
        "stopped_because": summary.stopped_because,
        "stimulus_segments": ";".join(map(str, summary.stimulus_segments)),
        "device": summary.device,
        "seconds": summary.seconds,
    }


@contextmanager
def _logging_into(path: Path) -> Iterator[None]:
    """Every record of the run (DEBUG and up) also goes to `path` while the run lasts."""
    handler = run_log_handler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()

"""One run's lifecycle, the same for main.py's single run and for each run of a sweep: the chosen model made
ready (found or converted), the run checked before it starts, then in its claimed folder: the inputs written,
optimized, evaluated, the ground truth asked, summary.json / report.md / report.html written — or failed.txt
with the error, so that no later start continues a failed run.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from torch import nn

from conversion.cache import find_or_convert
from errors import ConversionError, ModelFileError, OutputError, PickleFileError, SelectionError
from fileio import write_text_atomic
from neuron import NeuronConfig
from optimization import run_activity_optimization
from optimization.network import resolve_layout
from optimization.run import check_batch_sizes, stimulus_of
from pipeline.config import AppConfig, config_to_yaml
from pipeline.report_page import write_report_page
from pipeline.run_folder import RunFiles
from pipeline.summary import RunSummary, degenerate_warnings, write_report, write_summary
from pipeline.ground_truth_check import check_ground_truth, ground_truth_check
from progress import ProgressStyle
from selection.table import (Candidate, best_candidate, mark_unusable, ranking_text, table_from_csv,
                             table_from_models_dir, usable_candidates)

log = logging.getLogger(__name__)
# Why a ranked model may turn out unusable only when its files are opened.
UNUSABLE_MODEL_ERRORS = (ConversionError, ModelFileError, PickleFileError, SelectionError)


@dataclass(frozen=True)
class ChosenModel:
    """The selected model as a run records it: plain data, so that sweep workers can receive it."""

    stem: str
    source: str  # the Keras file, or the stem path when only a PyTorch file exists
    selection_value: float
    params: Optional[Path]  # the parameters pickle, when there is one
    pytorch_path: Path
    converted: bool  # True when this run (or sweep) converted the Keras file
    rank: Optional[int] = None  # its rank in the results table
    skipped: tuple[dict[str, Any], ...] = ()  # better-ranked models that could not be used: stem, rank, reason
    candidates: int = 0  # rows of the results table
    usable_candidates: int = 0  # of which usable


log = logging.getLogger(__name__)
# Why a ranked model may turn out unusable only when its files are opened.
UNUSABLE_MODEL_ERRORS = (ConversionError, ModelFileError, PickleFileError, SelectionError)


def rank_candidates(config: AppConfig) -> pd.DataFrame:
    """The ranked results table (printed: its top rows); a SelectionError when no row is usable."""
    selection = config.selection
    if selection.results_table is not None:
        table, source = table_from_csv(selection.results_table, selection), str(selection.results_table)
    else:
        table = table_from_models_dir(config.models_dir, selection, config.conversion.trust_pickles)
        source = str(config.models_dir)
    log.info("candidate models ranked by %s (%s, %s):\n%s", selection.metric, selection.reduction,
             selection.goal, ranking_text(table, selection.show_top))
    best = best_candidate(table, source)
    log.info("selected %s (%s = %.6g)", best.stem, selection.metric, best.value)
    return table


def prepare_candidate(candidate: Candidate, config: AppConfig, table: pd.DataFrame) -> tuple[nn.Module, ChosenModel]:
    """The PyTorch model of a row of the results `table`, reused or converted now (under the per-model lock)."""
    pytorch = find_or_convert(candidate.stem_path, candidate.keras_file, candidate.params,
                              verify=config.conversion.verify, trust_pickles=config.conversion.trust_pickles,
                              lock_timeout_s=config.conversion.lock_timeout_s)
    chosen = ChosenModel(stem=candidate.stem, source=str(candidate.keras_file or candidate.stem_path),
                         selection_value=candidate.value, params=candidate.params, pytorch_path=pytorch.path,
                         converted=pytorch.converted, rank=candidate.rank, candidates=len(table),
                         usable_candidates=int(table["usable"].sum()))
    return pytorch.model, chosen


def prepare_best_usable_model(table: pd.DataFrame, config: AppConfig) -> tuple[nn.Module, ChosenModel]:
    """The PyTorch model of the best-ranked usable row. When its files turn out unusable (conversion refused,
    unusable .pth), selection.fallback decides: `stop` raises the same error type, naming the model, the cause and
    the next candidate; `next` takes the next usable row (skipped ones are recorded on the result, and marked
    unusable in `table` with their reason)."""
    usable = usable_candidates(table)
    skipped: list[dict[str, Any]] = []
    for position, candidate in enumerate(usable):
        try:
            model, chosen = prepare_candidate(candidate, config, table)
        except UNUSABLE_MODEL_ERRORS as exc:
            following = usable[position + 1] if position + 1 < len(usable) else None
            if config.selection.fallback == "stop":
                then = (f"The next candidate is {following.stem} (rank {following.rank}, "
                        f"{config.selection.metric} {following.value:.6g}); selection.fallback=next tries it "
                        "and the ones after it." if following is not None else "No other candidate is left.")
                raise type(exc)(f"the best model {candidate.stem} (rank {candidate.rank}) cannot be used: {exc} "
                                f"{then}") from exc
            reason = " ".join(str(exc).split())
            log.warning("skipping %s (rank %d): %s", candidate.stem, candidate.rank, reason)
            skipped.append({"stem": candidate.stem, "rank": candidate.rank, "reason": reason})
            mark_unusable(table, candidate.stem, f"skipped: {reason}")
            continue
        if skipped:
            log.info("using %s (rank %d) instead: %d better-ranked model(s) could not be used", chosen.stem,
                     chosen.rank, len(skipped))
        return model, replace(chosen, skipped=tuple(skipped))
    reasons = "; ".join(f"{entry['stem']}: {entry['reason']}" for entry in skipped)
    raise SelectionError(f"none of the {len(usable)} usable-looking models can be used ({reasons}).")


@dataclass(frozen=True)
class RunCheck:
    """What check_run found: the simulator of the ground truth (None when the model's pickle names none)."""

    neuron: Optional[NeuronConfig]


def check_run(model: nn.Module, chosen: ChosenModel, config: AppConfig) -> RunCheck:
    """Everything a run can refuse before it makes a folder or optimizes anything: the input layout, the sizes
    of its batches, the stimulus, and the ground truth's simulator against the model and the work budget."""
    layout = resolve_layout(model, config.optimization, log)
    check_batch_sizes(config.optimization, layout)
    stimulus_of(config.optimization, layout, config.seed)
    neuron = None
    if config.ground_truth.enabled:
        neuron = check_ground_truth(chosen.params, layout.num_segments, layout.duration_ms,
                                    config.optimization.num_patterns, config.ground_truth.trials,
                                    config.conversion.trust_pickles)
    return RunCheck(neuron)


def run_lifecycle(files: RunFiles, model: nn.Module, chosen: ChosenModel, config: AppConfig, checked: RunCheck,
                  progress: ProgressStyle, started: float, table: pd.DataFrame | None = None,
                  command: str | None = None) -> tuple[Path, RunSummary]:
    """The run in its folder, which the caller holds (run_folder.working_in): its inputs (config.yaml, and the
    ranked `table` when there is one), the optimization, evaluation and ground truth, the summary and reports.
    Any failure leaves failed.txt with its message (a full disk must not hide the error itself) and is raised.
    Returns report.html's path and the summary. `started`: the time.monotonic() at which the run began."""
    try:
        write_text_atomic(files.config, config_to_yaml(config))
        if table is not None:
            write_text_atomic(files.table, table.to_csv(index=False))
        return _optimize_and_report(files, model, chosen, config, checked, progress, started, command)
    except Exception as exc:  # failed means failed: no later start continues this folder
        with contextlib.suppress(OutputError):
            write_text_atomic(files.failed, f"{type(exc).__name__}: {exc}\n")
        raise


def _optimize_and_report(files: RunFiles, model: nn.Module, chosen: ChosenModel, config: AppConfig,
                         checked: RunCheck, progress: ProgressStyle, started: float, command: str | None
                         ) -> tuple[Path, RunSummary]:
    outcome = run_activity_optimization(model, config.optimization, files.folder, device=config.device,
                                        seed=config.seed, logger=logging.getLogger("optimization"),
                                        progress=progress)
    optimized, initial = outcome.evaluation["optimized"], outcome.evaluation["initial"]
    ground_truth = (ground_truth_check(checked.neuron, outcome, config.ground_truth.trials, config.seed, progress)
                    if config.ground_truth.enabled else {"available": False, "reason": "turned off in the config"})
    summary = RunSummary.of_run(chosen, config, outcome, ground_truth, getattr(model, "metadata", {}) or {},
                                degenerate_warnings(initial, optimized, config.optimization.evaluation),
                                command, round(time.monotonic() - started, 2), files.folder)
    for warning in summary.warnings:
        log.warning("warning: %s", warning)
    written = summary.to_dict()
    plots = {**outcome.files, "summary": write_summary(files, written)}
    write_report(files, written, plots)
    return write_report_page(files, written, plots), summary

"""One optimization run: the chosen model in PyTorch, then optimize, evaluate, ask the ground truth, and write
summary.json and report.md into the run folder.

`main.py` calls these for its single run and a sweep for each of its runs, so that both leave the same files.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from torch import nn

from errors import ConversionError, ModelFileError, PickleFileError, SelectionError

from neuron import NeuronConfig
from optimization import run_activity_optimization
from optimization.network import resolve_layout
from optimization.run import check_batch_sizes, stimulus_of
from pipeline.config import AppConfig
from pipeline.ground_truth import check_ground_truth, ground_truth_check
from pipeline.report_page import write_report_page
from pipeline.summary import (CI_KEYS, EVALUATION_KEYS, conversion_record, degenerate_warnings, versions,
                              write_report, write_summary)
from progress import ProgressStyle
from selection.pytorch_model import ensure_pytorch_model
from selection.table import mark_unusable


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


def prepare_model(row, config: AppConfig, table: pd.DataFrame) -> tuple[nn.Module, ChosenModel]:
    """The PyTorch model of a row of the results `table`, reused or converted now (under the per-model lock)."""
    params = Path(row["params"]) if row["params"] else None
    keras_file = Path(row["keras_file"]) if row["keras_file"] else None
    pytorch = ensure_pytorch_model(Path(row["stem_path"]), keras_file, params, verify=config.conversion.verify,
                                   trust_pickles=config.conversion.trust_pickles,
                                   lock_timeout_s=config.conversion.lock_timeout_s)
    chosen = ChosenModel(stem=row["stem"], source=row["keras_file"] or str(row["stem_path"]),
                         selection_value=float(row["value"]), params=params, pytorch_path=pytorch.path,
                         converted=pytorch.converted, rank=None if pd.isna(row["rank"]) else int(row["rank"]),
                         candidates=len(table), usable_candidates=int(table["usable"].sum()))
    return pytorch.model, chosen


def prepare_best_usable_model(table: pd.DataFrame, config: AppConfig) -> tuple[nn.Module, ChosenModel]:
    """The PyTorch model of the best-ranked usable row. When its files turn out unusable (conversion refused,
    unusable .pth), selection.fallback decides: `stop` raises the same error type, naming the model, the cause and
    the next candidate; `next` takes the next usable row (skipped ones are recorded on the result, and marked
    unusable in `table` with their reason)."""
    usable = [row for _, row in table[table["usable"]].iterrows()]
    skipped: list[dict[str, Any]] = []
    for position, row in enumerate(usable):
        try:
            model, chosen = prepare_model(row, config, table)
        except UNUSABLE_MODEL_ERRORS as exc:
            following = usable[position + 1] if position + 1 < len(usable) else None
            if config.selection.fallback == "stop":
                then = (f"The next candidate is {following['stem']} (rank {int(following['rank'])}, "
                        f"{config.selection.metric} {following['value']:.6g}); selection.fallback=next tries it "
                        "and the ones after it." if following is not None else "No other candidate is left.")
                raise type(exc)(f"the best model {row['stem']} (rank {int(row['rank'])}) cannot be used: {exc} "
                                f"{then}") from exc
            reason = " ".join(str(exc).split())
            log.warning("skipping %s (rank %d): %s", row["stem"], int(row["rank"]), reason)
            skipped.append({"stem": row["stem"], "rank": int(row["rank"]), "reason": reason})
            mark_unusable(table, row["stem"], f"skipped: {reason}")
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


def optimize_and_report(model: nn.Module, chosen: ChosenModel, config: AppConfig, checked: RunCheck, run_dir: Path,
                        progress: ProgressStyle, started: float, command: str | None = None
                        ) -> tuple[Path, dict[str, Any]]:
    """Optimize through `model` into `run_dir` (after check_run); returns report.html's path and the summary
    written beside it (and report.md).

    `started` is the time.monotonic() at which the run began (the summary's `seconds` count from it);
    `command` the command line that started the run, recorded to reproduce it.
    """
    neuron = checked.neuron
    outcome = run_activity_optimization(model, config.optimization, run_dir, device=config.device,
                                        seed=config.seed, logger=logging.getLogger("optimization"),
                                        progress=progress)
    optimized, initial = outcome.evaluation["optimized"], outcome.evaluation["initial"]
    ground_truth = (ground_truth_check(neuron, outcome, config.ground_truth.trials, config.seed, progress)
                    if config.ground_truth.enabled else {"available": False, "reason": "turned off in the config"})
    summary = {
        "selected_model": chosen.source,
        "selection_metric": config.selection.metric,
        "selection_reduction": config.selection.reduction,
        "selection_value": chosen.selection_value,
        "selection": {"goal": config.selection.goal, "rank": chosen.rank, "candidates": chosen.candidates,
                      "usable_candidates": chosen.usable_candidates, "fallback": config.selection.fallback,
                      "skipped": list(chosen.skipped)},
        "pytorch_model": str(chosen.pytorch_path),
        "converted": chosen.converted,
        "conversion": conversion_record(getattr(model, "metadata", {}) or {}),
        "device": outcome.device,
        "seed": config.seed,
        "final_loss": outcome.final_loss,
        "iterations_run": outcome.iterations_run,
        "stopped_because": outcome.stopped_because,
        "stimulus_segments": list(outcome.stimulus_segments),
        "stimulus_time_ms": outcome.stimulus_time_ms,
        "response_window_ms": outcome.response_window_ms,
        "evaluation": {**{k: optimized[k] for k in EVALUATION_KEYS}, "details": optimized},
        "evaluation_initial": {**{k: initial[k] for k in EVALUATION_KEYS},
                               **{k: initial[k] for k in CI_KEYS}},
        "ground_truth": ground_truth,
        "warnings": degenerate_warnings(initial, optimized, config.optimization.evaluation),
        "demo_settings_applied": {key: config.demo.settings[key] for key in config.demo.applied},
        "command": command,
        "seconds": round(time.monotonic() - started, 2),
        "versions": versions(outcome.device),
        "run_dir": str(run_dir),
    }
    for warning in summary["warnings"]:
        log.warning("warning: %s", warning)
    files = {**outcome.files, "summary": write_summary(run_dir, summary)}
    write_report(run_dir, summary, files)
    return write_report_page(run_dir, summary, files), summary

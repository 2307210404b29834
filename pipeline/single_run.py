"""One optimization run: the chosen model in PyTorch, then optimize, evaluate, ask the ground truth, and write
summary.json and report.md into the run folder.

`main.py` calls these for its single run and a sweep for each of its runs, so that both leave the same files.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from optimization import run_activity_optimization
from pipeline.config import AppConfig
from pipeline.ground_truth import ground_truth_check
from pipeline.summary import EVALUATION_KEYS, versions, write_report, write_summary
from selection.pytorch_model import ensure_pytorch_model


@dataclass(frozen=True)
class ChosenModel:
    """The selected model as a run records it: plain data, so that sweep workers can receive it."""

    stem: str
    source: str  # the .h5, or the stem path when only a PyTorch file exists
    selection_value: float
    params: Optional[Path]  # the parameters pickle, when there is one
    pytorch_path: Path
    converted: bool  # True when this run (or sweep) converted the .h5


def prepare_model(row, config: AppConfig) -> tuple[nn.Module, ChosenModel]:
    """The PyTorch model of a results-table row, reused or converted now (under the per-model lock)."""
    params = Path(row["params"]) if row["params"] else None
    pytorch = ensure_pytorch_model(Path(row["stem_path"]), params, verify=config.conversion.verify,
                                   trust_pickles=config.conversion.trust_pickles,
                                   lock_timeout_s=config.conversion.lock_timeout_s)
    chosen = ChosenModel(stem=row["stem"], source=row["h5"] or str(row["stem_path"]),
                         selection_value=float(row["value"]), params=params, pytorch_path=pytorch.path,
                         converted=pytorch.converted)
    return pytorch.model, chosen


def optimize_and_report(model: nn.Module, chosen: ChosenModel, config: AppConfig, run_dir: Path, progress: bool,
                        started: float) -> tuple[Path, dict[str, Any]]:
    """Optimize through `model` into `run_dir`; returns report.md's path and the summary written beside it.

    `started` is the time.monotonic() at which the run began (the summary's `seconds` count from it).
    """
    outcome = run_activity_optimization(model, config.optimization, run_dir, device=config.device,
                                        seed=config.seed, logger=logging.getLogger("optimization"),
                                        progress=progress)
    optimized = outcome.evaluation["optimized"]
    ground_truth = (ground_truth_check(chosen.params, outcome, config.ground_truth.trials, config.seed,
                                       config.conversion.trust_pickles)
                    if config.ground_truth.enabled else {"available": False, "reason": "turned off in the config"})
    summary = {
        "selected_model": chosen.source,
        "selection_metric": config.selection.metric,
        "selection_reduction": config.selection.reduction,
        "selection_value": chosen.selection_value,
        "pytorch_model": str(chosen.pytorch_path),
        "converted": chosen.converted,
        "device": outcome.device,
        "seed": config.seed,
        "final_loss": outcome.final_loss,
        "iterations_run": outcome.iterations_run,
        "stopped_because": outcome.stopped_because,
        "stimulus_segments": list(outcome.stimulus_segments),
        "stimulus_time_ms": outcome.stimulus_time_ms,
        "evaluation": {**{k: optimized[k] for k in EVALUATION_KEYS}, "details": optimized},
        "evaluation_initial": {k: outcome.evaluation["initial"][k] for k in EVALUATION_KEYS},
        "ground_truth": ground_truth,
        "seconds": round(time.monotonic() - started, 2),
        "versions": versions(),
        "run_dir": str(run_dir),
    }
    files = {**outcome.files, "summary": write_summary(run_dir, summary)}
    return write_report(run_dir, summary, files), summary

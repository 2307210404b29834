"""`summary.json` (the machine-readable result of a run) and `report.md` (the page a person opens)."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fileio import write_text_atomic

EVALUATION_KEYS = ("p_spike_stim", "p_spike_control", "difference", "n_trials")


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def _finite(value: Any) -> Any:
    """NaN/Inf become null, so that summary.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = run_dir / "summary.json"
    write_text_atomic(path, json.dumps(_finite(summary), indent=2, default=str, allow_nan=False) + "\n")
    return path


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_report(run_dir: Path, summary: dict[str, Any], files: dict[str, Path]) -> Path:
    """A Markdown page: what was chosen, how the optimization went, the evaluation, and the plots."""
    evaluation = summary["evaluation"]
    initial = summary.get("evaluation_initial", {})
    lines = [
        f"# Activity optimization — {Path(summary['selected_model']).name}", "",
        f"- Selected by `{summary['selection_metric']}` = {_fmt(summary['selection_value'])}",
        f"- PyTorch model: `{summary['pytorch_model']}` ({'converted for this run' if summary['converted'] else 'reused'})",
        f"- Device: {summary['device']}; iterations: {summary['iterations_run']} "
        f"(stopped: {summary['stopped_because']}); final loss {_fmt(summary['final_loss'])}; {summary['seconds']:.1f} s",
        "", "| | P(spike \\| stim) | P(spike \\| control) | difference | trials |", "|---|---|---|---|---|",
    ]
    for label, figures in (("initial rates", initial), ("optimized rates", evaluation)):
        if figures:
            lines.append(f"| {label} | " + " | ".join(_fmt(figures[k]) for k in EVALUATION_KEYS) + " |")
    ground_truth = summary.get("ground_truth")
    if isinstance(ground_truth, dict) and "p_spike_stim" in ground_truth:
        lines.append("| ground truth (simulated neuron, optimized rates) | "
                     + " | ".join(_fmt(ground_truth[k]) for k in EVALUATION_KEYS) + " |")
    plots = [(name, path) for name, path in files.items() if str(path).endswith(".png")]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({Path(path).name})" for name, path in plots]
    lines += ["", "Files: " + ", ".join(f"`{Path(p).name}`" for p in files.values()), ""]
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path

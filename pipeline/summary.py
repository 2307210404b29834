"""`summary.json` (the machine-readable result of a run), its warnings, and `report.md`.

The self-contained page a person opens, report.html, is pipeline.report_page's.
"""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conversion import CONVERTER_VERSION
from conversion.verify import worst_output
from fileio import write_text_atomic

EVALUATION_KEYS = ("p_spike_stim", "p_spike_control", "difference", "n_trials")
CI_KEYS = ("p_spike_stim_ci", "p_spike_control_ci", "difference_ci")


def versions(device: str = "cpu") -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
             "converter": CONVERTER_VERSION, "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        found["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return found


def conversion_record(metadata: dict[str, Any]) -> dict[str, Any]:
    """What the run's PyTorch model records of its conversion: verified against Keras (the figures) or why not."""
    verification = metadata.get("verification") or {}
    worst = worst_output(verification)
    record: dict[str, Any] = {"source_sha256": metadata.get("source_sha256"), "dtype": metadata.get("dtype"),
                              "converter_version": metadata.get("converter_version"),
                              "resolved_activations": metadata.get("resolved_activations") or []}
    if worst is not None:
        record.update(verified=True, keras=verification.get("keras"), input=verification.get("input"),
                      compared_with=verification.get("keras_model", "loaded from the file"),
                      max_abs_diff={name: o["max_abs_diff"] for name, o in verification["outputs"].items()})
    else:
        record.update(verified=False, not_verified_because=verification.get("skipped") or (
            "the conversion was not compared with Keras (conversion.verify is off, or the PyTorch file was "
            "made without --verify)"))
    return record


def degenerate_warnings(initial: dict[str, Any], optimized: dict[str, Any], evaluation_config) -> list[str]:
    """What makes a run's result unreliable, each with what to try: no trial reached the spike threshold, or the
    optimized difference is not significantly above the initial one (their confidence intervals overlap)."""
    warnings = []
    threshold = evaluation_config.spike_threshold
    level = f"{evaluation_config.confidence:.0%}"
    highest = max(optimized.get("max_prob_stim", 0.0), optimized.get("max_prob_control", 0.0))
    if optimized["p_spike_stim"] == 0 and optimized["p_spike_control"] == 0:
        warnings.append(
            f"no evaluation trial reached the spike threshold ({threshold:g}): the highest spike probability the "
            f"model gave in the response window was {highest:.3g}. The model may be untrained or not a spike "
            "model at this output (optimization.spike_output_index); try more iterations "
            "(optimization.loop.max_iterations), a higher learning rate, or a lower "
            "optimization.evaluation.spike_threshold.")
    if optimized["p_spike_control"] >= 0.95 and optimized["p_spike_stim"] >= 0.95:
        warnings.append(
            f"both copies spike in nearly every trial (P(spike | control) {optimized['p_spike_control']:.3f}, "
            f"P(spike | stim) {optimized['p_spike_stim']:.3f}): the model fires whatever the stimulus does. Its "
            "spike output may be saturated at these rates, or not a spike probability at all "
            "(optimization.spike_output_index); try lower rates (optimization.constraints.max_rate, "
            "optimization.initial_rates) or another model.")
    low_optimized, high_initial = optimized["difference_ci"][0], initial["difference_ci"][1]
    if low_optimized <= high_initial:
        warnings.append(
            f"the optimized difference P(spike | stim) - P(spike | control) = {optimized['difference']:.3f} "
            f"({level} CI {optimized['difference_ci'][0]:.3f} to {optimized['difference_ci'][1]:.3f}) is not "
            f"significantly above the initial {initial['difference']:.3f} (CI up to {high_initial:.3f}): the "
            "optimization changed nothing measurable. Try more iterations, a higher learning rate, other "
            "stimulus segments, or more evaluation trials (optimization.evaluation.trials_per_pattern).")
    return warnings


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
    lines = [f"# Activity optimization — {Path(summary['selected_model']).name}", ""]
    for warning in summary.get("warnings", []):
        lines += [f"> **Warning:** {warning}", ""]
    lines += [
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
    lines += ["", "Files: " + ", ".join(f"`{Path(p).name}`" for p in files.values()) + ", `report.html`", ""]
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path

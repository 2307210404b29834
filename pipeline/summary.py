"""The run summary (a typed record, serialized as `summary.json`), its warnings, and `report.md`.

The self-contained page a person opens, report.html, is pipeline.report_page's; both render the serialized
summary.
"""
from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from conversion import CONVERTER_VERSION
from conversion.record import ConversionRecord
from fileio import write_text_atomic
from pipeline.run_folder import RunFiles

EVALUATION_KEYS = ("p_spike_stim", "p_spike_control", "difference", "n_trials")
CI_KEYS = ("p_spike_stim_ci", "p_spike_control_ci", "difference_ci")


def versions(device: str = "cpu") -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
             "converter": CONVERTER_VERSION, "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        found["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return found


def conversion_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """What the run's PyTorch model records of its conversion: verified against Keras (the figures) or why not."""
    try:
        record: ConversionRecord | None = ConversionRecord.from_dict(metadata)
    except (KeyError, TypeError):  # a model without our record (built in code)
        record = None
    verification = record.verification if record is not None else None
    summary: dict[str, Any] = {
        "source_sha256": record.source_sha256 if record else None, "dtype": record.dtype if record else None,
        "converter_version": record.converter_version if record else None,
        "resolved_activations": record.resolved_activations if record else []}
    if verification is not None and verification.worst() is not None:
        summary.update(verified=True, keras=verification.keras, input=verification.input,
                       compared_with=verification.keras_model,
                       max_abs_diff={name: o.max_abs_diff for name, o in verification.outputs.items()})
    else:
        summary.update(verified=False, not_verified_because=(verification.skipped if verification else None) or (
            "the conversion was not compared with Keras (conversion.verify is off, or the PyTorch file was "
            "made without --verify)"))
    return summary


@dataclass
class RunSummary:
    """The result of one run, as summary.json holds it (see README for each key)."""

    selected_model: str
    selection_metric: str
    selection_reduction: str
    selection_value: float
    selection: dict[str, Any]
    pytorch_model: str
    converted: bool
    conversion: dict[str, Any]
    device: str
    seed: int
    final_loss: float
    iterations_run: int
    stopped_because: str
    stimulus_segments: list[int]
    stimulus_time_ms: int
    response_window_ms: int
    evaluation: dict[str, Any]
    evaluation_initial: dict[str, Any]
    ground_truth: dict[str, Any]
    warnings: list[str]
    demo_settings_applied: dict[str, Any]
    command: Optional[str]
    seconds: float
    versions: dict[str, str]
    run_dir: str

    @classmethod
    def of_run(cls, chosen, config, outcome, ground_truth: dict[str, Any], metadata: dict[str, Any],
               warnings: list[str], command: Optional[str], seconds: float, run_dir: Path) -> "RunSummary":
        """The summary of a finished run: the chosen model (pipeline.lifecycle.ChosenModel), its config, the
        optimization's outcome, the ground truth and the conversion record of the model it used."""
        optimized, initial = outcome.evaluation["optimized"], outcome.evaluation["initial"]
        return cls(
            selected_model=chosen.source, selection_metric=config.selection.metric,
            selection_reduction=config.selection.reduction, selection_value=chosen.selection_value,
            selection={"goal": config.selection.goal, "rank": chosen.rank, "candidates": chosen.candidates,
                       "usable_candidates": chosen.usable_candidates, "fallback": config.selection.fallback,
                       "skipped": list(chosen.skipped)},
            pytorch_model=str(chosen.pytorch_path), converted=chosen.converted,
            conversion=conversion_summary(metadata), device=outcome.device, seed=config.seed,
            final_loss=outcome.final_loss, iterations_run=outcome.iterations_run,
            stopped_because=outcome.stopped_because, stimulus_segments=list(outcome.stimulus_segments),
            stimulus_time_ms=outcome.stimulus_time_ms, response_window_ms=outcome.response_window_ms,
            evaluation={**{k: optimized[k] for k in EVALUATION_KEYS}, "details": optimized},
            evaluation_initial={**{k: initial[k] for k in EVALUATION_KEYS}, **{k: initial[k] for k in CI_KEYS}},
            ground_truth=ground_truth, warnings=warnings,
            demo_settings_applied={key: config.demo.settings[key] for key in config.demo.applied},
            command=command, seconds=seconds, versions=versions(outcome.device), run_dir=str(run_dir))

    def to_dict(self) -> dict[str, Any]:
        """summary.json's content: NaN/Inf become null, so that it is strict JSON."""
        return _finite({name: getattr(self, name) for name in self.__dataclass_fields__})


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


def write_summary(files: RunFiles, summary: dict[str, Any]) -> Path:
    """summary.json of a run folder from the serialized summary."""
    write_text_atomic(files.summary, json.dumps(summary, indent=2, default=str, allow_nan=False) + "\n")
    return files.summary


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_report(run_files: RunFiles, summary: dict[str, Any], files: dict[str, Path]) -> Path:
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
    write_text_atomic(run_files.report_md, "\n".join(lines))
    return run_files.report_md

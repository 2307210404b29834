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
from typing import Any

import numpy as np
import torch

from conversion.messages import export_cost_lines, stored_as
from conversion.record import ConversionRecord
from fileio import write_text_atomic
from pipeline.run_folder import RunFiles
from version import VERSION

EVALUATION_KEYS = ("p_spike_stim", "p_spike_control", "difference", "n_trials")
CI_KEYS = ("p_spike_stim_ci", "p_spike_control_ci", "difference_ci")
# the model's own estimates of P(a spike) in the window, and outside it: P(a threshold crossing) and the estimate
OUTSIDE_KEYS = (
    "expected_spike_stim",
    "expected_spike_control",
    "p_outside_stim",
    "p_outside_control",
    "expected_outside_spike_stim",
    "expected_outside_spike_control",
)


def versions(device: str = "cpu") -> dict[str, str]:
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "neuron_tcn": VERSION,
        "platform": platform.platform(),
    }
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
        "source_sha256": record.source_sha256 if record else None,
        "dtype": record.dtype if record else None,
        "converter_version": record.converter_version if record else None,
        "resolved_activations": record.resolved_activations if record else [],
        "stored": stored_as(record) if record else None,
        "export_cost": export_cost_lines(metadata) if record else [],
        "export": record.export.to_dict() if record and record.export else None,
    }
    if verification is not None and verification.worst() is not None:
        summary.update(
            verified=True,
            keras=verification.keras,
            input=verification.input,
            compared_with=verification.keras_model,
            max_abs_diff={name: o.max_abs_diff for name, o in verification.outputs.items()},
        )
    else:
        summary.update(
            verified=False,
            not_verified_because=(verification.skipped if verification else None)
            or (
                "the conversion was not compared with Keras (conversion.verify is off, or the PyTorch file was "
                "made without --verify)"
            ),
        )
    return summary


@dataclass
class RunSummary:
    """The result of one run, as summary.json holds it (docs/running.md describes each key)."""

    version: str  # of this tool
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
    regime_distance: dict[str, Any] | None
    refinement: dict[str, Any] | None
    transfer: list[dict[str, Any]]
    ensemble: list[str]
    max_rate: float
    demo_settings_applied: dict[str, Any]
    command: str | None
    seconds: float
    versions: dict[str, str]
    run_dir: str

    @classmethod
    def of_run(
        cls,
        chosen,
        config,
        outcome,
        ground_truth: dict[str, Any],
        metadata: dict[str, Any],
        warnings: list[str],
        command: str | None,
        seconds: float,
        run_dir: Path,
        refinement: dict[str, Any] | None = None,
        transfer: list[dict[str, Any]] | None = None,
        ensemble: list[str] | None = None,
    ) -> RunSummary:
        """The summary of a finished run: the chosen model (pipeline.lifecycle.ChosenModel), its config, the
        optimization's outcome, the ground truth, the refinement rounds, the transfer table and the conversion
        record of the model it used."""
        optimized, initial = outcome.evaluation["optimized"], outcome.evaluation["initial"]
        return cls(
            version=VERSION,
            selected_model=chosen.source,
            selection_metric=config.selection.metric,
            selection_reduction=config.selection.reduction,
            selection_value=chosen.selection_value,
            selection={
                "goal": config.selection.goal,
                "rank": chosen.rank,
                "candidates": chosen.candidates,
                "usable_candidates": chosen.usable_candidates,
                "fallback": config.selection.fallback,
                "skipped": list(chosen.skipped),
            },
            pytorch_model=str(chosen.pytorch_path),
            converted=chosen.converted,
            conversion=conversion_summary(metadata),
            device=outcome.device,
            seed=config.seed,
            final_loss=outcome.final_loss,
            iterations_run=outcome.iterations_run,
            stopped_because=outcome.stopped_because,
            stimulus_segments=list(outcome.stimulus_segments),
            stimulus_time_ms=outcome.stimulus_time_ms,
            response_window_ms=outcome.response_window_ms,
            evaluation={**{k: optimized[k] for k in (*EVALUATION_KEYS, *OUTSIDE_KEYS)}, "details": optimized},
            evaluation_initial={
                **{k: initial[k] for k in (*EVALUATION_KEYS, *OUTSIDE_KEYS)},
                **{k: initial[k] for k in CI_KEYS},
            },
            ground_truth=ground_truth,
            warnings=warnings,
            regime_distance=outcome.evaluation.get("regime_distance"),
            refinement=refinement,
            transfer=transfer or [],
            ensemble=ensemble or [],
            max_rate=outcome.max_rate,
            demo_settings_applied={key: config.demo.settings[key] for key in config.demo.applied},
            command=command,
            seconds=seconds,
            versions=versions(outcome.device),
            run_dir=str(run_dir),
        )

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
            "optimization.evaluation.spike_threshold."
        )
    if optimized["p_spike_control"] >= 0.95 and optimized["p_spike_stim"] >= 0.95:
        warnings.append(
            f"both copies spike in nearly every trial (P(spike | control) {optimized['p_spike_control']:.3f}, "
            f"P(spike | stim) {optimized['p_spike_stim']:.3f}): the model fires whatever the stimulus does. Its "
            "spike output may be saturated at these rates, or not a spike probability at all "
            "(optimization.spike_output_index); try lower rates (optimization.constraints.max_rate, "
            "optimization.initial_rates) or another model."
        )
    low_optimized, high_initial = optimized["difference_ci"][0], initial["difference_ci"][1]
    if low_optimized <= high_initial:
        warnings.append(
            f"the optimized difference P(spike | stim) - P(spike | control) = {optimized['difference']:.3f} "
            f"({level} CI {optimized['difference_ci'][0]:.3f} to {optimized['difference_ci'][1]:.3f}) is not "
            f"significantly above the initial {initial['difference']:.3f} (CI up to {high_initial:.3f}): the "
            "optimization changed nothing measurable. Try more iterations, a higher learning rate, other "
            "stimulus segments, or more evaluation trials (optimization.evaluation.trials_per_pattern)."
        )
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
        "",
        "| | P(spike \\| stim) | P(spike \\| control) | difference | trials |",
        "|---|---|---|---|---|",
    ]
    for label, figures in (("initial rates", initial), ("optimized rates", evaluation)):
        if figures:
            lines.append(f"| {label} | " + " | ".join(_fmt(figures[k]) for k in EVALUATION_KEYS) + " |")
    ground_truth = summary.get("ground_truth")
    if isinstance(ground_truth, dict) and "p_spike_stim" in ground_truth:
        lines.append(
            f"| ground truth ({ground_truth.get('simulator', 'simulated neuron')}, optimized rates) | "
            + " | ".join(_fmt(ground_truth[k]) for k in EVALUATION_KEYS)
            + " |"
        )
    lines += _extra_sections(summary)
    plots = [(name, path) for name, path in files.items() if str(path).endswith(".png")]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({Path(path).name})" for name, path in plots]
    lines += ["", "Files: " + ", ".join(f"`{Path(p).name}`" for p in files.values()) + ", `report.html`", ""]
    write_text_atomic(run_files.report_md, "\n".join(lines))
    return run_files.report_md


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_fmt(cell[0] if isinstance(cell, tuple) else cell) for cell in row) + " |" for row in rows
    ]


def _extra_sections(summary: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for title, note, header, rows in extra_tables(summary):
        lines += ["", f"## {title}", "", note, "", *_table(header, rows)]
    return lines


def _figure(summary: dict[str, Any], key: str) -> tuple[Any, str] | str:
    """(value, key) of a summary figure by its dotted key (list items by index), or a dash when absent."""
    value: Any = summary
    for part in key.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return "—"
    return (value, key)


def extra_tables(summary: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[Any]]]]:
    """The report's tables beyond the main result, as (title, note, header, rows) for report.md and report.html;
    a figure cell is (value, its dotted summary key): spike probabilities in and outside the window, distance from
    the training regime, refinement rounds, transfer to other models."""
    tables = []
    rows = []
    for label, prefix in (
        ("surrogate, initial rates", "evaluation_initial"),
        ("surrogate, optimized rates", "evaluation"),
        ("ground truth, initial rates", "ground_truth.initial"),
        ("ground truth, optimized rates", "ground_truth"),
    ):
        if _figure(summary, f"{prefix}.p_outside_control") == "—":
            continue
        if prefix.startswith("ground_truth"):
            keys = ("p_spike_control", "p_spike_stim", "p_outside_control", "p_outside_stim", None, None)
        else:
            keys = (
                "expected_spike_control",
                "expected_spike_stim",
                "expected_outside_spike_control",
                "expected_outside_spike_stim",
                "p_outside_control",
                "p_outside_stim",
            )
        rows.append([label, *(_figure(summary, f"{prefix}.{key}") if key else "—" for key in keys)])
    tables.append(
        (
            "Spike probability in and outside the window",
            "For the simulated neuron, P(any spike); for the surrogate, its own estimate of that, "
            "1 - prod(1 - p) over the ms (the result table counts threshold crossings instead, which a "
            "model calibrated on jittered spikes rarely reaches), and its threshold crossings outside.",
            [
                "",
                "window, control",
                "window, stimulated",
                "outside, control",
                "outside, stimulated",
                "outside crossings, control",
                "outside crossings, stimulated",
            ],
            rows,
        )
    )
    distance = summary.get("regime_distance")
    if distance:
        keys = [key for key, value in distance["optimized"].items() if isinstance(value, (int, float))]
        tables.append(
            (
                "Distance from the training regime",
                f"Regime: {distance['optimized'].get('regime_source', '')}",
                ["", *keys],
                [[name, *(_figure(summary, f"regime_distance.{name}.{key}") for key in keys)] for name in distance],
            )
        )
    refinement = summary.get("refinement")
    if refinement:
        columns = (
            ("surrogate", "p_spike_stim"),
            ("surrogate", "p_spike_control"),
            ("surrogate", "expected_spike_stim"),
            ("surrogate", "expected_spike_control"),
            ("ground_truth", "p_spike_stim"),
            ("ground_truth", "p_spike_control"),
            ("ground_truth", "difference"),
            ("ground_truth", "p_outside_control"),
            ("gap", "expected_spike_stim"),
            ("gap", "expected_spike_control"),
        )
        rows = [
            [
                (record["round"], f"refinement.rounds.{index}.round"),
                *(_figure(summary, f"refinement.rounds.{index}.{part}.{key}") for part, key in columns),
            ]
            for index, record in enumerate(refinement["rounds"])
        ]
        tables.append(
            (
                "Closed-loop refinement",
                "Round 0: the converted model; round k: optimized again through "
                "the model fine-tuned on the simulated neuron's answers (refine_r<k>/). Surrogate: "
                "threshold crossings, then its own estimate; the gap is that estimate's.",
                [
                    "round",
                    "surrogate P(stim)",
                    "surrogate P(ctrl)",
                    "estimate P(stim)",
                    "estimate P(ctrl)",
                    "truth P(stim)",
                    "truth P(ctrl)",
                    "truth difference",
                    "truth outside (ctrl)",
                    "gap P(stim)",
                    "gap P(ctrl)",
                ],
                rows,
            )
        )
    transfer = summary.get("transfer")
    if transfer:
        rows = []
        for index, row in enumerate(transfer):
            keys = (
                ("initial_difference", "optimized_p_spike_stim", "optimized_p_spike_control", "optimized_difference")
                if row["available"]
                else ()
            )
            rows.append(
                [
                    _figure(summary, f"transfer.{index}.rank"),
                    row["stem"],
                    *(_figure(summary, f"transfer.{index}.{key}") for key in keys),
                    *(() if row["available"] else ("—", "—", "—", row["reason"])),
                ]
            )
        tables.append(
            (
                "Transfer to other models",
                "The same initial and optimized rates evaluated through the other usable models of the results table.",
                [
                    "rank",
                    "model",
                    "initial difference",
                    "optimized P(stim)",
                    "optimized P(ctrl)",
                    "optimized difference",
                ],
                rows,
            )
        )
    return tables

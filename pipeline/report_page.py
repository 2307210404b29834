"""report.html: one self-contained page per run (and per sweep) that opens from its folder in any browser.

Plots are embedded as base64 PNG, so the page can be mailed or moved alone. Every figure taken from summary.json
carries its key and exact value (`data-key`, `data-value`), so that the page can be checked against the summary.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fileio import write_text_atomic
from pipeline.run_folder import RunFiles
from pipeline.summary import extra_tables

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.warning { background: #fff3cd; border: 1px solid #e0a800; padding: 0.6rem 1rem; margin: 0.5rem 0; }
.muted { color: #666; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; }
figure { margin: 1rem 0; } img { max-width: 100%; border: 1px solid #ddd; }
"""


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure_cell(value: Any, key: str, digits: int = 3) -> str:
    """A table cell showing a summary figure, with its summary key and exact value as attributes."""
    if value is None:
        return f'<td data-key="{escape(key)}" data-value="null">–</td>'
    shown = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return f'<td data-key="{escape(key)}" data-value="{escape(json.dumps(value))}">{escape(shown)}</td>'


def interval_text(interval: Any) -> str:
    return f" ({interval[0]:.3f}–{interval[1]:.3f})" if isinstance(interval, (list, tuple)) else ""


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """Rows of ready cells (`<td>...</td>` strings)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>" + "".join(f"<tr>{''.join(r)}</tr>" for r in rows) + "</table>"


def text_cell(value: Any) -> str:
    return f"<td>{escape(value)}</td>"


def embedded_png(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{escape(caption)}" data-file="{escape(path.name)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def page(title: str, sections: Iterable[str]) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def warnings_block(warnings: list[str]) -> str:
    return "".join(f'<div class="warning"><strong>Warning:</strong> {escape(w)}</div>' for w in warnings)


def _result_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    details = summary["evaluation"].get("details", {})
    for label, prefix, figures, intervals in (
        (
            "surrogate, initial rates",
            "evaluation_initial",
            summary.get("evaluation_initial", {}),
            summary.get("evaluation_initial", {}),
        ),
        ("surrogate, optimized rates", "evaluation", summary["evaluation"], details),
        ("ground truth, optimized rates", "ground_truth", summary.get("ground_truth", {}), {}),
    ):
        if "p_spike_stim" not in figures:
            continue
        cells = [text_cell(label)]
        for key in ("p_spike_stim", "p_spike_control", "difference"):
            cell = figure_cell(figures[key], f"{prefix}.{key}")
            cells.append(cell.replace("</td>", escape(interval_text(intervals.get(f"{key}_ci"))) + "</td>"))
        cells.append(figure_cell(figures["n_trials"], f"{prefix}.n_trials"))
        rows.append(cells)
    return rows


def _selection_section(summary: dict[str, Any]) -> str:
    selection = summary.get("selection", {})
    rank, value = selection.get("rank"), summary["selection_value"]
    lines = [
        f"<p><code>{escape(summary['selected_model'])}</code></p><ul>",
        f"<li>why: best by {escape(summary['selection_reduction'])} of <code>"
        f"{escape(summary['selection_metric'])}</code> ({escape(selection.get('goal', 'minimize'))}): "
        f"{value:.6g}; rank {escape(rank)} of "
        f"{escape(selection.get('usable_candidates'))} usable among {escape(selection.get('candidates'))} "
        "candidates (results_table.csv lists them all)</li>",
    ]
    for skipped in selection.get("skipped", []):
        lines.append(
            f"<li>skipped rank {escape(skipped['rank'])} <code>{escape(skipped['stem'])}</code>: "
            f"{escape(skipped['reason'])}</li>"
        )
    return "<h2>Selected model</h2>" + "".join(lines) + "</ul>"


def _conversion_section(summary: dict[str, Any]) -> str:
    conversion = summary.get("conversion", {})
    how = "converted for this run" if summary.get("converted") else "reused"
    lines = [f"<p><code>{escape(summary['pytorch_model'])}</code> ({how})</p>"]
    if conversion.get("verified"):
        diffs = ", ".join(f"{name} {value:.2g}" for name, value in conversion["max_abs_diff"].items())
        lines.append(
            f"<p>verified against {escape(conversion.get('keras'))} ({escape(conversion.get('compared_with'))})"
            f" on {escape(conversion.get('input'))}: max abs diff {escape(diffs)}</p>"
        )
    else:
        lines.append(f"<p>not verified: {escape(conversion.get('not_verified_because', 'unknown'))}</p>")
    if conversion.get("export"):
        lines.append(
            f"<p>stored as {escape(conversion['stored'])}, not as the exact float32 conversion; its "
            "measured cost:</p><ul>"
            + "".join(f"<li>{escape(line)}</li>" for line in conversion["export_cost"])
            + "</ul>"
        )
    for resolved in conversion.get("resolved_activations", []):
        lines.append(
            f"<p>layer <code>{escape(resolved['layer'])}</code>: activation stored as a Python function, "
            f"resolved from the architecture_dict as '{escape(resolved['recorded'])}'</p>"
        )
    return "<h2>PyTorch model</h2>" + "".join(lines)


def _run_section(summary: dict[str, Any]) -> str:
    rows = [
        [text_cell("stimulus segments"), text_cell(", ".join(map(str, summary["stimulus_segments"])))],
        [text_cell("stimulus time (ms)"), figure_cell(summary["stimulus_time_ms"], "stimulus_time_ms")],
        [text_cell("response window (ms)"), figure_cell(summary.get("response_window_ms"), "response_window_ms")],
        [text_cell("device"), text_cell(summary["device"])],
        [text_cell("iterations"), figure_cell(summary["iterations_run"], "iterations_run")],
        [text_cell("stopped because"), text_cell(summary["stopped_because"])],
        [text_cell("final loss"), figure_cell(summary["final_loss"], "final_loss", 4)],
        [text_cell("seed"), figure_cell(summary["seed"], "seed")],
        [text_cell("seconds"), figure_cell(summary["seconds"], "seconds", 1)],
    ]
    demo = summary.get("demo_settings_applied") or {}
    if demo:
        rows.append(
            [text_cell("demo settings applied"), text_cell(", ".join(f"{key}={value}" for key, value in demo.items()))]
        )
    return "<h2>Run</h2>" + table(["", ""], rows)


def _ground_truth_note(summary: dict[str, Any]) -> str:
    truth = summary.get("ground_truth", {})
    if truth.get("available"):
        return (
            f"<p class=muted>Ground truth: {escape(truth.get('simulator', 'the simulated neuron'))}, the neuron "
            "the model imitates, driven by trials sampled from the initial and optimized rates (control and "
            "stimulated copies share every other spike).</p>"
        )
    return f"<p class=muted>Ground truth: not available ({escape(truth.get('reason', 'unknown'))}).</p>"


def write_report_page(run_files: RunFiles, summary: dict[str, Any], files: dict[str, Path]) -> Path:
    """report.html of a run, from its serialized summary, its plots and its config.yaml."""
    plots = [
        embedded_png(Path(path), name.removeprefix("plot_").replace("_", " "))
        for name, path in files.items()
        if str(path).endswith(".png") and Path(path).is_file()
    ]
    config_path = run_files.config
    config_text = config_path.read_text() if config_path.is_file() else f"({config_path.name} missing)"
    sections = [
        warnings_block(summary.get("warnings", [])),
        "<h2>Result</h2>"
        + table(["", "P(spike | stim)", "P(spike | control)", "difference", "trials"], _result_rows(summary))
        + _ground_truth_note(summary),
        *(
            f"<h2>{escape(title)}</h2><p class=muted>{escape(note)}</p>"
            + table(
                header,
                [[figure_cell(*cell) if isinstance(cell, tuple) else text_cell(cell) for cell in row] for row in rows],
            )
            for title, note, header, rows in extra_tables(summary)
        ),
        _selection_section(summary),
        _conversion_section(summary),
        _run_section(summary),
        "<h2>Plots</h2>" + ("".join(plots) if plots else "<p>no plots (optimization.report.plots is off)</p>"),
        "<h2>Reproduce</h2>"
        + (f"<pre>{escape(summary['command'])}</pre>" if summary.get("command") else "")
        + f"<p>with this config (<code>config.yaml</code> in the run folder):</p><pre>{escape(config_text)}</pre>",
        "<h2>Versions</h2>"
        + table(["", ""], [[text_cell(k), text_cell(v)] for k, v in summary.get("versions", {}).items()]),
        "<p class=muted>Files: " + escape(", ".join(sorted(Path(p).name for p in files.values()))) + "</p>",
    ]
    path = run_files.report_html
    write_text_atomic(path, page(f"Activity optimization — {Path(summary['selected_model']).name}", sections))
    return path

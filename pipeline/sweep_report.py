"""What a sweep shows: the figures of its runs averaged across seeds, seed-averaged rate heatmaps, a report page.

Files in the sweep folder: aggregate.csv and aggregate.md (mean and sample s.d. across seeds of each evaluation
figure, per model, stimulus set and overridden setting), heatmaps/*.png, report.md and report.html (the
self-contained page: heatmaps embedded, each run linked to its own report.html).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fileio import write_text_atomic
from optimization.report import draw_rate_panel, new_figure, save_figure, segment_groups
from pipeline.config import SweepConfig
from pipeline.report_page import embedded_png, escape, page, table, text_cell
from pipeline.run_folder import RUN_FILE_NAMES, RunFiles, short_model_name

log = logging.getLogger("sweep")

# Figures averaged across seeds: (manifest column, Markdown heading, where \| is a "|" inside a table cell).
AGGREGATED = (
    ("difference", "P(spike \\| stim) − P(spike \\| control)"),
    ("p_spike_stim", "P(spike \\| stim)"),
    ("p_spike_control", "P(spike \\| control)"),
    ("initial_difference", "initial difference"),
    ("ground_truth_difference", "ground-truth difference"),
    ("final_loss", "final loss"),
)


def aggregate(manifest: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """One row per group: runs done and failed, the seeds done, and mean / sd (ddof=1) of each figure."""
    rows = []
    for key, group in manifest.groupby(group_keys, sort=False, dropna=False):
        done = group[group["status"] == "done"]
        row = {
            **dict(zip(group_keys, key)),
            "runs_done": len(done),
            "runs_failed": len(group) - len(done),
            "seeds": " ".join(str(seed) for seed in done["seed"]),
        }
        for column, _ in AGGREGATED:
            values = pd.to_numeric(done[column], errors="coerce").dropna()
            row[f"{column}_mean"] = values.mean() if len(values) else math.nan
            row[f"{column}_sd"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_sd(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def markdown_table(table: pd.DataFrame, group_keys: list[str]) -> str:
    """The aggregate as a Markdown table; figures never measured in the sweep (all empty) are left out."""
    shown = [(column, heading) for column, heading in AGGREGATED if table[f"{column}_mean"].notna().any()]
    header = [*group_keys, "runs (done/failed)", *(heading for _, heading in shown)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        cells = [str(row[key]) for key in group_keys] + [f"{row['runs_done']}/{row['runs_failed']}"]
        cells += [_mean_sd(row[f"{column}_mean"], row[f"{column}_sd"]) for column, _ in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _slug(parts: list) -> str:
    return re.sub(r"[^\w.-]+", "_", "_".join(str(p) for p in parts))[:120]


def plot_mean_rates(sweep_dir: Path, runs: pd.DataFrame, title: str, path: Path) -> Path:
    """Optimized rates (segments x time), mean over patterns and over the runs (seeds), with the stimulus marked."""
    rates = np.mean(
        [np.load(RunFiles(sweep_dir / folder).optimized_rates).mean(axis=0) for folder in runs["folder"]], axis=0
    )
    setups = [json.loads(RunFiles(sweep_dir / folder).evaluation.read_text())["setup"] for folder in runs["folder"]]
    marks = sorted({(s["stimulus_time_ms"], segment) for s in setups for segment in s["stimulus_segments"]})
    groups = segment_groups(rates.shape[0], setups[0]["num_excitatory"])
    figure = new_figure(10, 3.2 * len(groups))
    axes = figure.subplots(len(groups), 1, squeeze=False)[:, 0]
    for axis, (name, segments) in zip(axes, groups):
        draw_rate_panel(figure, axis, rates[segments], segments, marks, None, f"{name} segments")
    figure.suptitle(f"{title}: optimized rates, mean over {len(runs)} seed(s)")
    return save_figure(figure, path, dpi=100)


def _html_aggregate(table_frame: pd.DataFrame, group_keys: list[str]) -> str:
    shown = [
        (column, heading.replace("\\|", "|"))
        for column, heading in AGGREGATED
        if table_frame[f"{column}_mean"].notna().any()
    ]
    rows = [
        [text_cell(row[key]) for key in group_keys]
        + [text_cell(f"{row['runs_done']}/{row['runs_failed']}")]
        + [
            f'<td data-key="{escape(column)}_mean" data-value="{escape(row[f"{column}_mean"])}">'
            f"{escape(_mean_sd(row[f'{column}_mean'], row[f'{column}_sd']))}</td>"
            for column, _ in shown
        ]
        for row in table_frame.to_dict("records")
    ]
    return table([*group_keys, "runs (done/failed)", *(heading for _, heading in shown)], rows)


def write_sweep_page(
    sweep_dir: Path,
    manifest: pd.DataFrame,
    table_frame: pd.DataFrame,
    group_keys: list[str],
    heatmaps: list[tuple[str, Path]],
    missing: list[str],
    overview: list[str],
) -> Path:
    """report.html of a sweep: the overview, the aggregate, the heatmaps embedded, every run linked."""
    run_page = RUN_FILE_NAMES["report_html"]
    runs = [
        [
            text_cell(row["run_id"]),
            text_cell(row["seed"]),
            text_cell(row["status"]),
            text_cell("–" if pd.isna(row["difference"]) else f"{row['difference']:.3f}"),
            f'<td><a href="{escape(row["folder"])}/{run_page}">{escape(row["folder"])}</a></td>',
        ]
        for row in manifest.to_dict("records")
    ]
    failed = manifest[manifest["status"] == "failed"]
    sections = [
        "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in overview) + "</ul>",
        "<h2>Evaluation figures, mean ± s.d. across seeds</h2>" + _html_aggregate(table_frame, group_keys),
        "<h2>Optimized rates, mean over seeds (red x: stimulus segments at the stimulus time)</h2>"
        + "".join(embedded_png(path, title) for title, path in heatmaps),
        (
            "<h2>Heatmaps left out (the files of a done run could not be read)</h2><ul>"
            + "".join(f"<li>{escape(line.removeprefix('- '))}</li>" for line in missing)
            + "</ul>"
            if missing
            else ""
        ),
        "<h2>Runs</h2>" + table(["run", "seed", "status", "difference", "folder"], runs),
    ]
    if len(failed):
        sections.append(
            "<h2>Failed runs</h2><ul>"
            + "".join(f"<li><code>{escape(r.run_id)}</code>: {escape(r.error)}</li>" for r in failed.itertuples())
            + "</ul>"
        )
    path = RunFiles(sweep_dir).report_html
    write_text_atomic(path, page(f"Sweep {sweep_dir.name}", sections))
    return path


def write_sweep_report(sweep_dir: Path, manifest_path: Path, group_keys: list[str], sweep: SweepConfig) -> Path:
    """aggregate.csv/.md, one heatmap per group with finished runs, report.md linking them and report.html
    (returned)."""
    manifest = pd.read_csv(manifest_path, keep_default_na=False, na_values=[""])
    table = aggregate(manifest, group_keys)
    write_text_atomic(sweep_dir / "aggregate.csv", table.to_csv(index=False))
    summary_table = markdown_table(table, group_keys)
    write_text_atomic(sweep_dir / "aggregate.md", summary_table)

    heatmaps, missing = [], []
    for number, (key, group) in enumerate(manifest.groupby(group_keys, sort=False, dropna=False), start=1):
        done = group[group["status"] == "done"]
        if len(done):
            labels = [short_model_name(v) if k == "model" else v for k, v in zip(group_keys, key)]
            title = ", ".join(f"{k} {label}" for k, label in zip(group_keys, labels))
            path = sweep_dir / "heatmaps" / f"{number:02d}_{_slug(labels)}.png"  # numbered: names may coincide
            try:
                heatmaps.append((title, plot_mean_rates(sweep_dir, done, title, path)))
            except (OSError, ValueError) as exc:  # a run folder pruned or damaged since its run: the rest stands
                log.warning("sweep report: no heatmap for %s: %s", title, exc)
                missing.append(f"- {title}: {' '.join(str(exc).split())}")

    counts = manifest["status"].value_counts()
    lists = sweep.model_dump(mode="json", include={"seeds", "stimulus_sets", "models", "overrides"})
    overview = [
        f"{len(manifest)} run(s): {counts.get('done', 0)} done, {counts.get('failed', 0)} failed, "
        f"{len(manifest) - counts.get('done', 0) - counts.get('failed', 0)} not run; backend {sweep.backend}",
        "; ".join(f"{key}: {json.dumps(value)}" for key, value in lists.items()),
        "Files: manifest.csv (every run), aggregate.csv (the table below), config.yaml, sweep.log",
    ]
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"- {overview[0]}",
        "- " + "; ".join(f"{key}: `{json.dumps(value)}`" for key, value in lists.items()),
        "- Files: `manifest.csv` (every run), `aggregate.csv` (the table below), `config.yaml`, `sweep.log`",
        "",
        "## Evaluation figures, mean ± s.d. across seeds",
        "",
        summary_table,
    ]
    if heatmaps:
        lines += ["## Optimized rates, mean over seeds (red x: stimulus segments at the stimulus time)", ""]
        lines += [f"### {title}\n\n![{title}]({path.relative_to(sweep_dir)})\n" for title, path in heatmaps]
    if missing:
        lines += ["## Heatmaps left out (the files of a done run could not be read)", "", *missing, ""]
    lines += ["## Runs", "", "| run | seed | status | difference | folder |", "|---|---|---|---|---|"]
    for row in manifest.to_dict("records"):
        difference = "–" if pd.isna(row["difference"]) else f"{row['difference']:.3f}"
        lines.append(
            f"| {row['run_id']} | {row['seed']} | {row['status']} | {difference} | "
            f"[{row['folder']}]({row['folder']}/{RUN_FILE_NAMES['report_md']}) |"
        )
    failed = manifest[manifest["status"] == "failed"]
    if len(failed):
        lines += ["", "## Failed runs", ""] + [f"- `{r.run_id}`: {r.error}" for r in failed.itertuples()]
    write_text_atomic(RunFiles(sweep_dir).report_md, "\n".join(lines) + "\n")
    return write_sweep_page(sweep_dir, manifest, table, group_keys, heatmaps, missing, overview)

"""Files of a run: rates (.npy), history (.csv), evaluation (.json), checkpoints and PNG plots, all written atomically.

Rates files hold float32 arrays of shape (patterns, segments, time) in spikes/ms, excitatory segments first.
Plots use matplotlib's object API with the Agg canvas, so no display and no global backend switch is needed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fileio import write_atomically, write_text_atomic
from optimization.stimulus import Stimulus

FILE_NAMES = {
    "initial_rates": "initial_rates.npy",
    "optimized_rates": "optimized_rates.npy",
    "history": "history.csv",
    "evaluation": "evaluation.json",
    "checkpoint": "checkpoint.pt",
    "plot_loss": "loss_curves.png",
    "plot_spike_probability": "spike_probability.png",
    "plot_rate_heatmaps": "rate_heatmaps.png",
    "plot_raster": "raster.png",
    "plot_rate_change": "rate_change.png",
}


def rates_to_file_layout(rates: torch.Tensor) -> np.ndarray:
    """(patterns, time, segments) tensor -> (patterns, segments, time) float32 array."""
    return rates.detach().float().cpu().permute(0, 2, 1).numpy().copy()


def write_rates(out_dir: Path, initial: np.ndarray, optimized: np.ndarray) -> dict[str, Path]:
    paths = {}
    for key, array in (("initial_rates", initial), ("optimized_rates", optimized)):
        paths[key] = out_dir / FILE_NAMES[key]
        write_atomically(paths[key], functools.partial(np.save, arr=array, allow_pickle=False))
    return paths


def write_history(out_dir: Path, history: list[dict[str, float]]) -> Path:
    path = out_dir / FILE_NAMES["history"]
    write_text_atomic(path, pd.DataFrame(history).to_csv(index=False))
    return path


def write_json(out_dir: Path, key: str, content: dict[str, Any]) -> Path:
    path = out_dir / FILE_NAMES[key]
    write_text_atomic(path, json.dumps(content, indent=2, allow_nan=False))
    return path


# Control and stimulated copies: distinct colour, line style and width, so that overlapping curves stay apart.
COPY_STYLE = {
    "control": {"color": "tab:blue", "linestyle": "--", "linewidth": 1.6},
    "stimulated": {"color": "tab:red", "linestyle": "-", "linewidth": 1.2},
}
PROBABILITY_LIMITS = (-0.02, 1.02)


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")  # legends outside the axes keep their room


def _legend_outside(axis: Axes) -> None:
    """The legend to the right of the axes, never over the data."""
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")


def save_figure(figure: Figure, path: Path, dpi: int) -> Path:
    FigureCanvasAgg(figure)
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi))
    return path


def plot_loss_curves(history: pd.DataFrame, targets: tuple[float, float], path: Path, dpi: int) -> Path:
    figure = new_figure(10, 9)
    losses, responses, gradients = figure.subplots(3, 1, sharex=True)
    for column in [c for c in history.columns if c.startswith("loss_")]:
        if (history[column] != 0).any():
            losses.plot(history["iteration"], history[column], label=column.removeprefix("loss_"))
    losses.set_ylabel("loss (weighted terms)")
    _legend_outside(losses)
    responses.plot(history["iteration"], history["p_stim"], label="stimulated", **COPY_STYLE["stimulated"])
    responses.plot(history["iteration"], history["p_control"], label="control", **COPY_STYLE["control"])
    responses.axhline(targets[0], color="tab:blue", linestyle=":", label="control target")
    responses.axhline(targets[1], color="tab:red", linestyle=":", label="stimulated target")
    responses.set_ylabel("max spike probability\nin window (mean)")
    responses.set_ylim(*PROBABILITY_LIMITS)
    _legend_outside(responses)
    plot = gradients.semilogy if (history["grad_norm"] > 0).any() else gradients.plot  # a zero gradient: linear
    plot(history["iteration"], history["grad_norm"], color="tab:gray", label="gradient norm")
    gradients.set_ylabel("gradient norm")
    learning_rate = gradients.twinx()
    learning_rate.semilogy(history["iteration"], history["learning_rate"], color="tab:green")
    learning_rate.set_ylabel("learning rate", color="tab:green")
    gradients.set_xlabel("iteration")
    return save_figure(figure, path, dpi)


def plot_spike_probability(
    traces: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    stimulus: Stimulus,
    threshold: float,
    path: Path,
    dpi: int,
) -> Path:
    """traces[name][copy] = (mean, std) over time, name in initial/optimized, copy in control/stimulated."""
    figure = new_figure(12, 4)
    axes = figure.subplots(1, len(traces), sharey=True, squeeze=False)[0]
    for axis, (name, copies) in zip(axes, traces.items()):
        for copy in ("stimulated", "control"):  # the dashed control line on top stays visible
            mean, std = copies[copy]
            time = np.arange(mean.size)
            axis.plot(time, mean, label=copy, **COPY_STYLE[copy])
            axis.fill_between(
                time, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=COPY_STYLE[copy]["color"], alpha=0.15
            )
        window = stimulus.response_window()
        axis.axvspan(window.start, window.stop, color="gold", alpha=0.3, label="response window")
        axis.axhline(threshold, color="black", linestyle=":", linewidth=1, label="spike threshold")
        axis.set_ylim(*PROBABILITY_LIMITS)
        axis.set_title(f"{name} rates (mean ± s.d. over trials)")
        axis.set_xlabel("time (ms)")
    axes[0].set_ylabel("spike probability")
    _legend_outside(axes[-1])
    return save_figure(figure, path, dpi)


def segment_groups(num_segments: int, num_excitatory: int) -> list[tuple[str, slice]]:
    """The excitatory segments, then the inhibitory ones where there are any."""
    groups = [("excitatory", slice(0, num_excitatory))]
    if num_segments > num_excitatory:
        groups.append(("inhibitory", slice(num_excitatory, num_segments)))
    return groups


def draw_rate_panel(
    figure: Figure,
    axis: Axes,
    rates: np.ndarray,
    segments: slice,
    marks: list[tuple[int, int]],
    top: float | None,
    title: str,
) -> None:
    """A heatmap of `rates` (segments x time) for the segment range `segments`, with a red x at each stimulus
    spike `(time_ms, segment)` that falls in the range."""
    image = axis.imshow(
        rates,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        vmin=0,
        vmax=top,
        interpolation="nearest",
        extent=(0, rates.shape[1], segments.start, segments.stop),
    )
    shown = [(time, segment) for time, segment in marks if segments.start <= segment < segments.stop]
    if shown:
        axis.scatter(
            [time + 0.5 for time, _ in shown], [segment + 0.5 for _, segment in shown], marker="x", color="red", s=40
        )
    axis.set_title(title + ("; red x: stimulus" if shown else ""))
    axis.set_xlabel("time (ms)")
    axis.set_ylabel("segment")
    figure.colorbar(image, ax=axis, label="rate (spikes/ms)")


def plot_rate_heatmaps(
    initial: np.ndarray, optimized: np.ndarray, num_excitatory: int, stimulus: Stimulus, path: Path, dpi: int
) -> Path:
    """Pattern-averaged rates (segments x time): excitatory and inhibitory rows, initial and optimized columns."""
    groups = segment_groups(initial.shape[1], num_excitatory)
    marks = [(stimulus.time_ms, segment) for segment in stimulus.segments]
    figure = new_figure(12, 3.5 * len(groups))
    axes = figure.subplots(len(groups), 2, squeeze=False)
    for row, (group, segments) in enumerate(groups):
        initial_mean = initial[:, segments].mean(axis=0)
        optimized_mean = optimized[:, segments].mean(axis=0)
        top = max(initial_mean.max(), optimized_mean.max())
        for column, (name, rates) in enumerate((("initial", initial_mean), ("optimized", optimized_mean))):
            draw_rate_panel(
                figure,
                axes[row, column],
                rates,
                segments,
                marks,
                top,
                f"{group}, {name} (mean over {initial.shape[0]} pattern(s))",
            )
    return save_figure(figure, path, dpi)


def plot_raster(example: dict[str, np.ndarray], num_excitatory: int, stimulus: Stimulus, path: Path, dpi: int) -> Path:
    """One sampled trial of the optimized rates (stimulated copy) and the model's response to both copies."""
    figure = new_figure(12, 6)
    raster, response = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    times, segments = np.nonzero(example["stimulated_spikes"])
    excitatory = segments < num_excitatory
    raster.scatter(times[excitatory], segments[excitatory], s=2, color="tab:red", label="excitatory")
    raster.scatter(times[~excitatory], segments[~excitatory], s=2, color="tab:blue", label="inhibitory")
    raster.scatter(
        [stimulus.time_ms] * len(stimulus.segments),
        list(stimulus.segments),
        s=60,
        marker="*",
        color="black",
        label="stimulus",
    )
    raster.set_ylabel("segment")
    raster.set_title("one sampled trial of the optimized rates (pattern 0, stimulated copy)")
    raster.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, markerscale=3, fontsize="small")
    time = np.arange(example["control_probability"].size)
    response.plot(time, example["stimulated_probability"], label="stimulated", **COPY_STYLE["stimulated"])
    response.plot(time, example["control_probability"], label="control", **COPY_STYLE["control"])
    window = stimulus.response_window()
    response.axvspan(window.start, window.stop, color="gold", alpha=0.3, label="response window")
    response.set_ylim(*PROBABILITY_LIMITS)
    response.set_ylabel("spike probability")
    response.set_xlabel("time (ms)")
    _legend_outside(response)
    return save_figure(figure, path, dpi)


def plot_rate_change(
    initial: np.ndarray, optimized: np.ndarray, num_excitatory: int, stimulus: Stimulus, path: Path, dpi: int
) -> Path:
    """Per segment: optimized minus initial rate, averaged over patterns and time."""
    change = (optimized - initial).mean(axis=(0, 2))
    segments = np.arange(change.size)
    figure = new_figure(12, 3.5)
    axis = figure.subplots()
    colors = np.where(segments < num_excitatory, "tab:red", "tab:blue")
    axis.bar(segments, change, width=1.0, color=colors)
    axis.axvline(num_excitatory - 0.5, color="black", linewidth=1, linestyle="--", label="excitatory | inhibitory")
    axis.scatter(
        list(stimulus.segments),
        change[list(stimulus.segments)],
        marker="*",
        s=80,
        color="black",
        label="stimulus segments",
        zorder=3,
    )
    axis.axhline(0, color="gray", linewidth=0.8)
    axis.set_xlabel("segment")
    axis.set_ylabel("rate change (spikes/ms)")
    axis.set_title("optimized minus initial rate, mean over time and patterns")
    _legend_outside(axis)
    return save_figure(figure, path, dpi)

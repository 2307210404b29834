"""The whole activity optimization: set up, optimize, save, evaluate, report."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from errors import ConfigError
from limits import MAX_BATCH_BYTES
from progress import Progress, ProgressStyle

from optimization import report
from optimization.config import OptimizationConfig
from optimization.constraints import RateParameters
from optimization.evaluate import RateEvaluation, evaluate_rates
from optimization.initial import initial_rates
from optimization.loop import RateOptimizer
from optimization.network import InputLayout, SpikeProbability, prepare_model, resolve_layout
from optimization.runtime import MicroBatcher, Seeds, cudnn_benchmark, make_generator, resolve_device
from optimization.sampler import SpikeSampler, make_sampler
from optimization.stimulus import PairedStimulus, Stimulus, choose_stimulus


@dataclass(frozen=True)
class OptimizationOutcome:
    """What a run produced. Rates are float32 (patterns, segments, time) arrays in spikes/ms."""

    final_loss: float  # total loss, mean over the last logging interval
    evaluation: dict  # {"initial": {...}, "optimized": {...}, "improvement": ..., ...}; see evaluate.py
    iterations_run: int  # completed optimizer steps, counted across resumes
    stopped_because: str  # max_iterations | target_reached | plateau | interrupted
    device: str
    files: dict[str, Path]
    initial_rates: np.ndarray
    optimized_rates: np.ndarray
    stimulus_segments: tuple[int, ...]
    stimulus_time_ms: int
    response_window_ms: int
    num_excitatory: int
    num_inhibitory: int


def run_activity_optimization(
    model: nn.Module,
    config: OptimizationConfig,
    out_dir: Path,
    device: str | torch.device = "auto",
    seed: int = 0,
    logger: Optional[logging.Logger] = None,
    progress: ProgressStyle = ProgressStyle(),
) -> OptimizationOutcome:
    """Optimize presynaptic rates through `model` (frozen and moved to the device in place) and write the results.

    Raises ConfigError for settings that do not fit the model, OptimizationError for unusable inputs or a
    diverged optimization (after saving the last finite rates).
    """
    logger = logger or logging.getLogger(__name__)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    seeds = Seeds.from_run_seed(seed)
    layout = resolve_layout(model, config, logger)
    check_batch_sizes(config, layout)
    spike_model = prepare_model(model, config, layout, torch_device)
    stimulus = stimulus_of(config, layout, seed)
    logger.info(
        "optimizing %d pattern(s) of %d excitatory + %d inhibitory segments x %d ms on %s; stimulus segments %s "
        "at %d ms, response window %d ms",
        config.num_patterns, layout.num_excitatory, layout.num_inhibitory, layout.duration_ms, torch_device,
        list(stimulus.segments), stimulus.time_ms, stimulus.window_ms,
    )
    start_rates = initial_rates(
        config.initial_rates, layout, config.num_patterns, config.constraints.max_rate, seeds.background
    )
    parameters = RateParameters(start_rates, layout.num_excitatory, config.constraints).to(torch_device)
    sampler = make_sampler(config.sampler)
    paired = PairedStimulus(stimulus, layout, torch_device)
    optimizer = RateOptimizer(
        parameters, spike_model, sampler, paired, config,
        generator=make_generator(seeds.optimization, torch_device),
        checkpoint_path=out_dir / report.FILE_NAMES["checkpoint"],
        signature=_signature(config, layout, stimulus, seed),
        logger=logger,
        progress=progress,
    )
    with cudnn_benchmark(torch_device, config.loop.cudnn_benchmark):
        if config.loop.resume_from is not None:
            optimizer.resume(config.loop.resume_from)
        try:
            result = optimizer.run()
        finally:  # also after a NaN/Inf stop (rates reset to the last finite state) or a second Ctrl-C
            initial_array = report.rates_to_file_layout(optimizer.initial_rates)
            optimized_array = report.rates_to_file_layout(parameters.rates())
            files = report.write_rates(out_dir, initial_array, optimized_array)
            files["history"] = report.write_history(out_dir, optimizer.history)
            files["checkpoint"] = optimizer.checkpoint_path
        evaluations = _evaluate(spike_model, optimizer.initial_rates, parameters.rates().detach(), sampler, paired,
                                config, seeds.evaluation, logger, progress)
    evaluation = {
        "initial": evaluations["initial"].summary,
        "optimized": evaluations["optimized"].summary,
        "improvement": evaluations["optimized"].summary["difference"] - evaluations["initial"].summary["difference"],
        "rates": "initial: the rates before the first step; optimized: the rates after the last completed step",
        "spike_threshold": config.evaluation.spike_threshold,
        "confidence": config.evaluation.confidence,
        "trials_per_pattern": config.evaluation.trials_per_pattern,
    }
    setup = {
        "seed": seed, "device": str(torch_device), "num_patterns": config.num_patterns,
        "num_excitatory": layout.num_excitatory, "num_inhibitory": layout.num_inhibitory,
        "duration_ms": layout.duration_ms, "stimulus_segments": list(stimulus.segments),
        "stimulus_time_ms": stimulus.time_ms, "response_window_ms": stimulus.window_ms,
        "iterations_run": result.iterations_run, "stopped_because": result.stopped_because,
        "final_loss": result.final_loss if math.isfinite(result.final_loss) else None,
    }
    files["evaluation"] = report.write_json(out_dir, "evaluation", {"setup": setup, **evaluation})
    if config.report.plots:
        files.update(_plot(out_dir, config, optimizer.history, evaluations, initial_array, optimized_array,
                           layout, stimulus))
    logger.info(
        "P(spike|stim) - P(spike|control): initial %.3f, optimized %.3f",
        evaluation["initial"]["difference"], evaluation["optimized"]["difference"],
    )
    return OptimizationOutcome(
        final_loss=result.final_loss,
        evaluation=evaluation,
        iterations_run=result.iterations_run,
        stopped_because=result.stopped_because,
        device=str(torch_device),
        files=files,
        initial_rates=initial_array,
        optimized_rates=optimized_array,
        stimulus_segments=stimulus.segments,
        stimulus_time_ms=stimulus.time_ms,
        response_window_ms=stimulus.window_ms,
        num_excitatory=layout.num_excitatory,
        num_inhibitory=layout.num_inhibitory,
    )


def stimulus_of(config: OptimizationConfig, layout: InputLayout, seed: int) -> Stimulus:
    """The run's stimulus: its segments drawn with stimulus.selection_seed, or with the seed derived from the run
    seed; checked against the layout (ConfigError)."""
    selection_seed = config.stimulus.selection_seed
    return choose_stimulus(config.stimulus, layout,
                           Seeds.from_run_seed(seed).stimulus if selection_seed is None else selection_seed)


def check_batch_sizes(config: OptimizationConfig, layout: InputLayout) -> None:
    """The spike trains of one step and of one evaluation chunk (float32, both copies), and the evaluation's
    trial index, against MAX_BATCH_BYTES before anything is allocated."""
    train = 4 * 2 * layout.duration_ms * layout.num_segments
    samples = config.num_patterns * config.sampler.samples_per_pattern
    MAX_BATCH_BYTES.check(samples * train, "one optimization step (num_patterns × sampler.samples_per_pattern "
                          f"= {samples} spike-train pairs of {layout.duration_ms} ms × {layout.num_segments} "
                          "segments)", ConfigError, "bytes")
    trials = config.num_patterns * config.evaluation.trials_per_pattern
    MAX_BATCH_BYTES.check(min(trials, config.evaluation.chunk_size) * train + 8 * trials,
                          f"the evaluation (num_patterns × evaluation.trials_per_pattern = {trials} trial pairs, "
                          f"{config.evaluation.chunk_size} per chunk)", ConfigError, "bytes")


def _signature(config: OptimizationConfig, layout: InputLayout, stimulus: Stimulus, seed: int) -> dict:
    """What a checkpoint must share with the current run to be resumed by it."""
    return {
        "seed": seed,
        "num_patterns": config.num_patterns,
        "num_excitatory": layout.num_excitatory,
        "num_inhibitory": layout.num_inhibitory,
        "duration_ms": layout.duration_ms,
        "stimulus_segments": list(stimulus.segments),
        "stimulus_time_ms": stimulus.time_ms,
        "response_window_ms": stimulus.window_ms,
        "sampler": config.sampler.model_dump(mode="json"),
        "constraints": config.constraints.model_dump(mode="json"),
        "objective": config.objective.model_dump(mode="json"),
    }


def _evaluate(
    model: SpikeProbability, initial: torch.Tensor, optimized: torch.Tensor, sampler: SpikeSampler,
    paired: PairedStimulus, config: OptimizationConfig, seed: int, logger: logging.Logger, progress: ProgressStyle,
) -> dict[str, RateEvaluation]:
    """Both rate sets with the same seed, so that their difference is not sampling noise of the evaluation."""
    trials = initial.shape[0] * config.evaluation.trials_per_pattern
    micro_batcher = MicroBatcher(math.ceil(trials / config.evaluation.chunk_size), "the evaluation", logger)
    with Progress(2 * trials, "evaluating initial and optimized rates", "trial pair", progress, logger) as bar:
        return {
            name: evaluate_rates(model, rates, sampler, paired, config.evaluation, seed, micro_batcher, bar)
            for name, rates in (("initial", initial), ("optimized", optimized))
        }


def _plot(
    out_dir: Path, config: OptimizationConfig, history: list[dict[str, float]],
    evaluations: dict[str, RateEvaluation], initial: np.ndarray, optimized: np.ndarray, layout: InputLayout,
    stimulus: Stimulus,
) -> dict[str, Path]:
    dpi = config.report.dpi
    path = {key: out_dir / name for key, name in report.FILE_NAMES.items()}
    plots = {}
    if history:
        targets = (config.objective.control_target, config.objective.target_spike_prob)
        plots["plot_loss"] = report.plot_loss_curves(pd.DataFrame(history), targets, path["plot_loss"], dpi)
    traces = {name: evaluation.traces for name, evaluation in evaluations.items()}
    plots["plot_spike_probability"] = report.plot_spike_probability(
        traces, stimulus, config.evaluation.spike_threshold, path["plot_spike_probability"], dpi
    )
    plots["plot_rate_heatmaps"] = report.plot_rate_heatmaps(
        initial, optimized, layout.num_excitatory, stimulus, path["plot_rate_heatmaps"], dpi
    )
    plots["plot_raster"] = report.plot_raster(
        evaluations["optimized"].example, layout.num_excitatory, stimulus, path["plot_raster"], dpi
    )
    plots["plot_rate_change"] = report.plot_rate_change(
        initial, optimized, layout.num_excitatory, stimulus, path["plot_rate_change"], dpi
    )
    return plots

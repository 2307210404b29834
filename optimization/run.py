"""The whole activity optimization: set up, optimize, save, evaluate, report."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from errors import ConfigError
from limits import MAX_BATCH_BYTES
from optimization import report
from optimization.config import OptimizationConfig
from optimization.constraints import RateParameters
from optimization.evaluate import RateEvaluation, evaluate_rates
from optimization.initial import given_rates, initial_rates
from optimization.loop import RateOptimizer
from optimization.network import InputLayout, SpikeProbability, prepare_model, resolve_layout
from optimization.objective import Objective, outside_window_mask
from optimization.regime import InputRegime, auto_max_rate, regime_distance
from optimization.runtime import MicroBatcher, Seeds, cudnn_benchmark, make_generator, resolve_device
from optimization.sampler import SpikeSampler, draw_noise, make_sampler
from optimization.stimulus import PairedStimulus, Stimulus, choose_stimulus
from progress import Progress, ProgressStyle

LOG_PROGRESS = ProgressStyle()  # frozen: one shared default


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
    max_rate: float  # the bound used (constraints.max_rate, resolved when auto)


def run_activity_optimization(
    model: nn.Module,
    config: OptimizationConfig,
    out_dir: Path,
    device: str | torch.device = "auto",
    seed: int = 0,
    logger: logging.Logger | None = None,
    progress: ProgressStyle = LOG_PROGRESS,
    regime: InputRegime | None = None,
    members: Sequence[nn.Module] = (),
    start_rates: np.ndarray | None = None,
) -> OptimizationOutcome:
    """Optimize presynaptic rates through `model` (frozen and moved to the device in place) and write the results.

    `regime`: the statistics of the model's training inputs (for max_rate auto, the regime term and the distance
    report); `members`: further models of an ensemble (the loss is the mean over all); `start_rates`: rates
    (patterns, segments, time) to start from instead of optimization.initial_rates (a refinement round).
    Raises ConfigError for settings that do not fit the model, OptimizationError for unusable inputs or a
    diverged optimization (after saving the last finite rates).
    """
    logger = logger or logging.getLogger(__name__)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    seeds = Seeds.from_run_seed(seed)
    if config.constraints.max_rate == "auto":
        config = with_resolved_max_rate(config, regime)
        assert regime is not None  # with_resolved_max_rate refuses auto without a regime
        logger.info(
            "constraints.max_rate auto: %.4g spikes/ms, the p99 rate of the moving segments in the input regime (%s)",
            config.constraints.max_rate,
            regime.source[:120],
        )
    max_rate = config.constraints.resolved_max_rate()
    layout = resolve_layout(model, config, logger)
    check_batch_sizes(config, layout)
    check_ensemble(model, members)
    spike_models = [prepare_model(member, config, layout, torch_device) for member in (model, *members)]
    spike_model = spike_models[0] if not members else MeanSpikeProbability(spike_models)
    stimulus = stimulus_of(config, layout, seed)
    logger.info(
        "optimizing %d pattern(s) of %d excitatory + %d inhibitory segments x %d ms on %s; stimulus segments %s "
        "at %d ms, response window %d ms%s",
        config.num_patterns,
        layout.num_excitatory,
        layout.num_inhibitory,
        layout.duration_ms,
        torch_device,
        list(stimulus.segments),
        stimulus.time_ms,
        stimulus.window_ms,
        f"; through an ensemble of {len(spike_models)} models" if members else "",
    )
    start = (
        initial_rates(config.initial_rates, layout, config.num_patterns, max_rate, seeds.background)
        if start_rates is None
        else given_rates(start_rates, layout, config.num_patterns, max_rate)
    )
    parameters = RateParameters(start, layout.num_excitatory, config.constraints).to(torch_device)
    sampler = make_sampler(config.sampler)
    paired = PairedStimulus(stimulus, layout, torch_device)
    floor = specificity_floor(config, spike_model, parameters.rates().detach(), sampler, paired, seeds.evaluation)
    objective = Objective(config.objective, max_rate, layout.num_excitatory, regime, floor)
    optimizer = RateOptimizer(
        parameters,
        spike_models,
        sampler,
        paired,
        config,
        generator=make_generator(seeds.optimization, torch_device),
        checkpoint_path=out_dir / report.FILE_NAMES["checkpoint"],
        signature=_signature(config, layout, stimulus, seed),
        logger=logger,
        progress=progress,
        objective=objective,
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
        evaluations = _evaluate(
            spike_model,
            optimizer.initial_rates,
            parameters.rates().detach(),
            sampler,
            paired,
            config,
            seeds.evaluation,
            logger,
            progress,
        )
    evaluation = {
        "initial": evaluations["initial"].summary,
        "optimized": evaluations["optimized"].summary,
        "improvement": evaluations["optimized"].summary["difference"] - evaluations["initial"].summary["difference"],
        "rates": "initial: the rates before the first step; optimized: the rates after the last completed step",
        "spike_threshold": config.evaluation.spike_threshold,
        "confidence": config.evaluation.confidence,
        "trials_per_pattern": config.evaluation.trials_per_pattern,
    }
    if regime is not None:
        evaluation["regime_distance"] = {
            name: regime_distance(rates, layout.num_excitatory, regime)
            for name, rates in (("initial", initial_array), ("optimized", optimized_array))
        }
    setup = {
        "seed": seed,
        "device": str(torch_device),
        "num_patterns": config.num_patterns,
        "num_excitatory": layout.num_excitatory,
        "num_inhibitory": layout.num_inhibitory,
        "duration_ms": layout.duration_ms,
        "stimulus_segments": list(stimulus.segments),
        "stimulus_time_ms": stimulus.time_ms,
        "response_window_ms": stimulus.window_ms,
        "iterations_run": result.iterations_run,
        "stopped_because": result.stopped_because,
        "final_loss": result.final_loss if math.isfinite(result.final_loss) else None,
        "max_rate": max_rate,
        "specificity_floor": floor,
        "ensemble_size": len(spike_models),
    }
    files["evaluation"] = report.write_json(out_dir, "evaluation", {"setup": setup, **evaluation})
    if config.report.plots:
        files.update(
            _plot(out_dir, config, optimizer.history, evaluations, initial_array, optimized_array, layout, stimulus)
        )
    logger.info(
        "P(spike|stim) - P(spike|control): initial %.3f, optimized %.3f",
        evaluation["initial"]["difference"],
        evaluation["optimized"]["difference"],
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
        max_rate=max_rate,
    )


def with_resolved_max_rate(config: OptimizationConfig, regime: InputRegime | None) -> OptimizationConfig:
    """`constraints.max_rate: auto` replaced by the regime's number (a ConfigError without a regime)."""
    if config.constraints.max_rate != "auto":
        return config
    if regime is None:
        raise ConfigError(
            "optimization.constraints.max_rate=auto needs the statistics of the model's training "
            "inputs: data_dict['input_regime'] in its params pickle, or optimization.input_regime."
        )
    max_rate = auto_max_rate(regime, config.constraints.moving_segments)
    constraints = config.constraints.model_copy(update={"max_rate": max_rate})
    return config.model_copy(update={"constraints": constraints})


def input_mismatch(model: nn.Module, other: nn.Module) -> str | None:
    """Why `other` cannot judge the same patterns as `model` ((time, channels) of their input_shapes differ), or
    None: one rule for ensemble members and transfer models."""
    expected, shapes = getattr(model, "input_shapes", None), getattr(other, "input_shapes", None)
    if shapes != expected:
        return f"takes inputs of shape {shapes} (time, channels), the selected model {expected}"
    return None


def check_ensemble(model: nn.Module, members: Sequence[nn.Module], names: Sequence[str] = ()) -> None:
    """Every member takes the same input as the model (ConfigError naming the member otherwise)."""
    for index, member in enumerate(members):
        why = input_mismatch(model, member)
        if why is not None:
            name = names[index] if index < len(names) else f"member {index + 2}"
            raise ConfigError(
                f"optimization.ensemble: {name} {why}; an ensemble's members must share the input layout."
            )


class MeanSpikeProbability(nn.Module):
    """The ensemble's prediction for evaluation: the mean spike probability of its members."""

    def __init__(self, members: Sequence[SpikeProbability]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(spikes) for member in self.members]).mean(dim=0)


@torch.no_grad()
def specificity_floor(
    config: OptimizationConfig,
    model: nn.Module,
    rates: torch.Tensor,
    sampler: SpikeSampler,
    paired: PairedStimulus,
    seed: int,
) -> float:
    """The configured floor, or the highest trial-mean spike probability outside the response window under the
    initial rates (control copies of samples_per_pattern trials per pattern, seeded apart from the optimization);
    0 when the specificity term is off."""
    objective = config.objective
    if not objective.specificity_weight:
        return 0.0
    if objective.specificity_floor is not None:
        return objective.specificity_floor
    patterns, duration, segments = rates.shape
    samples = config.sampler.samples_per_pattern
    noise = draw_noise((patterns * samples, duration, segments), make_generator(seed + 1, rates.device), rates.device)
    spikes = sampler.hard_spikes(rates.repeat_interleave(samples, dim=0), noise)
    probability = model(paired.control(spikes)).float()
    outside = outside_window_mask(duration, paired.stimulus.response_window(), rates.device)
    trace = probability.view(patterns, samples, duration).mean(dim=1)
    return float(trace[:, outside].max()) if bool(outside.any()) else 0.0


def evaluate_on(
    model: nn.Module,
    outcome: OptimizationOutcome,
    config: OptimizationConfig,
    seed: int = 0,
    logger: logging.Logger | None = None,
    progress: ProgressStyle = LOG_PROGRESS,
) -> dict[str, dict]:
    """An outcome's initial and optimized rates evaluated through another model (same stimulus, trials and
    evaluation seed as the run's own evaluation): does the pattern transfer? Summaries keyed initial/optimized."""
    logger = logger or logging.getLogger(__name__)
    device = resolve_device(outcome.device)
    layout = InputLayout(outcome.num_excitatory, outcome.num_inhibitory, outcome.initial_rates.shape[2])
    spike_model = prepare_model(model, config, layout, device)
    stimulus = Stimulus(tuple(outcome.stimulus_segments), outcome.stimulus_time_ms, outcome.response_window_ms)
    paired = PairedStimulus(stimulus, layout, device)
    rates = {
        name: torch.from_numpy(array.transpose(0, 2, 1).copy()).to(device)
        for name, array in (("initial", outcome.initial_rates), ("optimized", outcome.optimized_rates))
    }
    evaluations = _evaluate(
        spike_model,
        rates["initial"],
        rates["optimized"],
        make_sampler(config.sampler),
        paired,
        config,
        Seeds.from_run_seed(seed).evaluation,
        logger,
        progress,
    )
    return {name: evaluation.summary for name, evaluation in evaluations.items()}


def stimulus_of(config: OptimizationConfig, layout: InputLayout, seed: int) -> Stimulus:
    """The run's stimulus: its segments drawn with stimulus.selection_seed, or with the seed derived from the run
    seed; checked against the layout (ConfigError)."""
    selection_seed = config.stimulus.selection_seed
    return choose_stimulus(
        config.stimulus, layout, Seeds.from_run_seed(seed).stimulus if selection_seed is None else selection_seed
    )


def check_batch_sizes(config: OptimizationConfig, layout: InputLayout) -> None:
    """The spike trains of one step and of one evaluation chunk (float32, both copies), and the evaluation's
    trial index, against MAX_BATCH_BYTES before anything is allocated."""
    train = 4 * 2 * layout.duration_ms * layout.num_segments
    samples = config.num_patterns * config.sampler.samples_per_pattern
    MAX_BATCH_BYTES.check(
        samples * train,
        "one optimization step (num_patterns × sampler.samples_per_pattern "
        f"= {samples} spike-train pairs of {layout.duration_ms} ms × {layout.num_segments} "
        "segments)",
        ConfigError,
        "bytes",
    )
    trials = config.num_patterns * config.evaluation.trials_per_pattern
    MAX_BATCH_BYTES.check(
        min(trials, config.evaluation.chunk_size) * train + 8 * trials,
        f"the evaluation (num_patterns × evaluation.trials_per_pattern = {trials} trial pairs, "
        f"{config.evaluation.chunk_size} per chunk)",
        ConfigError,
        "bytes",
    )


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
    model: nn.Module,
    initial: torch.Tensor,
    optimized: torch.Tensor,
    sampler: SpikeSampler,
    paired: PairedStimulus,
    config: OptimizationConfig,
    seed: int,
    logger: logging.Logger,
    progress: ProgressStyle,
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
    out_dir: Path,
    config: OptimizationConfig,
    history: list[dict[str, float]],
    evaluations: dict[str, RateEvaluation],
    initial: np.ndarray,
    optimized: np.ndarray,
    layout: InputLayout,
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

"""Ground truth for models trained on the demo neuron: simulate the neuron itself under the optimized rates.

The model's parameters pickle names the simulator configuration it was trained on
(`data_dict['simulator_config']`); user models have none, and the check is then reported as not available.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from errors import ConfigError
from limits import MAX_SIMULATION_STEPS
from neuron import NeuronConfig, ground_truth_response
from progress import Progress, ProgressStyle

log = logging.getLogger(__name__)


def simulator_config_of(params: Any, params_path: Path | None) -> NeuronConfig | None:
    """The simulator configuration recorded in a model's (loaded) params pickle, or None when it records none; a
    ConfigError naming the pickle when it is not a valid one."""
    data = params.get("data_dict") if isinstance(params, dict) else None
    recorded = data.get("simulator_config") if isinstance(data, dict) else None
    if not isinstance(recorded, dict):
        return None
    try:
        return NeuronConfig.from_dict(recorded)
    except ConfigError as exc:
        raise ConfigError(f"{params_path}: data_dict['simulator_config'] is not a usable simulator "
                          f"configuration: {exc}.") from None


def check_ground_truth(params: Any, params_path: Path | None, channels: int | None, window_ms: int, patterns: int,
                       trials: int) -> NeuronConfig | None:
    """Before a run optimizes anything: the recorded simulator fits the model (its segment count is the model's
    input channels) and the check's work (steps × compartments × trials) fits MAX_SIMULATION_STEPS; so that a run
    never fails only at its end. None when the pickle names no simulator."""
    neuron = simulator_config_of(params, params_path)
    if neuron is None:
        return None
    if channels is not None and neuron.num_segments != channels:
        raise ConfigError(f"{params_path}: data_dict['simulator_config'] has {neuron.num_excitatory_segments} + "
                          f"{neuron.num_inhibitory_segments} = {neuron.num_segments} segments, but the model takes "
                          f"{channels} input channels; the ground truth cannot be simulated for it.")
    # control and stimulated copies of the initial and the optimized rates
    steps = 4 * trials * patterns * window_ms * round(1 / neuron.dt_ms) * (neuron.num_compartments + 1)
    MAX_SIMULATION_STEPS.check(steps, f"{params_path}: the ground-truth check (ground_truth.trials={trials})",
                               ConfigError, " compartment-steps")
    return neuron


def simulated_response(neuron: NeuronConfig, outcome, trials: int, seed: int, progress: ProgressStyle,
                       rates: np.ndarray | None = None) -> dict[str, Any]:
    """The simulated neuron under an outcome's optimized rates (or `rates`, same layout), pooled over patterns:
    P(spike | stim), P(spike | control) in the response window and each copy's P(spike) outside it."""
    rates = outcome.optimized_rates if rates is None else rates
    with Progress(trials * len(rates), "ground truth: simulating", "trial pair", progress, log) as bar:
        per_pattern = [ground_truth_response(pattern, outcome.stimulus_segments, outcome.stimulus_time_ms,
                                             outcome.response_window_ms, n_trials=trials, seed=seed + index,
                                             config=neuron, on_simulated=bar.advance)
                       for index, pattern in enumerate(rates)]
    pooled = {key: float(np.mean([r[key] for r in per_pattern]))
              for key in ("p_spike_stim", "p_spike_control", "p_outside_stim", "p_outside_control")}
    log.info("ground truth: P(spike|stim) %.3f, P(spike|control) %.3f; outside the window: %.3f / %.3f",
             pooled["p_spike_stim"], pooled["p_spike_control"], pooled["p_outside_stim"],
             pooled["p_outside_control"])
    return {"available": True, **pooled, "difference": pooled["p_spike_stim"] - pooled["p_spike_control"],
            "n_trials": trials * len(per_pattern), "per_pattern": per_pattern}


def ground_truth_check(neuron: NeuronConfig | None, outcome, trials: int, seed: int,
                       progress: ProgressStyle) -> dict[str, Any]:
    """The ground truth of a run's optimized rates, or why there is none."""
    if neuron is None:
        log.info("ground truth: not available (the model's pickle names no simulator configuration)")
        return {"available": False, "reason": "the model's parameters pickle names no simulator configuration"}
    log.info("ground truth: simulating the neuron on %d trials per pattern, initial and optimized rates", trials)
    initial = simulated_response(neuron, outcome, trials, seed, progress, rates=outcome.initial_rates)
    optimized = simulated_response(neuron, outcome, trials, seed, progress)
    return {**optimized, "initial": {key: value for key, value in initial.items() if key != "available"}}

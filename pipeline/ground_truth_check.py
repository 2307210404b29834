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
from safe_pickle import load_pickle
from limits import MAX_SIMULATION_STEPS
from neuron import NeuronConfig, ground_truth_response
from progress import Progress, ProgressStyle

log = logging.getLogger(__name__)


def simulator_config_of(params_path: Path | None, trust: bool) -> NeuronConfig | None:
    """The simulator configuration recorded in a model's pickle, or None when it records none; a ConfigError
    naming the pickle when it is not a valid one."""
    if params_path is None:
        return None
    params = load_pickle(params_path, trust=trust)
    data = params.get("data_dict") if isinstance(params, dict) else None
    recorded = data.get("simulator_config") if isinstance(data, dict) else None
    if not isinstance(recorded, dict):
        return None
    try:
        return NeuronConfig.from_dict(recorded)
    except ConfigError as exc:
        raise ConfigError(f"{params_path}: data_dict['simulator_config'] is not a usable simulator "
                          f"configuration: {exc}.") from None


def check_ground_truth(params_path: Path | None, channels: int | None, window_ms: int, patterns: int, trials: int,
                       trust: bool) -> NeuronConfig | None:
    """Before a run optimizes anything: the recorded simulator fits the model (its segment count is the model's
    input channels) and the check's work (steps × compartments × trials) fits MAX_SIMULATION_STEPS; so that a run
    never fails only at its end. None when the pickle names no simulator."""
    neuron = simulator_config_of(params_path, trust)
    if neuron is None:
        return None
    if channels is not None and neuron.num_segments != channels:
        raise ConfigError(f"{params_path}: data_dict['simulator_config'] has {neuron.num_excitatory_segments} + "
                          f"{neuron.num_inhibitory_segments} = {neuron.num_segments} segments, but the model takes "
                          f"{channels} input channels; the ground truth cannot be simulated for it.")
    steps = 2 * trials * patterns * window_ms * round(1 / neuron.dt_ms) * (neuron.num_compartments + 1)
    MAX_SIMULATION_STEPS.check(steps, f"{params_path}: the ground-truth check (ground_truth.trials={trials})",
                               ConfigError, " compartment-steps")
    return neuron


def ground_truth_check(neuron: NeuronConfig | None, outcome, trials: int, seed: int,
                       progress: ProgressStyle) -> dict[str, Any]:
    """P(spike | stim) and P(spike | control) of the simulated neuron, pooled over the optimized patterns."""
    if neuron is None:
        log.info("ground truth: not available (the model's pickle names no simulator configuration)")
        return {"available": False, "reason": "the model's parameters pickle names no simulator configuration"}
    log.info("ground truth: simulating the neuron on %d trials per pattern", trials)
    with Progress(trials * len(outcome.optimized_rates), "ground truth: simulating", "trial pair", progress,
                  log) as bar:
        per_pattern = [ground_truth_response(rates, outcome.stimulus_segments, outcome.stimulus_time_ms,
                                             outcome.response_window_ms, n_trials=trials, seed=seed + index,
                                             config=neuron, on_simulated=bar.advance)
                       for index, rates in enumerate(outcome.optimized_rates)]
    p_stim = float(np.mean([r["p_spike_stim"] for r in per_pattern]))
    p_control = float(np.mean([r["p_spike_control"] for r in per_pattern]))
    log.info("ground truth: P(spike|stim) %.3f, P(spike|control) %.3f", p_stim, p_control)
    return {"available": True, "p_spike_stim": p_stim, "p_spike_control": p_control,
            "difference": p_stim - p_control, "n_trials": trials * len(per_pattern),
            "per_pattern": per_pattern}

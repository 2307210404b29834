"""Ground truth: run the optimized (and the initial) rates through the neuron the model imitates.

`ground_truth.simulator` chooses it: `demo` (the simulator configuration a demo model's params pickle records in
`data_dict['simulator_config']`; models without one have no ground truth), `neuron` (the user's cell in NEURON,
ground_truth.neuron) or a simulator function of the user's (`module:function`, `path/to/file.py:function`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from errors import ConfigError
from ground_truth.demo import DemoSimulator, NeuronConfig
from ground_truth.interface import Simulator
from ground_truth.neuron_backend.simulator import NeuronSimulator
from ground_truth.python_function import FunctionSimulator
from ground_truth.runner import TrialRunner
from ground_truth.trials import ground_truth_response
from progress import Progress, ProgressStyle

log = logging.getLogger(__name__)


def simulator_config_of(params: Any, params_path: Path | None) -> NeuronConfig | None:
    """The demo simulator configuration recorded in a model's (loaded) params pickle, or None when it records none;
    a ConfigError naming the pickle when it is not a valid one."""
    data = params.get("data_dict") if isinstance(params, dict) else None
    recorded = data.get("simulator_config") if isinstance(data, dict) else None
    if not isinstance(recorded, dict):
        return None
    try:
        return NeuronConfig.from_dict(recorded)
    except ConfigError as exc:
        raise ConfigError(
            f"{params_path}: data_dict['simulator_config'] is not a usable simulator configuration: {exc}."
        ) from None


def simulator_of(
    config, params: Any, params_path: Path | None, num_excitatory: int, num_inhibitory: int
) -> Simulator | None:
    """The run's simulator (None: a demo simulator the pickle does not name), checked against the model's input
    channels as far as this process can (NEURON's cell is built in a worker: see check_ground_truth)."""
    chosen = config.ground_truth.simulator
    if chosen == "neuron":
        return NeuronSimulator.resolve(config.ground_truth.neuron, num_excitatory, num_inhibitory)
    if chosen != "demo":
        return FunctionSimulator.resolve(chosen, Path.cwd())
    neuron = simulator_config_of(params, params_path)
    if neuron is None:
        return None
    channels = num_excitatory + num_inhibitory
    if neuron.num_segments != channels:
        raise ConfigError(
            f"{params_path}: data_dict['simulator_config'] has {neuron.num_excitatory_segments} + "
            f"{neuron.num_inhibitory_segments} = {neuron.num_segments} segments, but the model takes "
            f"{channels} input channels; the ground truth cannot be simulated for it."
        )
    return DemoSimulator(neuron)


def check_ground_truth(
    config,
    params: Any,
    params_path: Path | None,
    num_excitatory: int,
    num_inhibitory: int,
    window_ms: int,
    patterns: int,
) -> Simulator | None:
    """Before a run optimizes anything: the simulator exists, fits the model, answers one silent trial correctly
    (NEURON: the cell builds and has one synapse per channel; a function: imports and returns spike times), and
    the check's work (control and stimulated copies of the initial and the optimized rates) fits the budget; so
    that a run never fails only at its end. None when there is no simulator (a demo one the pickle does not name)."""
    simulator = simulator_of(config, params, params_path, num_excitatory, num_inhibitory)
    if simulator is None:
        return None
    trials = config.ground_truth.trials
    simulator.check_work(
        4 * trials * patterns, window_ms, f"the ground-truth check (ground_truth.trials={trials})", ConfigError
    )
    if not simulator.in_process:
        log.info("ground truth: checking %s on one silent trial", simulator.name)
        with TrialRunner(simulator, workers=1, stall_timeout_s=config.ground_truth.stall_timeout_s) as run:
            run(np.zeros((1, window_ms, num_excitatory + num_inhibitory), dtype=bool))
    return simulator


def simulated_response(
    run: TrialRunner, outcome, trials: int, seed: int, progress: ProgressStyle, rates: np.ndarray | None = None
) -> dict[str, Any]:
    """The neuron under an outcome's optimized rates (or `rates`, same layout), pooled over patterns:
    P(spike | stim), P(spike | control) in the response window and each copy's P(spike) outside it."""
    rates = outcome.optimized_rates if rates is None else rates
    with Progress(2 * trials * len(rates), f"ground truth, {run.simulator.name}", "trial", progress, log) as bar:
        per_pattern = [
            ground_truth_response(
                pattern,
                outcome.stimulus_segments,
                outcome.stimulus_time_ms,
                outcome.response_window_ms,
                run,
                outcome.num_excitatory,
                n_trials=trials,
                seed=seed + index,
                on_simulated=bar.advance,
            )
            for index, pattern in enumerate(rates)
        ]
    pooled = {
        key: float(np.mean([r[key] for r in per_pattern]))
        for key in ("p_spike_stim", "p_spike_control", "p_outside_stim", "p_outside_control")
    }
    log.info(
        "ground truth: P(spike|stim) %.3f, P(spike|control) %.3f; outside the window: %.3f / %.3f",
        pooled["p_spike_stim"],
        pooled["p_spike_control"],
        pooled["p_outside_stim"],
        pooled["p_outside_control"],
    )
    return {
        "available": True,
        **pooled,
        "difference": pooled["p_spike_stim"] - pooled["p_spike_control"],
        "n_trials": trials * len(per_pattern),
        "per_pattern": per_pattern,
    }


def ground_truth_check(
    run: TrialRunner | None, outcome, trials: int, seed: int, progress: ProgressStyle
) -> dict[str, Any]:
    """The ground truth of a run's optimized and initial rates, or why there is none."""
    if run is None:
        log.info("ground truth: not available (the model's pickle names no simulator configuration)")
        return {"available": False, "reason": "the model's parameters pickle names no simulator configuration"}
    log.info(
        "ground truth: simulating %s on %d trial pairs per pattern, initial and optimized rates (%d worker%s)",
        run.simulator.name,
        trials,
        run.workers,
        "" if run.workers == 1 else "s",
    )
    initial = simulated_response(run, outcome, trials, seed, progress, rates=outcome.initial_rates)
    optimized = simulated_response(run, outcome, trials, seed, progress)
    return {
        **optimized,
        "simulator": run.simulator.name,
        "initial": {key: value for key, value in initial.items() if key != "available"},
    }

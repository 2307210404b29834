"""The demo neuron: a small simulated cortical neuron that trains the shipped TCNs and checks optimized rates.

from ground_truth.demo import NeuronConfig, DemoSimulator, simulate
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from errors import ToolError
from ground_truth.demo.config import NeuronConfig
from ground_truth.demo.simulator import SimulationResult, compartment_of_segments, nmda_magnesium_block, simulate
from ground_truth.interface import SimulatedTrials, SimulateFunction, Simulator
from limits import MAX_SIMULATION_STEPS

__all__ = [
    "DemoSimulator",
    "NeuronConfig",
    "SimulationResult",
    "compartment_of_segments",
    "nmda_magnesium_block",
    "simulate",
]


@dataclass(frozen=True)
class DemoSimulator(Simulator):
    """The demo neuron behind the simulator interface (vectorized numpy: runs in the main process)."""

    config: NeuronConfig

    name = "the demo neuron"
    chunk_trials = 100
    in_process = True

    @property
    def num_segments(self) -> int:
        return self.config.num_segments

    def fingerprint(self) -> str:
        return "demo:" + json.dumps(self.config.to_dict(), sort_keys=True)

    def check_work(self, trials: int, duration_ms: int, subject: str, error: type[ToolError]) -> None:
        steps = trials * duration_ms * round(1 / self.config.dt_ms) * (self.config.num_compartments + 1)
        MAX_SIMULATION_STEPS.check(steps, subject, error, " compartment-steps")

    def open(self) -> SimulateFunction:
        config = self.config

        def run(spikes: np.ndarray) -> SimulatedTrials:
            if spikes.shape[1] != config.num_segments:
                raise ValueError(f"the demo neuron has {config.num_segments} input segments, got {spikes.shape[1]}")
            rasters = spikes.transpose(0, 2, 1)
            result = simulate(
                rasters[..., : config.num_excitatory_segments], rasters[..., config.num_excitatory_segments :], config
            )
            return SimulatedTrials(
                tuple(np.flatnonzero(row).astype(np.float64) for row in result.spikes), result.soma_v
            )

        return run

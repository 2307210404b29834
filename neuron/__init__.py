"""The demo neuron: a small simulated cortical neuron that trains the shipped TCNs and checks optimized rates.

    from neuron import NeuronConfig, simulate, ground_truth_response
"""

from neuron.config import NeuronConfig
from neuron.ground_truth import ground_truth_response, sample_spike_trains
from neuron.simulator import SimulationResult, compartment_of_segments, nmda_magnesium_block, simulate

__all__ = [
    "NeuronConfig",
    "SimulationResult",
    "compartment_of_segments",
    "ground_truth_response",
    "nmda_magnesium_block",
    "sample_spike_trains",
    "simulate",
]

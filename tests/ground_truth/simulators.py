"""Simulator functions for the tests of the simulator interface, called as `tests.ground_truth.simulators:<name>`
(in worker processes, like a user's)."""

from __future__ import annotations

import os

import numpy as np

COINCIDENCE = 3  # excitatory spikes in one ms that fire the toy neuron
NUM_EXCITATORY = 8


def coincidence(spikes: np.ndarray) -> list[np.ndarray]:
    """A toy neuron: one somatic spike at t + 0.5 ms for every ms t in which >= 3 excitatory segments spike."""
    calls = os.environ.get("GROUND_TRUTH_TEST_CALLS")
    if calls:  # counts the trials simulated, for the cache tests
        with open(calls, "a") as handle:
            handle.write(f"{len(spikes)}\n")
    counts = spikes[:, :NUM_EXCITATORY].sum(axis=1)
    return [np.flatnonzero(row >= COINCIDENCE) + 0.5 for row in counts]


def coincidence_with_voltage(spikes: np.ndarray) -> dict:
    """The toy neuron with a 'soma voltage': -70 mV plus 5 mV per excitatory input spike in that ms."""
    counts = spikes[:, :NUM_EXCITATORY].sum(axis=1)
    return {"spike_times": coincidence(spikes), "soma_v": -70.0 + 5.0 * counts}


# The small demo neuron of the pipeline tests' models (half of the channels excitatory).
SMALL_NEURON = {"num_compartments": 2, "ampa_weight_ns": 12.0, "nmda_weight_ns": 6.0, "gaba_weight_ns": 10.0}


def small_neuron(excitatory: int, inhibitory: int):
    from ground_truth.demo import NeuronConfig

    return NeuronConfig(num_excitatory_segments=excitatory, num_inhibitory_segments=inhibitory, **SMALL_NEURON)


def small_neuron_spike_times(spikes: np.ndarray) -> list[np.ndarray]:
    """The small demo neuron behind the function interface, spike times only (no soma voltage)."""
    from ground_truth.demo import DemoSimulator

    half = spikes.shape[1] // 2
    return list(DemoSimulator(small_neuron(half, spikes.shape[1] - half)).open()(spikes).spike_times)


def crashes(spikes: np.ndarray) -> list:
    os._exit(3)


def raises(spikes: np.ndarray) -> list:
    raise RuntimeError("the cell exploded")


class LyingSequence(list):
    """A list whose len() says `claimed`, whatever it holds."""

    def __init__(self, items, claimed):
        super().__init__(items)
        self.claimed = claimed

    def __len__(self):
        return self.claimed


def hangs(spikes: np.ndarray) -> list:
    import time

    time.sleep(3600)


def hangs_ignoring_sigterm(spikes: np.ndarray) -> list:
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.1)


class _Custom(BaseException):
    def __reduce__(self):
        raise TypeError("cannot pickle this")


def _raise(error):
    def simulate(spikes):
        raise error

    return simulate


# Each exits the simulator's code with something else than an answer; every one must become a SimulatorError.
ESCAPES = {
    "system_exit_0": _raise(SystemExit(0)),
    "system_exit_3": _raise(SystemExit(3)),
    "keyboard_interrupt": _raise(KeyboardInterrupt()),
    "generator_exit": _raise(GeneratorExit()),
    "unpicklable_base_exception": _raise(_Custom("odd")),
}
for _name, _function in ESCAPES.items():
    globals()[f"escape_{_name}"] = _function


BAD_ANSWERS = {
    "lying_len_long": lambda spikes: LyingSequence([np.zeros(0)] * (2 * len(spikes)), len(spikes)),
    "lying_len_short": lambda spikes: LyingSequence([np.zeros(0)] * (len(spikes) // 2), len(spikes)),
    "a_generator": lambda spikes: (np.zeros(0) for _ in spikes),
    "negative_time": lambda spikes: [np.array([-5.0])] * len(spikes),
    "time_beyond_the_trial": lambda spikes: [np.array([float(spikes.shape[2])])] * len(spikes),
    "string_times": lambda spikes: [["1", "2"]] * len(spikes),
    "ragged_times": lambda spikes: [[[1.0, 2.0], [3.0]]] * len(spikes),
    "object_times": lambda spikes: [np.array([object()])] * len(spikes),
    "soma_v_huge": lambda spikes: {
        "spike_times": [np.zeros(0)] * len(spikes),
        "soma_v": np.full((len(spikes), spikes.shape[2]), 1e300),
    },
    "soma_v_text": lambda spikes: {
        "spike_times": [np.zeros(0)] * len(spikes),
        "soma_v": np.full((len(spikes), spikes.shape[2]), "x"),
    },
    "wrong_count": lambda spikes: [np.zeros(0)] * (len(spikes) + 1),
    "not_a_sequence": lambda spikes: 42,
    "a_string": lambda spikes: "spikes",
    "nan_time": lambda spikes: [np.array([np.nan])] * len(spikes),
    "infinite_time": lambda spikes: [np.array([np.inf])] * len(spikes),
    "text_times": lambda spikes: [["a", "b"]] * len(spikes),
    "too_many_spikes": lambda spikes: [np.zeros(2 * spikes.shape[2] + 5)] * len(spikes),
    "unknown_key": lambda spikes: {"spike_times": [np.zeros(0)] * len(spikes), "voltage": 1},
    "no_spike_times": lambda spikes: {"soma_v": np.zeros((len(spikes), spikes.shape[2]))},
    "soma_v_shape": lambda spikes: {"spike_times": [np.zeros(0)] * len(spikes), "soma_v": np.zeros((1, 2, 3))},
    "soma_v_nan": lambda spikes: {
        "spike_times": [np.zeros(0)] * len(spikes),
        "soma_v": np.full((len(spikes), spikes.shape[2]), np.nan),
    },
}
for _name, _function in BAD_ANSWERS.items():
    globals()[f"bad_{_name}"] = _function

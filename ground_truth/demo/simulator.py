"""Numerical integration of the demo neuron, vectorized over trials (equations in ground_truth/demo/README.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ground_truth.demo.config import NeuronConfig


@dataclass(frozen=True)
class SimulationResult:
    """1 ms resolution outputs of ``simulate`` for N trials of T ms."""

    spikes: np.ndarray  # (N, T) uint8: 1 where the soma fired during that millisecond
    soma_v: np.ndarray  # (N, T) float32 mV at the end of each ms; spike_peak_mv in bins with a spike
    dend_v: np.ndarray  # (N, T, num_compartments) float32 mV at the end of each ms


def nmda_magnesium_block(voltage_mv: np.ndarray | float, magnesium_mm: float = 1.0) -> np.ndarray:
    """Fraction of NMDA conductance not blocked by Mg2+ (Jahr & Stevens 1990): 1 / (1 + [Mg]/3.57 · e^(−0.062 V))."""
    return 1.0 / (1.0 + (magnesium_mm / 3.57) * np.exp(-0.062 * np.asarray(voltage_mv)))


def compartment_of_segments(num_segments: int, num_compartments: int) -> np.ndarray:
    """Compartment index of each segment of one type: contiguous equal blocks (segment i → i·C // n)."""
    return np.arange(num_segments) * num_compartments // num_segments


def _segments_to_compartments(num_segments: int, num_compartments: int) -> np.ndarray:
    """(segments, compartments) 0/1 matrix that sums a spike raster per compartment."""
    assignment = np.zeros((num_segments, num_compartments), dtype=np.float32)
    assignment[np.arange(num_segments), compartment_of_segments(num_segments, num_compartments)] = 1.0
    return assignment


def _nmda_peak_normalization(rise_ms: float, decay_ms: float) -> float:
    """Scale that makes the difference of exponentials (decay − rise) peak at 1 after one spike."""
    peak_time = rise_ms * decay_ms / (decay_ms - rise_ms) * np.log(decay_ms / rise_ms)
    return 1.0 / (np.exp(-peak_time / decay_ms) - np.exp(-peak_time / rise_ms))


def _check_raster(name: str, spikes: np.ndarray, num_segments: int) -> np.ndarray:
    spikes = np.asarray(spikes)
    if spikes.ndim != 3 or spikes.shape[2] != num_segments:
        raise ValueError(f"{name} must have shape (trials, time_ms, {num_segments}), got {spikes.shape}")
    return spikes


def simulate(exc_spikes: np.ndarray, inh_spikes: np.ndarray, config: NeuronConfig | None = None) -> SimulationResult:
    """Simulate N independent trials driven by presynaptic spike rasters.

    exc_spikes: (N, T, num_excitatory_segments) and inh_spikes: (N, T, num_inhibitory_segments), 0/1 (or counts)
    per 1 ms bin. A presynaptic spike in bin k acts at the start of that millisecond. The result is deterministic.
    """
    config = config or NeuronConfig()
    exc = _check_raster("exc_spikes", exc_spikes, config.num_excitatory_segments)
    inh = _check_raster("inh_spikes", inh_spikes, config.num_inhibitory_segments)
    if exc.shape[:2] != inh.shape[:2]:
        raise ValueError(f"exc_spikes and inh_spikes disagree on (trials, time): {exc.shape[:2]} vs {inh.shape[:2]}")
    num_trials, duration_ms = exc.shape[:2]
    num_compartments = config.num_compartments

    # Spike counts per compartment and ms: (T, N, C), time first so each step reads a contiguous slice.
    exc_counts = np.ascontiguousarray(
        np.moveaxis(
            exc.astype(np.float32) @ _segments_to_compartments(config.num_excitatory_segments, num_compartments), 1, 0
        )
    )
    inh_counts = np.ascontiguousarray(
        np.moveaxis(
            inh.astype(np.float32) @ _segments_to_compartments(config.num_inhibitory_segments, num_compartments), 1, 0
        )
    )

    dt = config.dt_ms
    steps_per_ms = int(round(1.0 / dt))
    refractory_steps = int(round(config.refractory_ms / dt))
    ampa_decay = np.exp(-dt / config.ampa_tau_ms)
    nmda_rise_decay = np.exp(-dt / config.nmda_rise_ms)
    nmda_decay_decay = np.exp(-dt / config.nmda_decay_ms)
    gaba_decay = np.exp(-dt / config.gaba_tau_ms)
    nmda_increment = config.nmda_weight_ns * _nmda_peak_normalization(config.nmda_rise_ms, config.nmda_decay_ms)

    soma_total_ns = config.soma_leak_ns + num_compartments * config.coupling_ns
    soma_relaxation = np.exp(-dt * soma_total_ns / config.soma_capacitance_pf)
    dendrite_passive_ns = config.dendrite_leak_ns + config.coupling_ns

    shape = (num_trials, num_compartments)
    g_ampa = np.zeros(shape)
    nmda_rise = np.zeros(shape)
    nmda_fall = np.zeros(shape)
    g_gaba = np.zeros(shape)
    v_dend = np.full(shape, config.leak_reversal_mv)
    v_soma = np.full(num_trials, config.leak_reversal_mv)
    refractory_left = np.zeros(num_trials, dtype=np.int64)

    spikes = np.zeros((num_trials, duration_ms), dtype=np.uint8)
    soma_v = np.empty((num_trials, duration_ms), dtype=np.float32)
    dend_v = np.empty((num_trials, duration_ms, num_compartments), dtype=np.float32)

    for ms in range(duration_ms):
        g_ampa += config.ampa_weight_ns * exc_counts[ms]
        nmda_rise += nmda_increment * exc_counts[ms]
        nmda_fall += nmda_increment * exc_counts[ms]
        g_gaba += config.gaba_weight_ns * inh_counts[ms]
        fired_this_ms = np.zeros(num_trials, dtype=bool)
        for _ in range(steps_per_ms):
            # Exponential Euler per compartment, neighbours' voltages taken from the previous step.
            g_excitatory = g_ampa + (nmda_fall - nmda_rise) * nmda_magnesium_block(v_dend, config.magnesium_mm)
            g_total = dendrite_passive_ns + g_excitatory + g_gaba
            v_target = (
                config.dendrite_leak_ns * config.leak_reversal_mv
                + config.coupling_ns * v_soma[:, None]
                + g_excitatory * config.excitatory_reversal_mv
                + g_gaba * config.inhibitory_reversal_mv
            ) / g_total
            new_dend = v_target + (v_dend - v_target) * np.exp(-dt * g_total / config.dendrite_capacitance_pf)

            soma_target = (
                config.soma_leak_ns * config.leak_reversal_mv + config.coupling_ns * v_dend.sum(axis=1)
            ) / soma_total_ns
            v_soma = soma_target + (v_soma - soma_target) * soma_relaxation
            v_dend = new_dend

            refractory = refractory_left > 0
            v_soma[refractory] = config.reset_mv
            refractory_left[refractory] -= 1
            fired = v_soma >= config.threshold_mv
            v_soma[fired] = config.reset_mv
            refractory_left[fired] = refractory_steps
            fired_this_ms |= fired

            g_ampa *= ampa_decay
            nmda_rise *= nmda_rise_decay
            nmda_fall *= nmda_decay_decay
            g_gaba *= gaba_decay

        spikes[:, ms] = fired_this_ms
        soma_v[:, ms] = np.where(fired_this_ms, config.spike_peak_mv, v_soma)
        dend_v[:, ms] = v_dend
    return SimulationResult(spikes=spikes, soma_v=soma_v, dend_v=dend_v)

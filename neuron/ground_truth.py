"""Ask the simulated neuron itself whether a stimulus makes it fire under given presynaptic rates."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from neuron.config import NeuronConfig
from neuron.simulator import simulate

MIN_TRIALS = 200
CHUNK_TRIALS = 50  # trial pairs simulated at once (trials are independent: chunking changes no result)


def sample_spike_trains(rates: np.ndarray, n_trials: int, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli spike rasters (n_trials, T, segments) from rates (segments, T) in spikes per ms (one draw per bin)."""
    probabilities = np.clip(np.asarray(rates, dtype=np.float64), 0.0, 1.0).T
    return rng.random((n_trials,) + probabilities.shape) < probabilities


def ground_truth_response(rates: np.ndarray, stimulus_segments: Sequence[int], stimulus_time: int,
                          response_window: int, n_trials: int = MIN_TRIALS, seed: int = 0,
                          config: NeuronConfig | None = None,
                          on_simulated: Callable[[int], None] | None = None) -> dict:
    """P(output spike in [t, t + w)) with and without one spike on each stimulus segment at t, and P(any output
    spike outside that window) for each copy.

    rates: (segments, T) spikes/ms, excitatory segments first. The control and stimulated copies share every
    sampled spike except the stimulus segments at t (silent in the control, spiking in the stimulated copy), so
    the difference measures the stimulus alone. The first t + w ms of every trial are drawn before the rest, so
    that the in-window figures do not depend on how long the pattern runs on. `on_simulated(pairs)` is called after
    each chunk of trial pairs.
    """
    config = config or NeuronConfig()
    rates = np.asarray(rates)
    stimulus_segments = np.asarray(stimulus_segments, dtype=np.int64)
    if rates.ndim != 2 or rates.shape[0] != config.num_segments:
        raise ValueError(f"rates must have shape ({config.num_segments}, time_ms), got {rates.shape}")
    if stimulus_segments.size == 0 or stimulus_segments.min() < 0 \
            or stimulus_segments.max() >= config.num_excitatory_segments:
        raise ValueError(f"stimulus segments must be excitatory indices in [0, {config.num_excitatory_segments}), "
                         f"got {stimulus_segments.tolist()}")
    if not 0 <= stimulus_time < stimulus_time + response_window <= rates.shape[1]:
        raise ValueError(f"stimulus time {stimulus_time} and window {response_window} must fit in "
                         f"{rates.shape[1]} ms")
    if n_trials < MIN_TRIALS:
        raise ValueError(f"n_trials must be at least {MIN_TRIALS}, got {n_trials}")

    end = stimulus_time + response_window
    rng = np.random.default_rng(seed)
    spikes = sample_spike_trains(rates[:, :end], n_trials, rng)
    spikes = np.concatenate([spikes, sample_spike_trains(rates[:, end:], n_trials, rng)], axis=1)
    control = spikes.copy()
    control[:, stimulus_time, stimulus_segments] = False
    stimulated = spikes
    stimulated[:, stimulus_time, stimulus_segments] = True

    n_exc = config.num_excitatory_segments
    fired = np.zeros((2, 2, n_trials), dtype=bool)  # (in window, outside) x (control, stimulated) x trials
    outside = np.ones(rates.shape[1], dtype=bool)
    outside[stimulus_time:end] = False
    for start in range(0, n_trials, CHUNK_TRIALS):
        chunk = slice(start, min(start + CHUNK_TRIALS, n_trials))
        both = np.concatenate([control[chunk], stimulated[chunk]])
        output = simulate(both[..., :n_exc], both[..., n_exc:], config).spikes.astype(bool)
        pairs = chunk.stop - chunk.start
        for where, bins in enumerate((~outside, outside)):
            crossed = output[:, bins].any(axis=1)
            fired[where, 0, chunk], fired[where, 1, chunk] = crossed[:pairs], crossed[pairs:]
        if on_simulated is not None:
            on_simulated(pairs)
    (p_control, p_stim), (outside_control, outside_stim) = fired.mean(axis=2).tolist()
    return {
        "p_spike_stim": p_stim,
        "p_spike_control": p_control,
        "difference": p_stim - p_control,
        "p_outside_stim": outside_stim,
        "p_outside_control": outside_control,
        "n_trials": int(n_trials),
        "seed": int(seed),
        "stimulus_segments": stimulus_segments.tolist(),
        "stimulus_time": int(stimulus_time),
        "response_window": int(response_window),
    }

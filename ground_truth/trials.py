"""Ask the neuron the model imitates whether a stimulus makes it fire under given presynaptic rates: paired
control/stimulated trials sampled from the rates, simulated by any simulator of the interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ground_truth.interface import SimulatedTrials

MIN_TRIALS = 200


def sample_spike_trains(rates: np.ndarray, n_trials: int, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli spike rasters (n_trials, T, segments) from rates (segments, T) in spikes per ms (one draw per bin)."""
    probabilities = np.clip(np.asarray(rates, dtype=np.float64), 0.0, 1.0).T
    return rng.random((n_trials,) + probabilities.shape) < probabilities


def paired_trials(
    rates: np.ndarray, stimulus_segments: np.ndarray, stimulus_time: int, response_window: int, n_trials: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Control and stimulated rasters (n_trials, T, segments) that share every sampled spike except the stimulus
    segments at t (silent in the control, spiking in the stimulated copy). The first t + w ms of every trial are
    drawn before the rest, so that the in-window figures do not depend on how long the pattern runs on."""
    end = stimulus_time + response_window
    rng = np.random.default_rng(seed)
    spikes = sample_spike_trains(rates[:, :end], n_trials, rng)
    spikes = np.concatenate([spikes, sample_spike_trains(rates[:, end:], n_trials, rng)], axis=1)
    control = spikes.copy()
    control[:, stimulus_time, stimulus_segments] = False
    stimulated = spikes
    stimulated[:, stimulus_time, stimulus_segments] = True
    return control, stimulated


def ground_truth_response(
    rates: np.ndarray,
    stimulus_segments: Sequence[int],
    stimulus_time: int,
    response_window: int,
    simulate: Callable[..., SimulatedTrials],
    num_excitatory: int,
    n_trials: int = MIN_TRIALS,
    seed: int = 0,
    on_simulated: Callable[[int], None] | None = None,
) -> dict:
    """P(output spike in [t, t + w)) with and without one spike on each stimulus segment at t, and P(any output
    spike outside that window) for each copy.

    rates: (segments, T) spikes/ms, the `num_excitatory` excitatory segments first. `simulate(spikes,
    on_simulated)` answers for (N, T, segments) rasters (a TrialRunner); the control and stimulated copies are
    paired (paired_trials), so the difference measures the stimulus alone. `on_simulated(trials)` is called as
    trials are simulated (two per pair).
    """
    rates = np.asarray(rates)
    stimulus_segments = np.asarray(stimulus_segments, dtype=np.int64)
    if rates.ndim != 2:
        raise ValueError(f"rates must have shape (segments, time_ms), got {rates.shape}")
    if stimulus_segments.size == 0 or stimulus_segments.min() < 0 or stimulus_segments.max() >= num_excitatory:
        raise ValueError(
            f"stimulus segments must be excitatory indices in [0, {num_excitatory}), got {stimulus_segments.tolist()}"
        )
    if not 0 <= stimulus_time < stimulus_time + response_window <= rates.shape[1]:
        raise ValueError(f"stimulus time {stimulus_time} and window {response_window} must fit in {rates.shape[1]} ms")
    if n_trials < MIN_TRIALS:
        raise ValueError(f"n_trials must be at least {MIN_TRIALS}, got {n_trials}")

    end = stimulus_time + response_window
    control, stimulated = paired_trials(rates, stimulus_segments, stimulus_time, response_window, n_trials, seed)
    answer = simulate(np.concatenate([control, stimulated]), on_simulated)
    in_window = answer.fired_between(stimulus_time, end)
    outside = answer.fired_between(0, stimulus_time) | answer.fired_between(end, rates.shape[1])
    p_control, p_stim = in_window[:n_trials].mean(), in_window[n_trials:].mean()
    return {
        "p_spike_stim": float(p_stim),
        "p_spike_control": float(p_control),
        "difference": float(p_stim - p_control),
        "p_outside_stim": float(outside[n_trials:].mean()),
        "p_outside_control": float(outside[:n_trials].mean()),
        "n_trials": int(n_trials),
        "seed": int(seed),
        "stimulus_segments": stimulus_segments.tolist(),
        "stimulus_time": int(stimulus_time),
        "response_window": int(response_window),
    }

"""Held-out evaluation of rates: sampled control/stimulated trial pairs through the model in fp32.

A trial spikes when its maximum spike probability in the response window reaches the threshold. Reported per
pattern and pooled over patterns: P(spike | stimulated), P(spike | control) with Wilson intervals, their difference
with Newcombe's interval for paired proportions (the two copies of a trial share their background spikes), and
the mean windowed maximum probabilities with normal intervals, the model's own estimate of P(a spike in the
window), 1 - prod_t(1 - p_t) over its ms (comparable with a simulated neuron's P(spike): a model calibrated on
jittered spikes spreads its probability over several ms, none of which may reach the threshold), and for each
copy the probability of a threshold
crossing anywhere outside the response window (firing the objective did not ask for) and the model's own estimate of
the probability of a spike there, 1 - prod_t(1 - p_t) over those ms, which is what a simulated neuron's P(any spike
outside the window) compares with (a long stretch of small probabilities rarely crosses the threshold but often
fires a neuron). The evaluation seed is independent of the
optimization's, and the initial and optimized rates are evaluated with the same seed (common random numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from torch import nn

from optimization.config import EvaluationConfig
from optimization.objective import outside_window_mask, window_max
from optimization.runtime import MicroBatcher, make_generator
from optimization.sampler import SpikeSampler, draw_noise
from optimization.stimulus import PairedStimulus
from progress import Progress

# Per-pattern sums accumulated on the device, in this order.
_COUNTS = (
    "stim_spikes",
    "control_spikes",
    "stim_only",
    "control_only",
    "stim_prob",
    "stim_prob_sq",
    "control_prob",
    "control_prob_sq",
    "stim_outside",
    "control_outside",
    "stim_outside_any",
    "control_outside_any",
    "stim_any",
    "control_any",
)


@dataclass
class RateEvaluation:
    summary: dict  # JSON-ready: pooled statistics plus "per_pattern"
    traces: dict[str, tuple[np.ndarray, np.ndarray]]  # copy -> (mean, std) of the spike probability over time
    example: dict[str, np.ndarray]  # first trial of pattern 0: stimulated spikes (time, segments), both responses


def wilson_interval(successes: float, trials: int, z: float) -> list[float]:
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # The interval contains p exactly; min/max only undo rounding at p = 0 or 1.
    return [min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))]


def paired_difference_interval(
    both: float, stim_only: float, control_only: float, trials: int, z: float
) -> list[float]:
    """Newcombe (1998, method 10) interval for P(stim) - P(control) from paired binary outcomes."""
    neither = trials - both - stim_only - control_only
    p_stim, p_control = (both + stim_only) / trials, (both + control_only) / trials
    low_stim, high_stim = wilson_interval(both + stim_only, trials, z)
    low_control, high_control = wilson_interval(both + control_only, trials, z)
    margins = (both + stim_only) * (control_only + neither) * (both + control_only) * (stim_only + neither)
    phi = (both * neither - stim_only * control_only) / math.sqrt(margins) if margins > 0 else 0.0
    below = math.sqrt(
        max(
            0.0,
            (p_stim - low_stim) ** 2
            - 2 * phi * (p_stim - low_stim) * (high_control - p_control)
            + (high_control - p_control) ** 2,
        )
    )
    above = math.sqrt(
        max(
            0.0,
            (high_stim - p_stim) ** 2
            - 2 * phi * (high_stim - p_stim) * (p_control - low_control)
            + (p_control - low_control) ** 2,
        )
    )
    difference = p_stim - p_control
    return [min(difference, max(-1.0, difference - below)), max(difference, min(1.0, difference + above))]


def _mean_interval(total: float, total_sq: float, trials: int, z: float) -> list[float]:
    """Normal interval of a mean probability, clipped to [0, 1]."""
    mean = total / trials
    variance = max(0.0, total_sq / trials - mean * mean) * trials / max(trials - 1, 1)
    half = z * math.sqrt(variance / trials)
    return [max(0.0, mean - half), min(1.0, mean + half)]


def summarize(counts: dict[str, float], trials: int, z: float) -> dict:
    both = counts["stim_spikes"] - counts["stim_only"]
    return {
        "p_spike_stim": counts["stim_spikes"] / trials,
        "p_spike_stim_ci": wilson_interval(counts["stim_spikes"], trials, z),
        "p_spike_control": counts["control_spikes"] / trials,
        "p_spike_control_ci": wilson_interval(counts["control_spikes"], trials, z),
        "difference": (counts["stim_spikes"] - counts["control_spikes"]) / trials,
        "difference_ci": paired_difference_interval(both, counts["stim_only"], counts["control_only"], trials, z),
        "mean_prob_stim": counts["stim_prob"] / trials,
        "mean_prob_stim_ci": _mean_interval(counts["stim_prob"], counts["stim_prob_sq"], trials, z),
        "mean_prob_control": counts["control_prob"] / trials,
        "mean_prob_control_ci": _mean_interval(counts["control_prob"], counts["control_prob_sq"], trials, z),
        "p_outside_stim": counts["stim_outside"] / trials,
        "p_outside_stim_ci": wilson_interval(counts["stim_outside"], trials, z),
        "p_outside_control": counts["control_outside"] / trials,
        "p_outside_control_ci": wilson_interval(counts["control_outside"], trials, z),
        "expected_spike_stim": counts["stim_any"] / trials,
        "expected_spike_control": counts["control_any"] / trials,
        "expected_outside_spike_stim": counts["stim_outside_any"] / trials,
        "expected_outside_spike_control": counts["control_outside_any"] / trials,
        "n_trials": trials,
    }


@torch.no_grad()
def evaluate_rates(
    model: nn.Module,
    rates: torch.Tensor,
    sampler: SpikeSampler,
    paired: PairedStimulus,
    config: EvaluationConfig,
    seed: int,
    micro_batcher: MicroBatcher,
    progress: Progress,
) -> RateEvaluation:
    """Evaluate rates (patterns, time, segments) with `trials_per_pattern` trial pairs each, chunk by chunk."""
    patterns, duration, segments = rates.shape
    trials = config.trials_per_pattern
    total = patterns * trials
    device = rates.device
    pattern_of_trial = torch.arange(total, device=device) // trials
    window = paired.stimulus.response_window()
    outside = outside_window_mask(duration, window, device)
    has_outside = window.stop - window.start < duration
    state: dict = {}
    progress_before = progress.done

    def restart() -> None:
        progress.done = progress_before  # an out-of-memory retry evaluates every chunk again
        state["generator"] = make_generator(seed, device)
        state["counts"] = torch.zeros(len(_COUNTS), patterns, device=device)
        state["traces"] = torch.zeros(4, duration, device=device)  # control, control², stimulated, stimulated²
        state["maxima"] = torch.zeros(2, device=device)  # highest windowed probability: stimulated, control
        state["example"] = None

    def work(chunk: slice) -> None:
        noise = draw_noise((chunk.stop - chunk.start, duration, segments), state["generator"], device)
        spikes = sampler.hard_spikes(rates[pattern_of_trial[chunk]], noise)
        control, stimulated = paired.pair(spikes)
        probability = model(torch.cat([control, stimulated])).float()
        control_probability, stimulated_probability = probability.chunk(2)
        control_max = window_max(control_probability, window)
        stimulated_max = window_max(stimulated_probability, window)
        stim_spike = (stimulated_max >= config.spike_threshold).float()
        control_spike = (control_max >= config.spike_threshold).float()
        stim_outside, control_outside = (
            (copy[:, outside].amax(dim=1) >= config.spike_threshold).float()
            if has_outside
            else torch.zeros_like(stim_spike)
            for copy in (stimulated_probability, control_probability)
        )
        stim_outside_any, control_outside_any, stim_any, control_any = (
            -torch.expm1(torch.log1p(-copy[:, bins].clamp_max(1 - 1e-7)).sum(dim=1))
            for bins in (outside, window)
            for copy in (stimulated_probability, control_probability)
        )
        values = torch.stack(
            [
                stim_spike,
                control_spike,
                stim_spike * (1 - control_spike),
                control_spike * (1 - stim_spike),
                stimulated_max,
                stimulated_max.square(),
                control_max,
                control_max.square(),
                stim_outside,
                control_outside,
                stim_outside_any,
                control_outside_any,
                stim_any,
                control_any,
            ],
            dim=1,
        )
        state["counts"].index_add_(1, pattern_of_trial[chunk], values.T)
        state["traces"] += torch.stack(
            [
                control_probability.sum(0),
                control_probability.square().sum(0),
                stimulated_probability.sum(0),
                stimulated_probability.square().sum(0),
            ]
        )
        state["maxima"] = torch.maximum(state["maxima"], torch.stack([stimulated_max.max(), control_max.max()]))
        if state["example"] is None:
            state["example"] = (stimulated[0], control_probability[0], stimulated_probability[0])
        progress.advance(chunk.stop - chunk.start)

    restart()
    micro_batcher.run(total, work, restart)
    counts = state["counts"].cpu().double().numpy()
    z = NormalDist().inv_cdf(0.5 + config.confidence / 2)
    per_pattern = [summarize(dict(zip(_COUNTS, counts[:, p].tolist())), trials, z) for p in range(patterns)]
    highest_stim, highest_control = state["maxima"].tolist()
    summary = {
        **summarize(dict(zip(_COUNTS, counts.sum(axis=1).tolist())), total, z),
        "max_prob_stim": highest_stim,
        "max_prob_control": highest_control,
        "per_pattern": per_pattern,
    }
    traces = state["traces"].cpu().double().numpy() / total
    spread = np.sqrt(np.clip(traces[[1, 3]] - traces[[0, 2]] ** 2, 0, None))
    example_spikes, example_control, example_stimulated = (t.cpu().numpy() for t in state["example"])
    return RateEvaluation(
        summary=summary,
        traces={"control": (traces[0], spread[0]), "stimulated": (traces[2], spread[1])},
        example={
            "stimulated_spikes": example_spikes.astype(bool),
            "control_probability": example_control,
            "stimulated_probability": example_stimulated,
        },
    )

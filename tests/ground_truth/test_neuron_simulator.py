"""The demo neuron: outputs, input-output trends, NMDA voltage dependence, timing, determinism, config."""

import numpy as np
import pytest

from errors import ConfigError
from ground_truth.demo import NeuronConfig, compartment_of_segments, nmda_magnesium_block, simulate
from ground_truth.trials import sample_spike_trains

CONFIG = NeuronConfig()
N_EXC = CONFIG.num_excitatory_segments
N_INH = CONFIG.num_inhibitory_segments


def silent(trials: int, duration_ms: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((trials, duration_ms, N_EXC), np.uint8), np.zeros((trials, duration_ms, N_INH), np.uint8)


def firing_rate_hz(exc_rate: float, inh_rate: float, seed: int = 0) -> float:
    """Mean output rate over 20 trials of 1 s under constant Bernoulli background, first 100 ms dropped."""
    rates = np.concatenate([np.full((N_EXC, 1000), exc_rate), np.full((N_INH, 1000), inh_rate)])
    spikes = sample_spike_trains(rates, 20, np.random.default_rng(seed))
    result = simulate(spikes[..., :N_EXC], spikes[..., N_EXC:], CONFIG)
    return float(result.spikes[:, 100:].mean() * 1000)


def soma_response(exc: np.ndarray, config: NeuronConfig = CONFIG) -> np.ndarray:
    """Somatic trace of one trial driven by an excitatory raster (T, segments) alone."""
    return simulate(exc[None], np.zeros((1, exc.shape[0], N_INH)), config).soma_v[0]


def test_shapes_and_dtypes():
    exc, inh = silent(3, 25)
    result = simulate(exc, inh, CONFIG)
    assert result.spikes.shape == (3, 25) and result.spikes.dtype == np.uint8
    assert result.soma_v.shape == (3, 25) and result.soma_v.dtype == np.float32
    assert result.dend_v.shape == (3, 25, CONFIG.num_compartments) and result.dend_v.dtype == np.float32


def test_rejects_wrong_segment_counts():
    exc, inh = silent(1, 10)
    with pytest.raises(ValueError, match="exc_spikes"):
        simulate(exc[..., :-1], inh, CONFIG)
    with pytest.raises(ValueError, match="disagree"):
        simulate(exc, inh[:, :5], CONFIG)


def test_no_input_no_spikes_and_rest():
    result = simulate(*silent(2, 300), CONFIG)
    assert result.spikes.sum() == 0
    np.testing.assert_allclose(result.soma_v, CONFIG.leak_reversal_mv)
    np.testing.assert_allclose(result.dend_v, CONFIG.leak_reversal_mv)


def test_typical_background_gives_low_but_nonzero_rate():
    assert 3.0 < firing_rate_hz(0.0125, 0.02) < 40.0


def test_rate_rises_with_excitation():
    rates = [firing_rate_hz(exc, 0.02) for exc in (0.008, 0.0125, 0.018)]
    assert rates[0] < rates[1] < rates[2]


def test_rate_falls_with_inhibition():
    rates = [firing_rate_hz(0.0125, inh) for inh in (0.01, 0.02, 0.03)]
    assert rates[0] > rates[1] > rates[2]


def test_magnesium_block_is_monotone_and_matches_jahr_stevens():
    voltages = np.linspace(-100, 40, 200)
    block = nmda_magnesium_block(voltages, 1.0)
    assert np.all(np.diff(block) > 0) and np.all((block > 0) & (block < 1))
    assert nmda_magnesium_block(-70.0, 1.0) == pytest.approx(1 / (1 + np.exp(4.34) / 3.57))
    np.testing.assert_allclose(nmda_magnesium_block(voltages, 0.0), 1.0)


def nmda_only_response(config: NeuronConfig, primed: bool) -> float:
    """Somatic voltage area of 2 NMDA-only spikes on compartment 0, optionally 30 ms after a priming volley there."""
    exc = np.zeros((150, N_EXC))
    if primed:
        exc[20, :8] = 1
    baseline = soma_response(exc, config)
    exc[50, 8:10] = 1
    return float((soma_response(exc, config) - baseline)[50:].sum())


def test_nmda_effect_grows_with_depolarization():
    # AMPA off: the same two spikes depolarize the soma more when their dendrite is already depolarized
    # (magnesium unblocks) ...
    blocked = NeuronConfig(ampa_weight_ns=1e-6)
    assert nmda_only_response(blocked, primed=True) > 1.5 * nmda_only_response(blocked, primed=False)
    # ... whereas without magnesium the smaller driving force makes them weaker.
    unblocked = NeuronConfig(ampa_weight_ns=1e-6, magnesium_mm=0.0)
    assert nmda_only_response(unblocked, primed=True) < nmda_only_response(unblocked, primed=False)


def test_synchronous_input_beats_the_same_spikes_spread_in_time():
    synchronous = np.zeros((200, N_EXC))
    synchronous[50, :6] = 1
    spread = np.zeros((200, N_EXC))
    spread[50 + 15 * np.arange(6), np.arange(6)] = 1
    rest = CONFIG.leak_reversal_mv
    assert soma_response(synchronous).max() - rest > 1.5 * (soma_response(spread).max() - rest)


def test_grouping_on_compartments_matters():
    clustered = np.zeros((100, N_EXC))
    clustered[20, :6] = 1  # all on compartment 0
    distributed = np.zeros((100, N_EXC))
    distributed[20, 10 * np.arange(6)] = 1  # one on each of compartments 0..5
    assert not np.allclose(soma_response(clustered), soma_response(distributed), atol=0.5)


def test_segments_map_to_contiguous_compartments():
    assert compartment_of_segments(80, 8).tolist() == np.repeat(np.arange(8), 10).tolist()
    assert np.bincount(compartment_of_segments(100, 6)).tolist() == [17, 17, 16, 17, 17, 16]


def test_deterministic():
    rng = np.random.default_rng(3)
    exc = rng.random((4, 200, N_EXC)) < 0.015
    inh = rng.random((4, 200, N_INH)) < 0.02
    first, second = simulate(exc, inh, CONFIG), simulate(exc, inh, CONFIG)
    for a, b in zip((first.spikes, first.soma_v, first.dend_v), (second.spikes, second.soma_v, second.dend_v)):
        np.testing.assert_array_equal(a, b)


def test_trials_are_independent():
    rng = np.random.default_rng(4)
    exc = rng.random((3, 200, N_EXC)) < 0.015
    inh = rng.random((3, 200, N_INH)) < 0.02
    together = simulate(exc, inh, CONFIG)
    alone = simulate(exc[1:2], inh[1:2], CONFIG)
    np.testing.assert_array_equal(together.spikes[1], alone.spikes[0])
    np.testing.assert_allclose(together.soma_v[1], alone.soma_v[0], atol=1e-4)


def test_config_round_trips_through_plain_dict():
    values = CONFIG.to_dict()
    assert all(type(value) in (int, float) for value in values.values())
    assert NeuronConfig.from_dict(values) == CONFIG
    custom = NeuronConfig.from_dict({**values, "num_compartments": 4, "nmda_weight_ns": np.float32(1.5)})
    assert custom.num_compartments == 4 and type(custom.nmda_weight_ns) is float


@pytest.mark.parametrize(
    "change, message",
    [
        ({"unknown_key": 1.0}, "unknown"),
        ({"soma_capacitance_pf": -1.0}, "positive"),
        ({"num_compartments": 2.5}, "integer"),
        ({"dt_ms": 0.3}, "dt_ms"),
        ({"threshold_mv": -70.0}, "threshold"),
        ({"gaba_tau_ms": "8"}, "number"),
    ],
)
def test_invalid_config_is_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        NeuronConfig.from_dict({**CONFIG.to_dict(), **change})

"""ground_truth_response on the demo neuron: paired control/stimulus sampling, its checks, and the stimulus regime the demo relies on."""

import numpy as np
import pytest

from errors import SimulatorError
from ground_truth.demo import DemoSimulator, NeuronConfig
from ground_truth.runner import TrialRunner
from ground_truth.trials import ground_truth_response, sample_spike_trains

CONFIG = NeuronConfig()
N_EXC = CONFIG.num_excitatory_segments
DEMO = TrialRunner(DemoSimulator(CONFIG))


def response(rates, stimulus_segments, stimulus_time, response_window, **options):
    return ground_truth_response(rates, stimulus_segments, stimulus_time, response_window, DEMO, N_EXC, **options)


def constant_rates(exc_rate: float, inh_rate: float, duration_ms: int = 120) -> np.ndarray:
    return np.concatenate(
        [np.full((N_EXC, duration_ms), exc_rate), np.full((CONFIG.num_inhibitory_segments, duration_ms), inh_rate)]
    )


def nmda_tail_rates() -> np.ndarray:
    """Weak excitation without inhibition, then all excitation silent for 10 ms before and during the response."""
    rates = constant_rates(0.005, 0.0)
    rates[:N_EXC, 90:110] = 0.0
    return rates


def test_sampling_follows_rates_and_seed():
    rates = np.array([[0.0, 1.0, 0.5]]).repeat(2, axis=0)
    spikes = sample_spike_trains(rates, 4000, np.random.default_rng(1))
    assert spikes.shape == (4000, 3, 2)
    assert spikes[:, 0].sum() == 0 and spikes[:, 1].all()
    assert spikes[:, 2].mean() == pytest.approx(0.5, abs=0.03)
    np.testing.assert_array_equal(spikes, sample_spike_trains(rates, 4000, np.random.default_rng(1)))


def test_result_layout_and_reproducibility():
    first = response(constant_rates(0.0125, 0.02), [0, 1, 2], 100, 10, n_trials=200, seed=5)
    assert set(first) >= {"p_spike_stim", "p_spike_control", "difference", "n_trials"}
    assert first["n_trials"] == 200 and 0.0 <= first["p_spike_control"] <= 1.0
    assert first["difference"] == pytest.approx(first["p_spike_stim"] - first["p_spike_control"])
    assert response(constant_rates(0.0125, 0.02), [0, 1, 2], 100, 10, n_trials=200, seed=5) == first


def test_silent_background_stays_silent_even_with_stimulus():
    result = response(constant_rates(0.0, 0.0), [0, 1, 2], 100, 10, n_trials=200)
    assert result["p_spike_control"] == 0.0 and result["p_spike_stim"] == 0.0


def test_three_coincident_spikes_fire_the_neuron_after_an_nmda_tail():
    # The design goal behind the demo: some background lets one spike on 3 segments fire the neuron while the
    # control stays mostly silent (tools/probe_neuron_regime.py prints this and more).
    result = response(nmda_tail_rates(), [0, 1, 2], 100, 10, n_trials=400, seed=0)
    assert result["p_spike_control"] <= 0.25
    assert result["difference"] >= 0.4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rates": np.zeros(120)}, "rates"),
        ({"stimulus_segments": [N_EXC]}, "excitatory"),
        ({"stimulus_segments": []}, "excitatory"),
        ({"stimulus_time": 115}, "fit"),
        ({"n_trials": 50}, "at least"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, message):
    arguments = {
        "rates": constant_rates(0.01, 0.02),
        "stimulus_segments": [0, 1, 2],
        "stimulus_time": 100,
        "response_window": 10,
        "n_trials": 200,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        response(**arguments)


def test_the_simulator_refuses_rates_for_another_number_of_segments():
    with pytest.raises(SimulatorError, match="160 input segments, got 10"):
        response(np.zeros((10, 120)), [0, 1, 2], 100, 10, n_trials=200)


def test_firing_outside_the_window_is_counted_per_copy_and_leaves_the_window_figures_alone():
    """A burst after the window fires every trial there, in both copies; a silent pattern fires nowhere; the
    in-window figures equal those of the pattern cut at the window's end (its ms are drawn first, same seed)."""
    window_end = 110
    rates = np.concatenate([nmda_tail_rates(), constant_rates(0.0, 0.0, 40)], axis=1)
    bursting = rates.copy()
    bursting[:N_EXC, 125:135] = 0.5
    cut = response(rates[:, :window_end], [0, 1, 2], 100, 10, n_trials=200, seed=3)
    burst = response(bursting, [0, 1, 2], 100, 10, n_trials=200, seed=3)
    for key in ("p_spike_stim", "p_spike_control", "difference"):
        assert burst[key] == cut[key]
    assert burst["p_outside_stim"] == burst["p_outside_control"] == 1.0
    silent = response(constant_rates(0.0, 0.0, 150), [0, 1, 2], 100, 10, n_trials=200, seed=3)
    assert silent["p_outside_stim"] == silent["p_outside_control"] == silent["p_spike_control"] == 0.0

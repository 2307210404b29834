"""The paired stimulus and the choice of stimulus segments."""

import pytest
import torch

from errors import ConfigError
from optimization.config import StimulusConfig
from optimization.network import InputLayout
from optimization.stimulus import PairedStimulus, Stimulus, choose_stimulus

LAYOUT = InputLayout(num_excitatory=6, num_inhibitory=4, duration_ms=30)


def test_control_and_stimulated_copies_differ_only_at_the_stimulus():
    stimulus = Stimulus(segments=(1, 4), time_ms=12, window_ms=5)
    paired = PairedStimulus(stimulus, LAYOUT, torch.device("cpu"))
    spikes = (torch.rand(7, 30, 10, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    spikes[:, 12, 1] = 1.0  # a background spike on a stimulus segment at the stimulus time
    spikes[:, 12, 4] = 0.0
    control, stimulated = paired.pair(spikes)
    at_stimulus = torch.zeros(30, 10, dtype=torch.bool)
    at_stimulus[12, [1, 4]] = True
    assert (control[:, at_stimulus] == 0).all()
    assert (stimulated[:, at_stimulus] == 1).all()
    assert torch.equal(control[:, ~at_stimulus], spikes[:, ~at_stimulus])
    assert torch.equal(stimulated[:, ~at_stimulus], spikes[:, ~at_stimulus])


def test_pairing_passes_gradients_except_at_the_stimulus():
    paired = PairedStimulus(Stimulus(segments=(2,), time_ms=3, window_ms=2), LAYOUT, torch.device("cpu"))
    spikes = torch.zeros(1, 30, 10, requires_grad=True)
    control, stimulated = paired.pair(spikes)
    (control.sum() + stimulated.sum()).backward()
    expected = torch.full((1, 30, 10), 2.0)
    expected[0, 3, 2] = 0.0
    assert torch.equal(spikes.grad, expected)


def test_defaults_draw_distinct_excitatory_segments_at_half_the_duration_reproducibly():
    first = choose_stimulus(StimulusConfig(), LAYOUT, seed=5)
    assert first == choose_stimulus(StimulusConfig(), LAYOUT, seed=5)
    assert first.time_ms == 15 and first.window_ms == 10
    assert len(set(first.segments)) == 3 and all(0 <= s < 6 for s in first.segments)
    drawn = {choose_stimulus(StimulusConfig(), LAYOUT, seed=s).segments for s in range(20)}
    assert len(drawn) > 1


def test_given_segments_and_candidates_are_used():
    assert choose_stimulus(StimulusConfig(segments=[5, 0]), LAYOUT, seed=0).segments == (0, 5)
    chosen = choose_stimulus(StimulusConfig(candidates=[3, 4, 5], count=3), LAYOUT, seed=0)
    assert chosen.segments == (3, 4, 5)


def test_inhibitory_stimulus_segments_only_when_asked():
    for config in (StimulusConfig(segments=[1, 6]), StimulusConfig(candidates=[7, 8, 9], count=3)):
        with pytest.raises(ConfigError, match=r"stimulus segments \[.*\] are inhibitory.*allow_inhibitory"):
            choose_stimulus(config, LAYOUT, seed=0)
        allowed = choose_stimulus(config.model_copy(update={"allow_inhibitory": True}), LAYOUT, seed=0)
        assert any(segment >= 6 for segment in allowed.segments)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (StimulusConfig(segments=[3, 10]), "outside the 10 segments"),
        (StimulusConfig(segments=[2, 2]), "repeats"),
        (StimulusConfig(count=7), "exceeds the 6 distinct candidates"),
        (StimulusConfig(time_ms=25), "exceeds the duration"),
        (StimulusConfig(candidates=[]), "empty"),
    ],
)
def test_impossible_stimuli_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        choose_stimulus(config, LAYOUT, seed=0)

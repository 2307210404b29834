"""optimization/regime.py: statistics of the training inputs, their strict reading, the distance of a rate pattern
from them, the automatic rate bound; and the input_regime the demo pickles carry."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from errors import ConfigError
from optimization.regime import (
    QUANTILE_NAMES,
    QUANTILES,
    RATE_BIN_WIDTH,
    REGIME_KEY,
    InputRegime,
    RegimeAccumulator,
    auto_max_rate,
    regime_distance,
    regime_statistics,
)
from safe_pickle import load_pickle

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo_models"
DEMO_PICKLES = sorted(path for path in DEMO_DIR.glob("SIMNMDA_TCN__*.pickle") if "_converted" not in path.name)
WHERE = "model.pickle: data_dict['input_regime']"
QUANTILE_FIELDS = (
    "excitatory_rate",
    "inhibitory_rate",
    "excitatory_population_rate",
    "inhibitory_population_rate",
    "excitatory_synchrony",
)
RATE_FIELDS = QUANTILE_FIELDS[:4]


def random_inputs(seed: int = 0, trials: int = 6, time: int = 70, exc: int = 5, inh: int = 3):
    rng = np.random.default_rng(seed)
    exc_rates = rng.random((trials, time, exc)) * 0.2
    inh_rates = rng.random((trials, time, inh)) ** 2 * 0.5
    exc_spikes = (rng.random(exc_rates.shape) < 0.3).astype(np.uint8)
    return exc_rates, inh_rates, exc_spikes


def quantiles(values: dict[str, float]) -> list[float]:
    return [values[name] for name in QUANTILE_NAMES]


def make_regime(**changes) -> InputRegime:
    """A hand-made regime, 4 excitatory + 2 inhibitory segments."""
    values = {
        "excitatory_rate": {"p50": 0.01, "p90": 0.02, "p99": 0.04, "p99.9": 0.08},
        "inhibitory_rate": {"p50": 0.02, "p90": 0.05, "p99": 0.09, "p99.9": 0.12},
        "excitatory_population_rate": {"p50": 0.01, "p90": 0.02, "p99": 0.03, "p99.9": 0.035},
        "inhibitory_population_rate": {"p50": 0.02, "p90": 0.05, "p99": 0.07, "p99.9": 0.08},
        "excitatory_synchrony": {"p50": 0.0, "p90": 1.0, "p99": 2.0, "p99.9": 3.0},
        "num_excitatory": 4,
        "num_inhibitory": 2,
        "source": "hand-made",
    }
    values.update(changes)
    return InputRegime(**values)


# ------------------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------------------


def test_hand_made_quantiles_are_bin_upper_edges_and_exact_counts():
    # 100 excitatory (segment, ms) rates: 99 at 0.010005, one at 0.500005 (mid-bin values: no rounding at an
    # edge); ranks ceil(q n) = 50, 90, 99, 100.
    exc_rates = np.full((1, 25, 4), 0.010005)
    exc_rates[0, 7, 2] = 0.500005
    inh_rates = np.full((1, 25, 2), 0.200005)
    # Per-ms excitatory spike counts 0 x 10, 1 x 5, 2 x 5, 3 x 4, 4 x 1 (25 ms): ranks 13, 23, 25, 25.
    counts = [0] * 10 + [1] * 5 + [2] * 5 + [3] * 4 + [4]
    exc_spikes = np.zeros((1, 25, 4), dtype=np.uint8)
    for ms, count in enumerate(counts):
        exc_spikes[0, ms, :count] = 1
    regime = regime_statistics(exc_rates, inh_rates, exc_spikes, "hand")

    assert quantiles(regime.excitatory_rate) == pytest.approx([0.01001, 0.01001, 0.01001, 0.50001], abs=1e-12)
    assert quantiles(regime.inhibitory_rate) == pytest.approx([0.20001] * 4, abs=1e-12)
    # population: 24 ms at 0.010005, one at (3 * 0.010005 + 0.500005) / 4 = 0.1325050 -> ranks 13, 23, 25, 25
    assert quantiles(regime.excitatory_population_rate) == pytest.approx(
        [0.01001, 0.01001, 0.13251, 0.13251], abs=1e-12
    )
    assert quantiles(regime.inhibitory_population_rate) == pytest.approx([0.20001] * 4, abs=1e-12)
    assert quantiles(regime.excitatory_synchrony) == [1.0, 3.0, 4.0, 4.0]
    assert (regime.num_excitatory, regime.num_inhibitory, regime.source) == (4, 2, "hand")


def test_rate_quantiles_lie_within_one_bin_above_numpys_inverted_cdf():
    exc_rates, inh_rates, exc_spikes = random_inputs()
    regime = regime_statistics(exc_rates, inh_rates, exc_spikes, "random")
    pooled = {
        "excitatory_rate": exc_rates,
        "inhibitory_rate": inh_rates,
        "excitatory_population_rate": exc_rates.mean(axis=2),
        "inhibitory_population_rate": inh_rates.mean(axis=2),
    }
    for name, values in pooled.items():
        expected = np.quantile(values.ravel(), QUANTILES, method="inverted_cdf")
        ours = np.array(quantiles(getattr(regime, name)))
        assert np.all(ours >= expected - 1e-12), name
        assert np.all(ours <= expected + RATE_BIN_WIDTH + 1e-12), name
    synchrony = np.quantile(exc_spikes.sum(axis=2).ravel(), QUANTILES, method="inverted_cdf")
    assert quantiles(regime.excitatory_synchrony) == synchrony.tolist()


def test_rates_of_exactly_zero_and_one_fall_into_the_first_and_last_bin():
    exc_rates = np.zeros((1, 500, 2))  # 1000 rates, two of them 1: ranks 500, 900, 990 are 0, rank 999 is 1
    exc_rates[0, :2, 0] = 1.0
    regime = regime_statistics(exc_rates, np.ones((1, 500, 1)), np.zeros((1, 500, 2)), "edges")
    assert quantiles(regime.excitatory_rate) == pytest.approx([RATE_BIN_WIDTH] * 3 + [1.0])
    assert quantiles(regime.inhibitory_rate) == pytest.approx([1.0] * 4)
    assert quantiles(regime.excitatory_synchrony) == [0.0] * 4


@pytest.mark.parametrize("splits", [[1, 2, 3], [3, 3], [1] * 6, [5, 1]])
def test_accumulator_over_chunks_equals_the_one_chunk_result(splits):
    exc_rates, inh_rates, exc_spikes = random_inputs(seed=3)
    whole = regime_statistics(exc_rates, inh_rates, exc_spikes, "data")
    accumulator = RegimeAccumulator()
    start = 0
    for size in splits:
        chunk = slice(start, start + size)
        accumulator.add(exc_rates[chunk], inh_rates[chunk], exc_spikes[chunk])
        start += size
    assert start == exc_rates.shape[0]
    assert accumulator.result("data") == whole


def test_accumulator_refuses_bad_chunks_and_an_empty_result():
    exc_rates, inh_rates, exc_spikes = random_inputs()
    accumulator = RegimeAccumulator()
    with pytest.raises(ValueError, match="no data"):
        accumulator.result("nothing")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        accumulator.add(exc_rates * 10, inh_rates, exc_spikes)
    with pytest.raises(ValueError, match="0/1"):
        accumulator.add(exc_rates, inh_rates, exc_spikes * 2)
    with pytest.raises(ValueError, match="shapes disagree"):
        accumulator.add(exc_rates, inh_rates[:, :-1], exc_spikes)
    accumulator.add(exc_rates, inh_rates, exc_spikes)
    with pytest.raises(ValueError, match="segment counts changed"):
        accumulator.add(exc_rates[..., :-1], inh_rates, exc_spikes[..., :-1])


# ------------------------------------------------------------------------------------------------------------
# to_dict / from_dict
# ------------------------------------------------------------------------------------------------------------


def test_to_dict_is_plain_and_round_trips():
    regime = regime_statistics(*random_inputs(), source="random data")
    values = regime.to_dict()
    assert json.loads(json.dumps(values)) == values
    assert set(values) == {*QUANTILE_FIELDS, "num_excitatory", "num_inhibitory", "source"}
    for name in QUANTILE_FIELDS:
        assert list(values[name]) == list(QUANTILE_NAMES)
        assert all(type(number) is float for number in values[name].values())
    assert type(values["num_excitatory"]) is int and type(values["source"]) is str
    assert InputRegime.from_dict(values, WHERE) == regime
    assert InputRegime.from_dict(copy.deepcopy(values), WHERE).to_dict() == values


def bad_regimes():
    """(description, bad dict, text the message must contain): every class of mistake, for every item."""
    good = make_regime().to_dict()

    def changed(edit):
        values = copy.deepcopy(good)
        edit(values)
        return values

    for key in good:
        yield f"missing {key}", changed(lambda v, k=key: v.pop(k)), f"'{key}' is missing"
    yield "unknown key", changed(lambda v: v.update(extra=1)), "unknown key 'extra'"
    for name in QUANTILE_FIELDS:
        item = f"['{name}']"
        upper = 1.0 if name in RATE_FIELDS else float(good["num_excitatory"])
        yield f"{name} not a dict", changed(lambda v, n=name: v.update({n: [0.1] * 4})), item
        for quantile in QUANTILE_NAMES:
            entry = f"{item}['{quantile}']"

            def setting(value, n=name, q=quantile):
                return changed(lambda v: v[n].update({q: value}))

            yield (
                f"{name} {quantile} missing",
                changed(lambda v, n=name, q=quantile: v[n].pop(q)),
                f"{item}: quantile '{quantile}' is missing",
            )
            for wrong in ("0.01", None, [0.01], True):
                yield f"{name} {quantile} = {wrong!r}", setting(wrong), entry
            for value in (math.nan, math.inf, -0.001, upper + 0.5):
                yield f"{name} {quantile} = {value!r}", setting(value), entry
        yield (
            f"{name} unknown quantile",
            changed(lambda v, n=name: v[n].update(p75=0.0)),
            f"{item}: unknown quantile 'p75'",
        )
        yield (
            f"{name} decreasing",
            changed(lambda v, n=name: v[n].update({"p90": v[n]["p99"] + 1e-3})),
            f"{item}: quantiles decrease (p90",
        )
    for key in ("num_excitatory", "num_inhibitory"):
        for wrong in (0, -3, 2.0, True, "4", None):
            yield f"{key} = {wrong!r}", changed(lambda v, k=key, w=wrong: v.update({k: w})), f"['{key}']"
    for wrong in (3, "", "   ", None):
        yield f"source = {wrong!r}", changed(lambda v, w=wrong: v.update(source=w)), "['source']"


BAD_REGIMES = list(bad_regimes())


def test_the_bad_dicts_cover_every_item():
    descriptions = [description for description, _, _ in BAD_REGIMES]
    assert len(descriptions) == len(set(descriptions)) > 200
    for name in QUANTILE_FIELDS:
        for quantile in QUANTILE_NAMES:
            assert sum(d.startswith(f"{name} {quantile} ") for d in descriptions) == 9


@pytest.mark.parametrize("description, values, names", BAD_REGIMES, ids=[case[0] for case in BAD_REGIMES])
def test_from_dict_refuses_with_one_line_naming_where_and_the_item(description, values, names):
    with pytest.raises(ConfigError) as caught:
        InputRegime.from_dict(values, WHERE)
    message = str(caught.value)
    assert message.startswith(WHERE), message
    assert names in message, message
    assert "\n" not in message


@pytest.mark.parametrize("values", [None, [1, 2], "regime", 3.0])
def test_from_dict_refuses_what_is_not_a_dict(values):
    with pytest.raises(ConfigError, match=r"^model\.pickle: data_dict\['input_regime'\] is \w+, not a dict$"):
        InputRegime.from_dict(values, WHERE)


def test_from_dict_takes_ints_and_numpy_numbers_as_floats():
    values = make_regime().to_dict()
    values["excitatory_synchrony"] = {"p50": 0, "p90": 1, "p99": np.int64(2), "p99.9": np.float64(3.0)}
    values["num_excitatory"] = np.int64(4)
    regime = InputRegime.from_dict(values, WHERE)
    assert quantiles(regime.excitatory_synchrony) == [0.0, 1.0, 2.0, 3.0]
    assert all(type(number) is float for number in regime.excitatory_synchrony.values())
    assert type(regime.num_excitatory) is int and regime.num_excitatory == 4


# ------------------------------------------------------------------------------------------------------------
# regime_distance
# ------------------------------------------------------------------------------------------------------------


def pattern(exc: float = 0.005, inh: float = 0.01, patterns: int = 2, time: int = 50) -> np.ndarray:
    """(patterns, 4 + 2 segments, time) constant rates."""
    rates = np.empty((patterns, 6, time))
    rates[:, :4] = exc
    rates[:, 4:] = inh
    return rates


def test_a_pattern_below_the_regime_has_no_fractions_above():
    regime = make_regime()
    distance = regime_distance(pattern(), 4, regime)
    for key in (
        "fraction_excitatory_above_p99",
        "fraction_excitatory_above_p99_9",
        "fraction_inhibitory_above_p99",
        "fraction_inhibitory_above_p99_9",
        "fraction_ms_excitatory_population_above_p99",
    ):
        assert distance[key] == 0.0, key
    assert distance["peak_excitatory_population_rate"] == pytest.approx(0.005)
    assert distance["peak_population_rate_over_p99"] == pytest.approx(0.005 / 0.03)
    assert distance["peak_expected_excitatory_spikes_per_ms"] == pytest.approx(4 * 0.005)
    assert distance["peak_expected_spikes_over_synchrony_p99_9"] == pytest.approx(0.02 / 3.0)
    assert distance["regime_excitatory_rate_p99"] == 0.04 and distance["regime_excitatory_synchrony_p99_9"] == 3.0
    assert distance["regime_source"] == "hand-made"
    assert json.loads(json.dumps(distance)) == distance


def test_fractions_count_the_entries_above_p99_and_p99_9():
    rates = pattern()  # 2 patterns x 4 excitatory x 50 ms = 400 excitatory, 200 inhibitory entries
    rates[0, 1, 3:10] = 0.05  # 7 between the excitatory p99 (0.04) and p99.9 (0.08)
    rates[1, 3, 20:23] = 0.09  # 3 above p99.9
    rates[1, 2, 40] = 0.04  # at p99: not above
    rates[0, 5, :5] = 0.1  # 5 inhibitory between p99 (0.09) and p99.9 (0.12)
    rates[1, 4, 0] = 0.2  # 1 above the inhibitory p99.9
    distance = regime_distance(rates, 4, make_regime())
    assert distance["fraction_excitatory_above_p99"] == pytest.approx(10 / 400)
    assert distance["fraction_excitatory_above_p99_9"] == pytest.approx(3 / 400)
    assert distance["fraction_inhibitory_above_p99"] == pytest.approx(6 / 200)
    assert distance["fraction_inhibitory_above_p99_9"] == pytest.approx(1 / 200)


def test_peak_population_rate_and_expected_spikes_are_computed_per_pattern_and_ms():
    rates = pattern()
    rates[1, :4, 30] = [0.2, 0.1, 0.0, 0.1]  # population (0.2 + 0.1 + 0 + 0.1) / 4 = 0.1, expected spikes 0.4
    rates[0, :4, 31] = [0.05, 0.05, 0.05, 0.0]  # 0.0375: also above the population p99 (0.03)
    rates[0, 4:, 30] = 0.9  # inhibition does not enter the excitatory population rate
    distance = regime_distance(rates, 4, make_regime())
    assert distance["peak_excitatory_population_rate"] == pytest.approx(0.1)
    assert distance["peak_population_rate_over_p99"] == pytest.approx(0.1 / 0.03)
    assert distance["fraction_ms_excitatory_population_above_p99"] == pytest.approx(2 / 100)
    assert distance["peak_expected_excitatory_spikes_per_ms"] == pytest.approx(0.4)
    assert distance["peak_expected_spikes_over_synchrony_p99_9"] == pytest.approx(0.4 / 3.0)


def test_ratios_to_a_zero_quantile_are_none():
    regime = make_regime(
        excitatory_population_rate={"p50": 0.0, "p90": 0.0, "p99": 0.0, "p99.9": 0.0},
        excitatory_synchrony={"p50": 0.0, "p90": 0.0, "p99": 0.0, "p99.9": 0.0},
    )
    distance = regime_distance(pattern(), 4, regime)
    assert distance["peak_population_rate_over_p99"] is None
    assert distance["peak_expected_spikes_over_synchrony_p99_9"] is None
    assert distance["fraction_ms_excitatory_population_above_p99"] == 1.0


@pytest.mark.parametrize("num_excitatory", [3, 5])
def test_a_regime_of_other_segment_counts_is_refused(num_excitatory):
    with pytest.raises(ConfigError, match="4 excitatory \\+ 2 inhibitory segments, the model"):
        regime_distance(pattern(), num_excitatory, make_regime())


# ------------------------------------------------------------------------------------------------------------
# auto_max_rate
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("moving_segments, expected", [("excitatory", 0.04), ("tied", 0.04), ("all", 0.09)])
def test_auto_max_rate_is_the_p99_of_the_moving_segments(moving_segments, expected):
    assert auto_max_rate(make_regime(), moving_segments) == expected


def test_auto_max_rate_with_all_takes_the_larger_p99():
    regime = make_regime(inhibitory_rate={"p50": 0.0, "p90": 0.01, "p99": 0.02, "p99.9": 0.5})
    assert auto_max_rate(regime, "all") == 0.04


def test_auto_max_rate_refuses_an_unknown_choice():
    with pytest.raises(ConfigError, match="moving_segments must be one of excitatory, all, tied, not 'some'"):
        auto_max_rate(make_regime(), "some")


# ------------------------------------------------------------------------------------------------------------
# The demo pickles
# ------------------------------------------------------------------------------------------------------------


def test_there_are_three_demo_pickles():
    assert len(DEMO_PICKLES) == 3


@pytest.mark.parametrize("path", DEMO_PICKLES, ids=[path.name[:30] for path in DEMO_PICKLES])
def test_demo_pickle_carries_a_valid_input_regime(path):
    data = load_pickle(path)["data_dict"]  # the restricted unpickler: plain types only
    regime = InputRegime.from_dict(data[REGIME_KEY], f"{path.name}: data_dict['{REGIME_KEY}']")
    assert (regime.num_excitatory, regime.num_inhibitory) == (
        data["num_excitatory_segments"],
        data["num_inhibitory_segments"],
    )
    assert f"--seed {data['data_seed']}" in regime.source and "2048 train trials" in regime.source
    # the training script's generator: excitation 0.003-0.025 spikes/ms (x 0.1 .. 3), inhibition 1.6-2.8 x that
    assert 0.005 < regime.excitatory_rate["p50"] < regime.inhibitory_rate["p50"] < 0.05
    assert regime.excitatory_rate["p99.9"] < 0.1 and regime.inhibitory_rate["p99.9"] < 0.25
    assert 2 <= regime.excitatory_synchrony["p99.9"] <= regime.num_excitatory
    assert regime.to_dict() == data[REGIME_KEY]


def test_the_demo_pickles_share_one_regime():
    regimes = [load_pickle(path)["data_dict"][REGIME_KEY] for path in DEMO_PICKLES]
    assert regimes and all(regime == regimes[0] for regime in regimes)


def test_training_input_regime_describes_the_inputs_the_training_script_simulates(monkeypatch):
    """The regeneration path (draw_trial_inputs per trial) sees the same spikes simulate_dataset feeds the neuron."""
    from tools import train_demo_models as training

    monkeypatch.setitem(training.NUM_TRIALS, "train", 3)
    config = training.NeuronConfig()
    regime = training.training_input_regime(config, seed=11)
    inputs = training.simulate_dataset(config, 3, training.data_generator(11))["inputs"]
    spikes = inputs[..., : config.num_excitatory_segments]
    synchrony = np.quantile(spikes.sum(axis=2).ravel(), QUANTILES, method="inverted_cdf")
    assert quantiles(regime.excitatory_synchrony) == synchrony.tolist()
    rng = training.data_generator(11)
    rates = [training.draw_trial_inputs(config, rng) for _ in range(3)]
    redrawn = regime_statistics(
        np.stack([r[0] for r in rates]), np.stack([r[1] for r in rates]), np.stack([r[2] for r in rates]), regime.source
    )
    assert redrawn == regime
    assert np.array_equal(np.stack([np.concatenate(r[2:], axis=1) for r in rates]), inputs)
    assert "--seed 11" in regime.source and "3 train trials" in regime.source


def oversized_regimes():
    """Values no regime has, sized to hurt: numbers beyond any float, text and nesting of megabytes."""
    base = make_regime().to_dict()
    huge = 10**400
    cases = {}
    for field in ("excitatory_rate", "excitatory_synchrony"):
        cases[f"{field} quantile of 400 digits"] = {**base, field: {**base[field], "p99.9": huge}}
        cases[f"{field} quantile as a 1 MB string"] = {**base, field: {**base[field], "p50": "9" * 1_000_000}}
        cases[f"{field} as a deep list"] = {**base, field: [[[[[0.1] * 100] * 100]]]}
    for field in ("num_excitatory", "num_inhibitory"):
        cases[f"{field} of 400 digits"] = {**base, field: huge}
    cases["source of 2 MB"] = {**base, "source": "s" * 2_000_000}
    cases["unknown key of 1 MB"] = {**base, "k" * 1_000_000: 1}
    return cases


@pytest.mark.parametrize("label", list(oversized_regimes()))
def test_oversized_values_are_refused_in_a_short_message(label):
    with pytest.raises(ConfigError) as refusal:
        InputRegime.from_dict(oversized_regimes()[label], "pickle.pkl: data_dict['input_regime']")
    message = str(refusal.value)
    assert message.startswith("pickle.pkl: data_dict['input_regime']") and len(message) < 400, label


def test_auto_max_rate_refuses_a_regime_whose_p99_is_zero():
    zero = make_regime(excitatory_rate={"p50": 0.0, "p90": 0.0, "p99": 0.0, "p99.9": 0.0})
    with pytest.raises(ConfigError, match="bounds every rate at 0"):
        auto_max_rate(zero, "excitatory")

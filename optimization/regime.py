"""The input regime a model was trained on, and how far an optimized rate pattern strays from it.

A TCN is only trustworthy on inputs like those it was trained on: an optimizer left alone finds rates (or
synchronous excitation) the training data never held, where the surrogate's answer means nothing. The regime is a
few quantiles of the training inputs, kept in a params pickle under ``data_dict[REGIME_KEY]`` (see
demo_models/README.md for the layout); ``regime_distance`` says how much of an optimized pattern lies beyond them
and ``auto_max_rate`` turns them into a rate bound.

Quantile rule (RegimeAccumulator): values go into fixed histograms, so that statistics of any amount of data cost
the same memory. Rates (in [0, 1] spikes/ms) fall into bins of width RATE_BIN_WIDTH, bin i holding
[i, i + 1) * RATE_BIN_WIDTH (a rate of exactly 1 joins the last bin); the q-quantile is the upper edge of the first
bin whose cumulative count reaches ceil(q * n) of the n values. That bin holds the inverted-CDF sample quantile
x_(ceil(q n)) (numpy.quantile(..., method="inverted_cdf")), so the figure exceeds it by at most one bin width.
Synchrony (spike counts per ms) is counted exactly: its q-quantile is the smallest count whose cumulative count
reaches ceil(q * n).
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any

import numpy as np

from errors import ConfigError

REGIME_KEY = "input_regime"
MAX_SOURCE_CHARS = 1000  # the free text travels into every summary and report
MAX_SEGMENTS = 1_000_000  # segment counts a regime may declare
QUANTILES = (0.5, 0.9, 0.99, 0.999)
QUANTILE_NAMES = ("p50", "p90", "p99", "p99.9")
RATE_BINS = 100_000  # per spike/ms: bins of RATE_BIN_WIDTH over [0, 1]
RATE_BIN_WIDTH = 1.0 / RATE_BINS

RATE_FIELDS = ("excitatory_rate", "inhibitory_rate", "excitatory_population_rate", "inhibitory_population_rate")
QUANTILE_FIELDS = (*RATE_FIELDS, "excitatory_synchrony")
COUNT_FIELDS = ("num_excitatory", "num_inhibitory")
MOVING_SEGMENTS = ("excitatory", "all", "tied")


@dataclass(frozen=True)
class InputRegime:
    """Quantiles (QUANTILE_NAMES -> value) of a model's training inputs, 1 ms bins.

    excitatory_rate, inhibitory_rate: the firing probability of one segment in one ms (spikes/ms), pooled over
        segments, ms and trials.
    excitatory_population_rate, inhibitory_population_rate: per ms, the mean rate over the excitatory (inhibitory)
        segments (spikes/ms per segment).
    excitatory_synchrony: per ms, the number of excitatory spikes summed over all excitatory segments (spike
        trains, not rates).
    source: free text saying where the numbers come from.
    """

    excitatory_rate: dict[str, float]
    inhibitory_rate: dict[str, float]
    excitatory_population_rate: dict[str, float]
    inhibitory_population_rate: dict[str, float]
    excitatory_synchrony: dict[str, float]
    num_excitatory: int
    num_inhibitory: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        """Plain floats, ints and str only: safe for a protocol-2 pickle read by a restricted unpickler, and JSON."""
        values: dict[str, Any] = {
            name: {quantile: float(getattr(self, name)[quantile]) for quantile in QUANTILE_NAMES}
            for name in QUANTILE_FIELDS
        }
        values.update(
            num_excitatory=int(self.num_excitatory), num_inhibitory=int(self.num_inhibitory), source=str(self.source)
        )
        return values

    @classmethod
    def from_dict(cls, values: Any, where: str) -> InputRegime:
        """Check `values` strictly (it comes from a user's pickle) and build the regime.

        ConfigError, one line naming `where` and the bad item, for: not a dict, a missing or unknown key, a missing
        or unknown quantile name, a value that is not a finite number >= 0, a rate above 1, a synchrony above the
        excitatory segment count, decreasing quantiles, a count that is not a positive int, a source that is not
        a non-empty str.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where} is {type(values).__name__}, not a dict")
        _exact_keys(values, [field.name for field in fields(cls)], where, "key")
        counts = {key: _count(values[key], f"{where}['{key}']") for key in COUNT_FIELDS}
        source = values["source"]
        if not isinstance(source, str) or not source.strip() or len(source) > MAX_SOURCE_CHARS:
            raise ConfigError(
                f"{where}['source'] must be a non-empty str of at most {MAX_SOURCE_CHARS} characters "
                f"saying where the numbers come from, not {_shown(source)}"
            )
        limits = {**{name: 1.0 for name in RATE_FIELDS}, "excitatory_synchrony": float(counts["num_excitatory"])}
        quantiles = {name: _quantiles(values[name], f"{where}['{name}']", limits[name]) for name in QUANTILE_FIELDS}
        return cls(
            excitatory_rate=quantiles["excitatory_rate"],
            inhibitory_rate=quantiles["inhibitory_rate"],
            excitatory_population_rate=quantiles["excitatory_population_rate"],
            inhibitory_population_rate=quantiles["inhibitory_population_rate"],
            excitatory_synchrony=quantiles["excitatory_synchrony"],
            num_excitatory=counts["num_excitatory"],
            num_inhibitory=counts["num_inhibitory"],
            source=source,
        )


def _exact_keys(values: Mapping, expected: Sequence[str], where: str, kind: str) -> None:
    """ConfigError naming the first missing or unknown key of `values`."""
    for key in expected:
        if key not in values:
            raise ConfigError(f"{where}: {kind} '{key}' is missing (expected: {', '.join(expected)})")
    for key in values:
        if key not in expected:
            raise ConfigError(f"{where}: unknown {kind} {_shown(key)} (expected: {', '.join(expected)})")


def _shown(value: Any) -> str:
    """A bad value in an error message, cut short (a hostile file may hold megabytes of it)."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = 60
    shortener.maxlevel, shortener.maxlist, shortener.maxdict = 2, 4, 4
    return shortener.repr(value)


def _count(value: Any, item: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 < int(value) <= MAX_SEGMENTS:
        raise ConfigError(f"{item} must be a whole number of segments from 1 to {MAX_SEGMENTS}, not {_shown(value)}")
    return int(value)


def _quantiles(value: Any, item: str, upper: float) -> dict[str, float]:
    """One quantile dict, checked: every name, finite numbers in [0, upper], not decreasing."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{item} is {type(value).__name__} {_shown(value)}, not a dict of quantiles ({', '.join(QUANTILE_NAMES)})"
        )
    _exact_keys(value, QUANTILE_NAMES, item, "quantile")
    checked = {}
    for name in QUANTILE_NAMES:
        number = value[name]
        if (
            isinstance(number, bool)
            or not isinstance(number, numbers.Real)
            or (not isinstance(number, numbers.Integral) and not math.isfinite(number))
        ):
            raise ConfigError(f"{item}['{name}'] must be a finite number, not {_shown(number)}")
        # compared before any float() (an int of 400 digits does not fit one), with the comparisons every
        # numbers.Real has (__lt__, __le__)
        if number < 0 or not number <= upper:
            raise ConfigError(f"{item}['{name}'] is {_shown(number)}, outside [0, {upper:g}]")
        checked[name] = float(number)
    for lower, higher in zip(QUANTILE_NAMES, QUANTILE_NAMES[1:]):
        if checked[lower] > checked[higher]:
            raise ConfigError(
                f"{item}: quantiles decrease ({lower} {checked[lower]!r} > {higher} {checked[higher]!r}); they must not"
            )
    return checked


def _rate_histogram(rates: np.ndarray) -> np.ndarray:
    bins = np.minimum((rates.ravel() * RATE_BINS).astype(np.int64), RATE_BINS - 1)
    return np.bincount(bins, minlength=RATE_BINS)


def _quantile_bins(counts: np.ndarray) -> dict[str, int]:
    """Per quantile name, the first bin whose cumulative count reaches ceil(q * n) (q taken as its decimal)."""
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    ranks = [max(1, math.ceil(Fraction(str(q)) * total)) for q in QUANTILES]
    return {name: int(np.searchsorted(cumulative, rank)) for name, rank in zip(QUANTILE_NAMES, ranks)}


def _checked(name: str, array: Any, *, spikes: bool = False) -> np.ndarray:
    values = np.asarray(array)
    if values.ndim != 3:
        raise ValueError(f"{name} must be shaped (trials, time, segments), not {values.shape}")
    if spikes:
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{name} must hold 0/1 spikes")
        return values.astype(np.int64)
    values = values.astype(np.float64)
    if not (np.isfinite(values).all() and values.min(initial=0.0) >= 0.0 and values.max(initial=0.0) <= 1.0):
        raise ValueError(f"{name} must be finite rates in [0, 1] spikes/ms")
    return values


class RegimeAccumulator:
    """Regime statistics of data given chunk by chunk (e.g. trial by trial), in fixed memory.

    Histograms only: RATE_BINS counts per rate statistic, num_excitatory + 1 for synchrony. Adding the data in
    any split into chunks gives the same result as adding it at once.
    """

    def __init__(self) -> None:
        self._rate_counts = {name: np.zeros(RATE_BINS, dtype=np.int64) for name in RATE_FIELDS}
        self._synchrony_counts: np.ndarray | None = None
        self._num_inhibitory = 0

    def add(self, excitatory_rates: Any, inhibitory_rates: Any, excitatory_spikes: Any) -> None:
        """One chunk, each (trials, time, segments): generator rates (spikes/ms) and the excitatory spike trains."""
        exc = _checked("excitatory_rates", excitatory_rates)
        inh = _checked("inhibitory_rates", inhibitory_rates)
        spikes = _checked("excitatory_spikes", excitatory_spikes, spikes=True)
        if spikes.shape != exc.shape or inh.shape[:2] != exc.shape[:2]:
            raise ValueError(
                f"shapes disagree: excitatory_rates {exc.shape}, inhibitory_rates {inh.shape}, "
                f"excitatory_spikes {spikes.shape}"
            )
        if exc.shape[2] == 0 or inh.shape[2] == 0:
            raise ValueError("the regime needs excitatory and inhibitory segments")
        if self._synchrony_counts is None:
            self._synchrony_counts = np.zeros(exc.shape[2] + 1, dtype=np.int64)
            self._num_inhibitory = inh.shape[2]
        elif (exc.shape[2], inh.shape[2]) != (self._synchrony_counts.size - 1, self._num_inhibitory):
            raise ValueError(
                f"segment counts changed: {exc.shape[2]} + {inh.shape[2]}, earlier chunks "
                f"{self._synchrony_counts.size - 1} + {self._num_inhibitory}"
            )
        self._rate_counts["excitatory_rate"] += _rate_histogram(exc)
        self._rate_counts["inhibitory_rate"] += _rate_histogram(inh)
        self._rate_counts["excitatory_population_rate"] += _rate_histogram(exc.mean(axis=2))
        self._rate_counts["inhibitory_population_rate"] += _rate_histogram(inh.mean(axis=2))
        self._synchrony_counts += np.bincount(spikes.sum(axis=2).ravel(), minlength=self._synchrony_counts.size)

    def result(self, source: str) -> InputRegime:
        """The regime of everything added so far (quantile rule: the module docstring)."""
        if self._synchrony_counts is None or not self._synchrony_counts.any():
            raise ValueError("no data was added")
        rates = {
            name: {quantile: (bin_index + 1) / RATE_BINS for quantile, bin_index in _quantile_bins(counts).items()}
            for name, counts in self._rate_counts.items()
        }
        synchrony = {quantile: float(count) for quantile, count in _quantile_bins(self._synchrony_counts).items()}
        return InputRegime(
            **rates,
            excitatory_synchrony=synchrony,
            num_excitatory=self._synchrony_counts.size - 1,
            num_inhibitory=self._num_inhibitory,
            source=source,
        )


def regime_statistics(excitatory_rates: Any, inhibitory_rates: Any, excitatory_spikes: Any, source: str) -> InputRegime:
    """The regime of one chunk of data, each array (trials, time, segments); RegimeAccumulator for more."""
    accumulator = RegimeAccumulator()
    accumulator.add(excitatory_rates, inhibitory_rates, excitatory_spikes)
    return accumulator.result(source)


def _ratio(value: float, reference: float) -> float | None:
    """value / reference; None where the regime's reference is 0 (no ratio is defined, and JSON has no inf)."""
    return value / reference if reference > 0 else None


def check_layout(
    regime: InputRegime, num_excitatory: int, num_inhibitory: int, where: str = "the input regime"
) -> None:
    """ConfigError unless the regime has these segment counts: otherwise it describes another model's inputs.

    Worth calling before a long optimization: regime_distance, at its end, refuses such a regime too.
    """
    if (num_excitatory, num_inhibitory) != (regime.num_excitatory, regime.num_inhibitory):
        raise ConfigError(
            f"{where} has {regime.num_excitatory} excitatory + "
            f"{regime.num_inhibitory} inhibitory segments, the model {num_excitatory} + "
            f"{num_inhibitory}: it describes another model's inputs"
        )


def regime_distance(rates: Any, num_excitatory: int, regime: InputRegime) -> dict[str, Any]:
    """How far a rate pattern (patterns, segments, time), spikes/ms, excitatory segments first, is from the regime.

    JSON-ready. Fractions count (pattern, segment, ms) entries strictly above the regime's quantile; the population
    rate of a ms is the mean over the excitatory segments; the expected excitatory spikes of a ms are the sum of
    the excitatory rates, to be read beside the regime's synchrony p99.9 (spike counts per ms in training).
    ConfigError when the pattern's segment counts are not the regime's (check_layout).
    """
    pattern = np.asarray(rates, dtype=np.float64)
    if pattern.ndim != 3 or not np.isfinite(pattern).all():
        raise ValueError(f"rates must be finite, shaped (patterns, segments, time), not {pattern.shape}")
    check_layout(regime, num_excitatory, pattern.shape[1] - num_excitatory)
    excitatory, inhibitory = pattern[:, :num_excitatory], pattern[:, num_excitatory:]
    population = excitatory.mean(axis=1)
    expected_spikes = excitatory.sum(axis=1)
    peak_population = float(population.max())
    peak_spikes = float(expected_spikes.max())
    population_p99 = regime.excitatory_population_rate["p99"]
    synchrony_p99_9 = regime.excitatory_synchrony["p99.9"]
    distance: dict[str, Any] = {}
    for kind, values in (("excitatory", excitatory), ("inhibitory", inhibitory)):
        quantiles = getattr(regime, f"{kind}_rate")
        for name, key in (("p99", "p99"), ("p99.9", "p99_9")):
            distance[f"regime_{kind}_rate_{key}"] = quantiles[name]
            distance[f"fraction_{kind}_above_{key}"] = float(np.mean(values > quantiles[name]))
    distance.update(
        {
            "peak_excitatory_population_rate": peak_population,
            "regime_excitatory_population_rate_p99": population_p99,
            "peak_population_rate_over_p99": _ratio(peak_population, population_p99),
            "fraction_ms_excitatory_population_above_p99": float(np.mean(population > population_p99)),
            "peak_expected_excitatory_spikes_per_ms": peak_spikes,
            "regime_excitatory_synchrony_p99_9": synchrony_p99_9,
            "peak_expected_spikes_over_synchrony_p99_9": _ratio(peak_spikes, synchrony_p99_9),
            "regime_source": regime.source,
        }
    )
    return distance


def auto_max_rate(regime: InputRegime, moving_segments: str) -> float:
    """The rate bound `constraints.max_rate: auto` stands for: the p99 rate of the segments that move.

    p99 because the model has seen rates up to it often (1 % of the training bins lie above), so a pattern inside
    it stays where the surrogate was fitted; p99.9 and the maximum are set by rare extremes (primed compartments,
    short bursts) that the model saw too seldom to be trusted there, and p90 would forbid ordinary training input.
    With "excitatory" and "tied" only excitatory rates are set by the optimizer (tied inhibition follows them), so
    the excitatory p99; with "all" one bound covers both kinds, so the larger p99.
    """
    if moving_segments not in MOVING_SEGMENTS:
        raise ConfigError(f"moving_segments must be one of {', '.join(MOVING_SEGMENTS)}, not {moving_segments!r}")
    bound = (
        max(regime.excitatory_rate["p99"], regime.inhibitory_rate["p99"])
        if moving_segments == "all"
        else regime.excitatory_rate["p99"]
    )
    if bound <= 0:
        raise ConfigError(
            f"constraints.max_rate=auto: the input regime's p99 rate of the moving segments is "
            f"{bound:g}, which bounds every rate at 0; give max_rate a number"
        )
    return bound

"""Parameters of the demo neuron, as a dataclass of plain-typed fields.

The configuration travels inside model pickles (``data_dict['simulator_config']``), which are read back with a
restricted unpickler, so it must round-trip through a dict of plain ints and floats.

Units: mV, ms, nS, pF (so pA / pF = mV / ms).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from errors import ConfigError

# Fields whose name ends like this are sizes, capacitances, conductances or time constants: all must be > 0.
_POSITIVE_SUFFIXES = ("_segments", "_compartments", "_pf", "_ns", "_tau_ms", "_rise_ms", "_decay_ms", "dt_ms")
MIN_DT_MS = 1e-3  # at most 1000 integration steps per ms
MAX_SIZE = 100_000  # segments of one type, compartments
MAX_TIME_MS = 1e6  # time constants and the refractory period


@dataclass(frozen=True)
class NeuronConfig:
    """Soma + passive dendritic compartments with AMPA, NMDA and GABA-A synapses (see ground_truth/demo/README.md)."""

    # Presynaptic inputs: segment i of a type sits on compartment i * num_compartments // num_segments_of_that_type.
    num_excitatory_segments: int = 80
    num_inhibitory_segments: int = 80
    num_compartments: int = 8

    # Integration step; outputs are reported at 1 ms, so 1 / dt_ms must be an integer.
    dt_ms: float = 0.25

    # Soma: conductance-based leaky integrate-and-fire.
    soma_capacitance_pf: float = 60.0
    soma_leak_ns: float = 5.0
    leak_reversal_mv: float = -70.0
    threshold_mv: float = -52.0
    reset_mv: float = -62.0
    refractory_ms: float = 2.0
    spike_peak_mv: float = 20.0  # written into the 1 ms soma trace in bins that contain a spike

    # Dendritic compartments: passive membrane, each coupled to the soma by one conductance.
    dendrite_capacitance_pf: float = 20.0
    dendrite_leak_ns: float = 1.0
    coupling_ns: float = 6.0

    # Synapses: peak conductance per presynaptic spike and kinetics.
    ampa_weight_ns: float = 4.0
    ampa_tau_ms: float = 2.0
    nmda_weight_ns: float = 2.0
    nmda_rise_ms: float = 2.0
    nmda_decay_ms: float = 60.0
    magnesium_mm: float = 1.0
    gaba_weight_ns: float = 5.0
    gaba_tau_ms: float = 8.0
    excitatory_reversal_mv: float = 0.0
    inhibitory_reversal_mv: float = -75.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            wants_int = field.type in (int, "int")
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or (wants_int and float(value) != int(value))
            ):
                kind = "an integer" if wants_int else "a number"
                raise ConfigError(f"neuron config: {field.name} must be {kind}, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"neuron config: {field.name} must be a finite number, got {value!r}")
            object.__setattr__(self, field.name, int(value) if wants_int else float(value))
        non_positive = [
            f.name
            for f in dataclasses.fields(self)
            if f.name.endswith(_POSITIVE_SUFFIXES) and getattr(self, f.name) <= 0
        ]
        if non_positive:
            raise ConfigError(f"neuron config: these values must be positive: {non_positive}")
        if self.refractory_ms < 0 or self.magnesium_mm < 0:
            raise ConfigError("neuron config: refractory_ms and magnesium_mm must not be negative")
        if self.dt_ms < MIN_DT_MS:
            raise ConfigError(
                f"neuron config: dt_ms={self.dt_ms} is below {MIN_DT_MS} ms (more than "
                f"{1 / MIN_DT_MS:.0f} steps per ms)"
            )
        too_big = [
            f.name
            for f in dataclasses.fields(self)
            if f.name.endswith(("_segments", "_compartments")) and getattr(self, f.name) > MAX_SIZE
        ]
        too_long = [
            f.name
            for f in dataclasses.fields(self)
            if f.name.endswith("_ms") and abs(getattr(self, f.name)) > MAX_TIME_MS
        ]
        if too_big or too_long:
            raise ConfigError(
                f"neuron config: beyond any neuron this simulator is for: {too_big + too_long} (sizes "
                f"at most {MAX_SIZE}, times at most {MAX_TIME_MS:g} ms)"
            )
        if abs(round(1.0 / self.dt_ms) * self.dt_ms - 1.0) > 1e-9:
            raise ConfigError(f"neuron config: 1 / dt_ms must be an integer, got dt_ms={self.dt_ms}")
        if self.threshold_mv <= self.reset_mv:
            raise ConfigError("neuron config: threshold_mv must lie above reset_mv")
        if self.nmda_rise_ms >= self.nmda_decay_ms:
            raise ConfigError("neuron config: nmda_rise_ms must be shorter than nmda_decay_ms")

    @property
    def num_segments(self) -> int:
        """Input channels, excitatory first then inhibitory (the TCN input layout)."""
        return self.num_excitatory_segments + self.num_inhibitory_segments

    def to_dict(self) -> dict[str, int | float]:
        """Plain dict for pickles and JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NeuronConfig:
        """Inverse of to_dict; unknown keys are an error so that typos do not pass silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in set(values) - known)
        if unknown:
            raise ConfigError(f"neuron config: unknown keys {unknown}")
        return cls(**{str(key): value for key, value in values.items()})

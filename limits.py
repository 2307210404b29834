"""Budgets for what input files and configs declare, checked before anything is allocated or run.

A 1 MB file can declare a 4 GB dataset, a zip member can inflate a thousandfold, a pickle can ask for a
3 GB bytearray, a YAML alias can repeat a list a billion times, a config can ask for 1e8 seeds. Every reader
checks the declared size against a limit here first. The defaults are far above what real neuron TCNs need (a
published 7×256 model holds 86 MB of weights); each can be raised for a real big model or study with the
environment variable named in its error message, `NEURON_TCN_<NAME>` (e.g. `NEURON_TCN_MAX_WEIGHT_BYTES=64e9`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from errors import ToolError

ENV_PREFIX = "NEURON_TCN_"


@dataclass(frozen=True)
class Limit:
    name: str
    default: float
    what: str  # what is limited, for the message and the generated configuration reference

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def value(self) -> float:
        raw = os.environ.get(self.env)
        try:
            return float(raw) if raw is not None else self.default
        except ValueError:
            return self.default

    def check(self, declared: float, subject: str, error: type[ToolError], unit: str = "") -> None:
        """Raise `error` naming `subject` when `declared` exceeds the limit."""
        if declared > self.value:
            shown = format_bytes(declared) if unit == "bytes" else f"{declared:,.0f}{unit}"
            limit = format_bytes(self.value) if unit == "bytes" else f"{self.value:,.0f}{unit}"
            raise error(
                f"{subject}: declares {shown}, more than the limit of {limit} ({self.what}); nothing was "
                f"read. For a real model this big, raise it with {self.env}=<value>."
            )


def format_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} bytes"


GiB = 1 << 30
MiB = 1 << 20

# HDF5 datasets and zip members: what they declare, against what they store.
COMPRESSION_RATIO = Limit(
    "compression_ratio",
    50,
    "declared size over stored size of a dataset or zip member; Keras stores weights uncompressed",
)
SMALL_DATA_BYTES = Limit(
    "small_data_bytes",
    1 * MiB,
    "size below which a dataset or member may be stored in any "
    "compressed form; for the datasets of one HDF5 file, together",
)
MAX_WEIGHT_BYTES = Limit("max_weight_bytes", 16 * GiB, "all weights of one model together")
MAX_MEMBER_BYTES = Limit("max_member_bytes", 16 * GiB, "one member of a .keras or .pth zip archive, uncompressed")
MAX_JSON_BYTES = Limit("max_json_bytes", 64 * MiB, "a model config or metadata (JSON) in a model file")
MAX_JSON_DEPTH = Limit("max_json_depth", 200, "nesting depth of a model config (Keras writes about 20)")
MAX_HDF5_OBJECTS = Limit(
    "max_hdf5_objects", 50_000, "groups, datasets and links of one HDF5 file (a 7x256 TCN has about 100)"
)
MAX_HDF5_DEPTH = Limit("max_hdf5_depth", 64, "nesting depth of the groups of an HDF5 file (Keras writes under 10)")
# Pickles and YAML.
MAX_PICKLE_BYTES = Limit("max_pickle_bytes", 256 * MiB, "a parameters or info pickle file")
MAX_PICKLE_OBJECT_BYTES = Limit(
    "max_pickle_object_bytes", 256 * MiB, "what a pickle constructs (bytes, arrays, strings), each and in total"
)
MAX_PICKLE_DEPTH = Limit("max_pickle_depth", 100, "nesting depth of a parameters pickle")
MAX_PICKLE_STEPS = Limit("max_pickle_steps", 2_000_000, "values and references a pickle builds, counted as its opcodes")
MAX_CONFIG_BYTES = Limit("max_config_bytes", 1 * MiB, "a config.yaml file")
MAX_CONFIG_DEPTH = Limit("max_config_depth", 32, "nesting depth of a config.yaml (the shipped one: 4)")
# Model graphs and the work a run does.
MAX_INPUT_LENGTH = Limit("max_input_length", 100_000, "time steps of a model input or of an optimized pattern")
MAX_LAYERS = Limit("max_layers", 100_000, "layers of one model")
MAX_BATCH_BYTES = Limit("max_batch_bytes", 16 * GiB, "one optimization or evaluation batch of spike trains")
MAX_SIMULATION_STEPS = Limit(
    "max_simulation_steps", 2e9, "integration steps × compartments × trials of one ground-truth check"
)
MAX_SIMULATED_MS = Limit(
    "max_simulated_ms",
    1e8,
    "simulated milliseconds (trials × (window + warm-up)) of one "
    "ground-truth check or refinement in NEURON or a simulator function",
)
MAX_SWEEP_RUNS = Limit("max_sweep_runs", 10_000, "runs of one sweep")

ALL = (
    COMPRESSION_RATIO,
    SMALL_DATA_BYTES,
    MAX_WEIGHT_BYTES,
    MAX_MEMBER_BYTES,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_HDF5_OBJECTS,
    MAX_HDF5_DEPTH,
    MAX_PICKLE_BYTES,
    MAX_PICKLE_OBJECT_BYTES,
    MAX_PICKLE_DEPTH,
    MAX_PICKLE_STEPS,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_INPUT_LENGTH,
    MAX_LAYERS,
    MAX_BATCH_BYTES,
    MAX_SIMULATION_STEPS,
    MAX_SIMULATED_MS,
    MAX_SWEEP_RUNS,
)


def check_stored_size(declared: float, stored: float, subject: str, error: type[ToolError]) -> None:
    """A dataset or member may declare more than it stores (compression) only within COMPRESSION_RATIO, or when
    it is small."""
    if declared > SMALL_DATA_BYTES.value and declared > stored * COMPRESSION_RATIO.value:
        raise error(
            f"{subject}: declares {format_bytes(declared)} but stores {format_bytes(stored)}, a ratio above "
            f"{COMPRESSION_RATIO.value:g} ({COMPRESSION_RATIO.what}); nothing was read. Raise "
            f"{COMPRESSION_RATIO.env} for a file compressed that much on purpose."
        )

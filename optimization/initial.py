"""Initial rates, (patterns, time, segments) in spikes/ms: read from a .npy file or drawn as a uniform background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from errors import OptimizationError
from fileio import regular_file_size
from optimization.config import InitialRatesConfig
from optimization.network import InputLayout


def load_rates_file(path: Path, start_time_ms: int, layout: InputLayout, max_rate: float) -> torch.Tensor:
    """The file's (segments x time) rates from `start_time_ms` on, as (time, segments); every defect named."""
    regular_file_size(path, OptimizationError, "initial rates file")
    try:  # memory-mapped: a header declaring more than the file holds fails here, nothing is allocated
        rates = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise OptimizationError(f"initial rates file {path}: cannot be read as a .npy array ({error})") from error
    expected = f"(segments={layout.num_segments}, time>={start_time_ms + layout.duration_ms})"
    if rates.ndim != 2:
        raise OptimizationError(f"initial rates file {path}: shape {rates.shape}, expected 2-D {expected}")
    if not np.issubdtype(rates.dtype, np.number) or np.issubdtype(rates.dtype, np.complexfloating):
        raise OptimizationError(f"initial rates file {path}: dtype {rates.dtype} is not a real number type")
    if rates.shape[0] != layout.num_segments:
        hint = " (it looks transposed: time x segments)" if rates.shape[1] == layout.num_segments else ""
        raise OptimizationError(
            f"initial rates file {path}: shape {rates.shape} has {rates.shape[0]} segments, expected {expected}{hint}"
        )
    end = start_time_ms + layout.duration_ms
    if rates.shape[1] < end:
        raise OptimizationError(
            f"initial rates file {path}: {rates.shape[1]} time steps, but start_time_ms={start_time_ms} plus "
            f"duration {layout.duration_ms} needs {end}"
        )
    window = rates[:, start_time_ms:end].astype(np.float32)
    if not np.isfinite(window).all():
        bad = np.argwhere(~np.isfinite(window))[0]
        raise OptimizationError(
            f"initial rates file {path}: NaN or Inf values, first at segment {bad[0]}, time {bad[1] + start_time_ms}"
        )
    if window.min() < 0 or window.max() > max_rate:
        raise OptimizationError(
            f"initial rates file {path}: rates span [{window.min():.4g}, {window.max():.4g}] spikes/ms; "
            f"they must lie in [0, constraints.max_rate={max_rate}]"
        )
    return torch.from_numpy(window.T.copy())


def generate_background(config: InitialRatesConfig, layout: InputLayout, num_patterns: int, seed: int) -> torch.Tensor:
    """Independent uniform rates per pattern, ms and segment (drawn on the CPU so every device starts alike)."""
    generator = torch.Generator().manual_seed(seed)
    unit = torch.rand(num_patterns, layout.duration_ms, layout.num_segments, generator=generator)
    low = torch.tensor(
        [config.excitatory_range[0]] * layout.num_excitatory + [config.inhibitory_range[0]] * layout.num_inhibitory
    )
    high = torch.tensor(
        [config.excitatory_range[1]] * layout.num_excitatory + [config.inhibitory_range[1]] * layout.num_inhibitory
    )
    return low + (high - low) * unit


def initial_rates(
    config: InitialRatesConfig, layout: InputLayout, num_patterns: int, max_rate: float, seed: int
) -> torch.Tensor:
    """(patterns, time, segments) on the CPU: the file's rates repeated for every pattern, or a fresh background."""
    if config.path is not None:
        rates = load_rates_file(config.path, config.start_time_ms, layout, max_rate)
        return rates.unsqueeze(0).repeat(num_patterns, 1, 1)
    check_background_ranges(config, max_rate)
    return generate_background(config, layout, num_patterns, seed)


def check_background_ranges(config: InitialRatesConfig, max_rate: float) -> None:
    """A generated background must lie below the rate bound (with max_rate auto, the bound comes from the
    regime, so the clash shows only once the model is known)."""
    if config.path is not None:
        return
    for name, (_, high) in (("excitatory", config.excitatory_range), ("inhibitory", config.inhibitory_range)):
        if high > max_rate:
            raise OptimizationError(
                f"optimization.initial_rates.{name}_range reaches {high} spikes/ms, above "
                f"optimization.constraints.max_rate={max_rate:.4g}; lower the range or raise the bound"
            )


def given_rates(rates: np.ndarray, layout: InputLayout, num_patterns: int, max_rate: float) -> torch.Tensor:
    """Rates (patterns, segments, time) handed over by the caller (e.g. the result of an earlier optimization) as
    (patterns, time, segments), checked like a rates file."""
    expected = (num_patterns, layout.num_segments, layout.duration_ms)
    if rates.shape != expected:
        raise OptimizationError(f"start rates of shape {rates.shape}, expected {expected} (patterns, segments, time)")
    if not np.isfinite(rates).all() or rates.min() < 0 or rates.max() > np.float32(max_rate):
        raise OptimizationError(f"start rates must be finite and lie in [0, constraints.max_rate={max_rate}]")
    return torch.from_numpy(np.ascontiguousarray(rates.transpose(0, 2, 1), dtype=np.float32))

"""Optimize presynaptic firing rates through a frozen neuron model so that a small stimulus makes it spike.

Entry point: `run_activity_optimization(model, OptimizationConfig(...), out_dir)`; see docs/optimization.md.
"""

from optimization.config import OptimizationConfig
from optimization.run import OptimizationOutcome, run_activity_optimization

__all__ = ["OptimizationConfig", "OptimizationOutcome", "run_activity_optimization"]

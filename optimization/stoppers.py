"""Stopping rules of the optimization loop, one small part each, checked at the end of every logging interval.

Each takes the interval's row (its means: `loss_total`, `p_control`, `p_stim`, ...) and returns the reason to stop,
or None. A rule with memory (the plateau) saves it with the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from errors import OptimizationError
from optimization.config import OptimizationConfig

Row = dict[str, float]


class Stopper(Protocol):
    """A stopping rule: the reason to stop after the interval of `row`, or None."""

    def check(self, row: Row) -> str | None: ...


class MaxIterations:
    """Stop after `max_iterations` optimizer steps, counted across resumes."""

    def __init__(self, max_iterations: int):
        self.max_iterations = max_iterations

    def check(self, row: Row) -> str | None:
        return "max_iterations" if row["iteration"] >= self.max_iterations else None


class TargetReached:
    """Stop once both interval-mean responses are within `tolerance` of their targets."""

    def __init__(self, stimulated_target: float, control_target: float, tolerance: float):
        self.stimulated_target, self.control_target, self.tolerance = stimulated_target, control_target, tolerance

    def check(self, row: Row) -> str | None:
        reached = (
            row["p_stim"] >= self.stimulated_target - self.tolerance
            and row["p_control"] <= self.control_target + self.tolerance
        )
        return "target_reached" if reached else None


class Plateau:
    """Stop when the interval loss has not improved by `min_delta` for `patience` iterations."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best_loss: float = math.inf
        self.iterations_since_best: float = 0  # counted from the row's numbers (floats)
        self.last_iteration: float = 0

    def check(self, row: Row) -> str | None:
        steps, self.last_iteration = row["iteration"] - self.last_iteration, row["iteration"]
        if row["loss_total"] < self.best_loss - self.min_delta:
            self.best_loss, self.iterations_since_best = row["loss_total"], 0
        else:
            self.iterations_since_best += steps
        return "plateau" if self.iterations_since_best >= self.patience else None

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "iterations_since_best": self.iterations_since_best}

    def load_state_dict(self, state: dict[str, Any], iteration: int) -> None:
        self.best_loss, self.iterations_since_best = state["best_loss"], state["iterations_since_best"]
        self.last_iteration = iteration


class NonFinite:
    """Stop with an OptimizationError when the loss or its gradient became NaN/Inf in the interval, after
    `restore()` has reset the rates to the last finite state."""

    def __init__(self, restore: Callable[[], None]):
        self.restore = restore

    def check(self, row: Row) -> str | None:
        first_bad = int(row["first_bad_iteration"])
        if first_bad < 0:
            return None
        self.restore()
        raise OptimizationError(
            f"the loss or its gradient became NaN/Inf at iteration {first_bad}; the rates were reset to the last "
            f"finite state (after iteration {first_bad - 1}) and saved; the last periodic checkpoint is kept. "
            "Lower loop.learning_rate, use fp32 precision, or check the model's output for NaN."
        )


def make_stoppers(config: OptimizationConfig) -> list[Stopper]:
    """The rules a config asks for, in the order their reasons count (NonFinite is checked apart, first: before
    an interval with NaN/Inf is recorded at all)."""
    loop = config.loop
    stoppers: list[Stopper] = []
    if loop.stop_when_target_reached:
        stoppers.append(
            TargetReached(config.objective.target_spike_prob, config.objective.control_target, loop.target_tolerance)
        )
    if loop.early_stop_patience_iterations is not None:
        stoppers.append(Plateau(loop.early_stop_patience_iterations, loop.early_stop_min_delta))
    return stoppers + [MaxIterations(loop.max_iterations)]

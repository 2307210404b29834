"""What the optimization keeps: the sums of the current logging interval (on the device), one history row per
interval, and the checkpoint files that let a killed run continue."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from errors import OptimizationError
from fileio import write_atomically
from models.checkpoint import check_torch_archive
from optimization.step import METRICS

CHECKPOINT_FORMAT = 1


class Tracker:
    def __init__(self, checkpoint_path: Path, signature: dict[str, Any], device: torch.device):
        self.checkpoint_path, self.signature, self.device = checkpoint_path, signature, device
        self.history: list[dict[str, float]] = []
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self.reset_interval()

    def reset_interval(self) -> None:
        self.sums = torch.zeros(len(METRICS), device=self.device)
        self.steps = 0

    def add(self, metrics: torch.Tensor) -> None:
        self.sums += metrics
        self.steps += 1

    def interval_means(self, first_bad_iteration: torch.Tensor) -> tuple[dict[str, float], int]:
        """The interval's metric means and the first non-finite iteration (-1: none), read in one host sync."""
        *means, first_bad = torch.cat([self.sums / self.steps, first_bad_iteration.float()[None]]).tolist()
        self.reset_interval()
        return dict(zip(METRICS, means)), int(first_bad)

    def record(self, row: dict[str, float]) -> dict[str, float]:
        row = {**row, "elapsed_s": self.elapsed_before + time.perf_counter() - self.started}
        self.history.append(row)
        return row

    def save(self, iteration: int, state: dict[str, Any]) -> None:
        """A checkpoint of the optimization after `iteration`: the parts' `state` and the history."""
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "signature": self.signature,
            "iteration": iteration,
            "history": self.history,
            **state,
        }
        write_atomically(self.checkpoint_path, lambda handle: torch.save(checkpoint, handle))

    def load(self, path: Path) -> dict[str, Any]:
        """A checkpoint of the same problem (same signature), its history taken over; the parts' state returned."""
        check_torch_archive(path, OptimizationError)
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:  # torch raises many types for damaged files
            raise OptimizationError(f"checkpoint {path} cannot be read: {error}") from error
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise OptimizationError(f"checkpoint {path} is not an activity-optimization checkpoint")
        signature = state.get("signature")
        recorded = signature if isinstance(signature, dict) else {}
        differences = {
            key: (recorded.get(key), value) for key, value in self.signature.items() if recorded.get(key) != value
        }
        if differences:
            listed = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in differences.items())
            raise OptimizationError(f"checkpoint {path} belongs to a different optimization ({listed})")
        try:
            self.history = list(state["history"])
        except (KeyError, TypeError) as error:
            raise OptimizationError(f"checkpoint {path} is damaged ({type(error).__name__}: {error})") from error
        self.elapsed_before = self.history[-1]["elapsed_s"] if self.history else 0.0
        return state

"""Fixtures of the activity-optimization tests: a synthetic neuron, models of it, small configurations."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from optimization import OptimizationConfig
from tests.optimization.synthetic import (
    NUM_EXCITATORY,
    NUM_INHIBITORY,
    TRAINED_WINDOW_MS,
    ExactFilterModel,
    SyntheticNeuron,
    train_model,
)

WINDOW_MS = 60  # input window of the exact model used by the unit tests

SMALL_RUN = {
    "num_patterns": 2,
    "sampler": {"samples_per_pattern": 4},
    "loop": {
        "max_iterations": 20,
        "learning_rate": 0.005,
        "log_every": 5,
        "checkpoint_every": 10,
        "early_stop_patience_iterations": None,
        "stop_when_target_reached": False,
    },
    "evaluation": {"trials_per_pattern": 40, "chunk_size": 40},
    "report": {"plots": False},
}


def _merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(autouse=True)
def single_thread():
    """These models are tiny: one intra-op thread is faster than two on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def neuron() -> SyntheticNeuron:
    return SyntheticNeuron.make(NUM_EXCITATORY, NUM_INHIBITORY, seed=0)


@pytest.fixture
def exact_model(neuron) -> ExactFilterModel:
    """A fresh exact model per test (the optimization freezes and moves the model it is given)."""
    return ExactFilterModel(neuron, WINDOW_MS)


@pytest.fixture(scope="session")
def trained_model(neuron):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_model(neuron, window_ms=TRAINED_WINDOW_MS)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def small_config():
    """small_config(**overrides) -> a fast OptimizationConfig; nested dicts are merged into SMALL_RUN."""

    def make(**overrides) -> OptimizationConfig:
        return OptimizationConfig.model_validate(_merge(SMALL_RUN, overrides))

    return make


@pytest.fixture
def quiet_logger() -> logging.Logger:
    return logging.getLogger("tests.optimization")

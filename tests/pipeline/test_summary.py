"""The warnings of degenerate runs, computed from hand-made evaluation figures."""

from __future__ import annotations

import pytest

from optimization.config import EvaluationConfig
from pipeline.summary import degenerate_warnings


def figures(stim: float, control: float, ci: tuple[float, float], highest: float = 0.9) -> dict:
    return {
        "p_spike_stim": stim,
        "p_spike_control": control,
        "difference": stim - control,
        "difference_ci": list(ci),
        "max_prob_stim": highest,
        "max_prob_control": highest / 2,
    }


@pytest.mark.parametrize(
    "initial, optimized, expected",
    [
        (figures(0.0, 0.0, (-0.02, 0.02)), figures(0.9, 0.1, (0.75, 0.85)), []),
        (
            figures(0.0, 0.0, (-0.02, 0.02), 0.1),
            figures(0.0, 0.0, (-0.02, 0.02), 0.12),
            [
                "no evaluation trial reached the spike threshold (0.5): the highest spike probability the model gave in "
                "the response window was 0.12",
                "not significantly above the initial",
            ],
        ),
        (
            figures(0.1, 0.05, (0.0, 0.1)),
            figures(0.15, 0.05, (0.08, 0.12)),
            ["not significantly above the initial 0.050"],
        ),
        (
            figures(1.0, 1.0, (-0.01, 0.01)),
            figures(1.0, 0.99, (0.0, 0.02)),
            ["both copies spike in nearly every trial", "not significantly above"],
        ),
    ],
)
def test_degenerate_results_get_one_warning_each(initial, optimized, expected):
    warnings = degenerate_warnings(initial, optimized, EvaluationConfig())
    assert len(warnings) == len(expected)
    for warning, fragment in zip(warnings, expected):
        assert fragment in warning

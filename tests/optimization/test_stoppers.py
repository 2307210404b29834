"""Each stopping rule on hand-made interval rows."""

from __future__ import annotations

import math

import pytest

from errors import OptimizationError
from optimization.config import OptimizationConfig
from optimization.stoppers import MaxIterations, NonFinite, Plateau, TargetReached, make_stoppers


def row(iteration: int, loss: float = 1.0, p_control: float = 0.5, p_stim: float = 0.5, first_bad: int = -1):
    return {
        "iteration": iteration,
        "loss_total": loss,
        "p_control": p_control,
        "p_stim": p_stim,
        "first_bad_iteration": first_bad,
    }


def test_max_iterations():
    rule = MaxIterations(20)
    assert rule.check(row(10)) is None and rule.check(row(20)) == "max_iterations"


@pytest.mark.parametrize(
    "p_stim, p_control, expected",
    [(0.75, 0.05, "target_reached"), (0.69, 0.05, None), (0.9, 0.11, None), (0.9, 0.1, "target_reached")],
)
def test_target_reached_within_the_tolerance(p_stim, p_control, expected):
    assert TargetReached(0.8, 0.0, 0.1).check(row(10, p_stim=p_stim, p_control=p_control)) == expected


def test_plateau_counts_iterations_since_the_best_loss_and_keeps_its_memory():
    rule = Plateau(patience=20, min_delta=0.01)
    assert [rule.check(row(i, loss)) for i, loss in ((10, 1.0), (20, 0.995), (30, 0.9))] == [None] * 3
    assert rule.check(row(40, 0.899)) is None  # not better by min_delta: 10 iterations since the best
    resumed = Plateau(patience=20, min_delta=0.01)
    resumed.load_state_dict(rule.state_dict(), iteration=40)
    assert resumed.check(row(50, 0.95)) == "plateau" == rule.check(row(50, 0.95))
    assert math.isclose(resumed.best_loss, 0.9)


def test_non_finite_restores_then_stops_with_the_iteration():
    restored = []
    rule = NonFinite(lambda: restored.append(True))
    assert rule.check(row(10)) is None and not restored
    with pytest.raises(OptimizationError, match="NaN/Inf at iteration 7.*after iteration 6"):
        rule.check(row(10, first_bad=7))
    assert restored == [True]


def test_the_config_chooses_the_rules():
    names = lambda config: [type(rule).__name__ for rule in make_stoppers(config)]  # noqa: E731
    assert names(OptimizationConfig()) == ["TargetReached", "Plateau", "MaxIterations"]
    quiet = OptimizationConfig.model_validate(
        {"loop": {"stop_when_target_reached": False, "early_stop_patience_iterations": None}}
    )
    assert names(quiet) == ["MaxIterations"]

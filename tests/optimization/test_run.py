"""The whole run on the exact synthetic model: outputs, reproducibility, checkpoints, guards, stopping rules."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from errors import ConfigError, OptimizationError
from optimization import run_activity_optimization
from optimization.runtime import resolve_device
from progress import NO_PROGRESS
from tests.optimization.synthetic import ExactFilterModel


class _Wrapped(torch.nn.Module):
    """Forwards to a model and counts calls (the first call is prepare_model's probe, then one per pass)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.input_shapes = model.input_shapes
        self.calls = 0

    def forward(self, inputs):
        self.calls += 1
        return self.model(inputs)


class NaNFromCall(_Wrapped):
    def __init__(self, model, first_bad_call):
        super().__init__(model)
        self.first_bad_call = first_bad_call

    def forward(self, inputs):
        probability, voltage = super().forward(inputs)
        if self.calls >= self.first_bad_call:
            probability = probability * float("nan")
        return probability, voltage


class OutOfMemoryOnLargeBatches(_Wrapped):
    """After the probe, raises CUDA's out-of-memory error for batches above `limit`, `times` times (None: always)."""

    def __init__(self, model, limit, times=1):
        super().__init__(model)
        self.limit = limit
        self.remaining = times

    def forward(self, inputs):
        after_probe = self.calls > 0
        if after_probe and inputs.shape[0] > self.limit and (self.remaining is None or self.remaining > 0):
            if self.remaining is not None:
                self.remaining -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(inputs)


class InterruptAtCall(_Wrapped):
    def __init__(self, model, call):
        super().__init__(model)
        self.interrupt_call = call

    def forward(self, inputs):
        if self.calls + 1 == self.interrupt_call:
            self.calls += 1
            raise KeyboardInterrupt
        return super().forward(inputs)


def _run(model, config, out_dir, seed=0, logger=None):
    return run_activity_optimization(
        model, config, out_dir, device="cpu", seed=seed, logger=logger, progress=NO_PROGRESS
    )


def _history(outcome) -> pd.DataFrame:
    return pd.read_csv(outcome.files["history"]).drop(columns="elapsed_s")


def test_outputs_are_written_and_consistent(exact_model, small_config, tmp_path):
    config = small_config(report={"plots": True, "dpi": 40})
    outcome = _run(exact_model, config, tmp_path)
    expected = {
        "initial_rates",
        "optimized_rates",
        "history",
        "evaluation",
        "checkpoint",
        "plot_loss",
        "plot_spike_probability",
        "plot_rate_heatmaps",
        "plot_raster",
        "plot_rate_change",
    }
    assert set(outcome.files) == expected
    for key in expected:
        assert outcome.files[key].parent == tmp_path and outcome.files[key].stat().st_size > 0
        if key.startswith("plot_"):
            assert outcome.files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    assert outcome.optimized_rates.shape == (2, 40, 60)  # (patterns, segments, time)
    np.testing.assert_array_equal(np.load(outcome.files["optimized_rates"]), outcome.optimized_rates)
    np.testing.assert_array_equal(np.load(outcome.files["initial_rates"]), outcome.initial_rates)
    assert (outcome.optimized_rates >= 0).all() and (outcome.optimized_rates <= 0.1).all()
    np.testing.assert_array_equal(outcome.optimized_rates[:, 20:], outcome.initial_rates[:, 20:])
    assert (outcome.num_excitatory, outcome.num_inhibitory) == (20, 20)
    assert outcome.stimulus_time_ms == 30 and outcome.response_window_ms == 10
    assert len(outcome.stimulus_segments) == 3 and max(outcome.stimulus_segments) < 20
    assert outcome.iterations_run == 20 and outcome.stopped_because == "max_iterations"
    assert outcome.device == "cpu"

    history = pd.read_csv(outcome.files["history"])
    assert history["iteration"].tolist() == [5, 10, 15, 20]
    for column in (
        "loss_total",
        "loss_response",
        "loss_l1",
        "loss_smoothness",
        "loss_initial_distance",
        "p_control",
        "p_stim",
        "grad_norm",
        "learning_rate",
    ):
        assert np.isfinite(history[column]).all(), column
    assert outcome.final_loss == pytest.approx(history["loss_total"].iloc[-1])

    written = json.loads(outcome.files["evaluation"].read_text())
    assert written["setup"]["stimulus_segments"] == list(outcome.stimulus_segments)
    for which in ("initial", "optimized"):
        result = outcome.evaluation[which]
        assert written[which] == result
        assert result["n_trials"] == 80 and len(result["per_pattern"]) == 2
        assert result["difference"] == pytest.approx(result["p_spike_stim"] - result["p_spike_control"])
        for key in ("p_spike_stim", "p_spike_control", "difference", "mean_prob_stim", "mean_prob_control"):
            low, high = result[f"{key}_ci"]
            assert low <= result[key] <= high


def test_penalty_terms_are_logged_and_sum_to_the_total(exact_model, small_config, tmp_path):
    config = small_config(objective={"l1_weight": 0.1, "smoothness_weight": 0.2, "initial_distance_weight": 0.3})
    history = _history(_run(exact_model, config, tmp_path))
    terms = history[["loss_response", "loss_l1", "loss_smoothness", "loss_initial_distance"]]
    assert (terms[["loss_l1", "loss_smoothness"]] > 0).all().all()
    np.testing.assert_allclose(terms.sum(axis=1), history["loss_total"], rtol=1e-5)


def test_same_seed_same_result_other_seed_other_result(neuron, small_config, tmp_path):
    config = small_config()
    first = _run(ExactFilterModel(neuron, 60), config, tmp_path / "first")
    second = _run(ExactFilterModel(neuron, 60), config, tmp_path / "second")
    other = _run(ExactFilterModel(neuron, 60), config, tmp_path / "other", seed=1)
    np.testing.assert_array_equal(first.optimized_rates, second.optimized_rates)
    assert first.evaluation == second.evaluation
    pd.testing.assert_frame_equal(_history(first), _history(second))
    assert not np.array_equal(first.initial_rates, other.initial_rates)
    assert not np.array_equal(first.optimized_rates, other.optimized_rates)


def test_resume_continues_exactly_like_an_uninterrupted_run(neuron, small_config, tmp_path):
    whole = _run(ExactFilterModel(neuron, 60), small_config(), tmp_path / "whole")
    first_half = _run(ExactFilterModel(neuron, 60), small_config(loop={"max_iterations": 10}), tmp_path / "half")
    assert torch.load(first_half.files["checkpoint"], weights_only=True)["iteration"] == 10
    resumed = _run(
        ExactFilterModel(neuron, 60),
        small_config(loop={"resume_from": str(first_half.files["checkpoint"])}),
        tmp_path / "resumed",
    )
    assert resumed.iterations_run == 20
    np.testing.assert_array_equal(resumed.optimized_rates, whole.optimized_rates)
    np.testing.assert_array_equal(resumed.initial_rates, whole.initial_rates)
    pd.testing.assert_frame_equal(_history(resumed), _history(whole))
    assert resumed.evaluation == whole.evaluation


def test_resume_refuses_a_checkpoint_of_another_problem(neuron, small_config, tmp_path):
    first = _run(ExactFilterModel(neuron, 60), small_config(loop={"max_iterations": 5}), tmp_path / "first")
    config = small_config(stimulus={"segments": [0, 1]}, loop={"resume_from": str(first.files["checkpoint"])})
    with pytest.raises(OptimizationError, match="different optimization.*stimulus_segments"):
        _run(ExactFilterModel(neuron, 60), config, tmp_path / "second")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(OptimizationError, match="cannot be read"):
        _run(ExactFilterModel(neuron, 60), small_config(loop={"resume_from": str(broken)}), tmp_path / "third")


def test_nan_guard_stops_with_a_clear_error_and_keeps_the_last_good_state(neuron, small_config, tmp_path):
    bad_step = 13  # call 1 is the probe, step k is call k + 1
    model = NaNFromCall(ExactFilterModel(neuron, 60), first_bad_call=bad_step + 1)
    with pytest.raises(OptimizationError, match=f"NaN/Inf at iteration {bad_step}"):
        _run(model, small_config(), tmp_path / "nan")
    saved = np.load(tmp_path / "nan" / "optimized_rates.npy")
    assert np.isfinite(saved).all()
    healthy = _run(
        ExactFilterModel(neuron, 60), small_config(loop={"max_iterations": bad_step - 1}), tmp_path / "healthy"
    )
    np.testing.assert_array_equal(saved, healthy.optimized_rates)
    # The periodic checkpoint (iteration 10) survives and resumes like the healthy run.
    assert torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)["iteration"] == 10
    resumed = _run(
        ExactFilterModel(neuron, 60),
        small_config(loop={"max_iterations": bad_step - 1, "resume_from": str(tmp_path / "nan" / "checkpoint.pt")}),
        tmp_path / "resumed",
    )
    np.testing.assert_array_equal(resumed.optimized_rates, healthy.optimized_rates)


def test_out_of_memory_splits_the_step_into_micro_batches_and_logs_it(neuron, small_config, tmp_path, caplog):
    config = small_config()
    step_batch = 2 * config.num_patterns * config.sampler.samples_per_pattern  # control + stimulated copies
    model = OutOfMemoryOnLargeBatches(ExactFilterModel(neuron, 60), limit=step_batch - 1)
    with caplog.at_level(logging.WARNING):
        recovered = _run(model, config, tmp_path / "oom", logger=logging.getLogger("tests.optimization"))
    assert "out of device memory during the optimization step: retrying with 2 micro-batches" in caplog.text
    planned = _run(ExactFilterModel(neuron, 60), small_config(loop={"micro_batches": 2}), tmp_path / "planned")
    np.testing.assert_array_equal(recovered.optimized_rates, planned.optimized_rates)
    assert (pd.read_csv(recovered.files["history"])["micro_batches"] == 2).all()


def test_out_of_memory_in_the_evaluation_retries_with_smaller_chunks(neuron, small_config, tmp_path, caplog):
    config = small_config(loop={"max_iterations": 0}, evaluation={"trials_per_pattern": 40, "chunk_size": 80})
    model = OutOfMemoryOnLargeBatches(ExactFilterModel(neuron, 60), limit=80)
    with caplog.at_level(logging.WARNING):
        recovered = _run(model, config, tmp_path / "oom", logger=logging.getLogger("tests.optimization"))
    assert "out of device memory during the evaluation" in caplog.text
    planned = _run(
        ExactFilterModel(neuron, 60),
        small_config(loop={"max_iterations": 0}, evaluation={"chunk_size": 40}),
        tmp_path / "planned",
    )
    assert recovered.evaluation == planned.evaluation


def test_out_of_memory_with_single_items_is_an_error(neuron, small_config, tmp_path):
    model = OutOfMemoryOnLargeBatches(ExactFilterModel(neuron, 60), limit=1, times=None)
    with pytest.raises(OptimizationError, match="out of device memory during the optimization step"):
        _run(model, small_config(), tmp_path)


def test_ctrl_c_stops_saves_and_still_evaluates(neuron, small_config, tmp_path):
    model = InterruptAtCall(ExactFilterModel(neuron, 60), call=8)  # during step 7
    outcome = _run(model, small_config(), tmp_path)
    assert outcome.stopped_because == "interrupted" and outcome.iterations_run == 6
    assert torch.load(outcome.files["checkpoint"], weights_only=True)["iteration"] == 6
    assert pd.read_csv(outcome.files["history"])["iteration"].tolist() == [5, 6]
    assert outcome.evaluation["optimized"]["n_trials"] == 80
    assert np.isfinite(np.load(outcome.files["optimized_rates"])).all()


def test_stopping_rules(exact_model, small_config, tmp_path, neuron):
    reached = _run(
        exact_model,
        small_config(
            objective={"target_spike_prob": 0.0}, loop={"stop_when_target_reached": True, "target_tolerance": 0.5}
        ),
        tmp_path / "target",
    )
    assert (reached.stopped_because, reached.iterations_run) == ("target_reached", 5)
    plateau = _run(
        ExactFilterModel(neuron, 60),
        small_config(loop={"early_stop_patience_iterations": 5, "early_stop_min_delta": 100.0}),
        tmp_path / "plateau",
    )
    assert (plateau.stopped_because, plateau.iterations_run) == ("plateau", 10)


def test_learning_rate_is_reduced_on_plateaus(exact_model, small_config, tmp_path):
    config = small_config(loop={"max_iterations": 40, "lr_patience_iterations": 0, "min_learning_rate": 1e-3})
    learning_rates = pd.read_csv(_run(exact_model, config, tmp_path).files["history"])["learning_rate"]
    assert learning_rates.iloc[0] == 0.005 and learning_rates.iloc[-1] < 0.005
    assert (learning_rates.diff().dropna() <= 0).all() and (learning_rates >= 1e-3).all()


@pytest.mark.parametrize(
    "overrides",
    [
        {"constraints": {"method": "sigmoid", "moving_segments": "all"}, "loop": {"learning_rate": 0.3}},
        {"constraints": {"moving_segments": "tied", "tied_delay_ms": 3}},
        {"sampler": {"kind": "poisson"}},
        {"sampler": {"kind": "relaxed_bernoulli", "temperature": 0.3}},
        {"loop": {"precision": "bf16"}},
    ],
    ids=["sigmoid-all", "tied", "poisson", "relaxed", "bf16"],
)
def test_variants_run_and_respect_the_bounds(exact_model, small_config, tmp_path, overrides):
    loop = {"max_iterations": 10, **overrides.get("loop", {})}
    others = {key: value for key, value in overrides.items() if key != "loop"}
    outcome = _run(exact_model, small_config(loop=loop, **others), tmp_path)
    assert np.isfinite(outcome.final_loss)
    assert (outcome.optimized_rates >= 0).all() and (outcome.optimized_rates <= 0.1).all()
    assert not np.array_equal(outcome.optimized_rates[:, :20], outcome.initial_rates[:, :20])


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    for name in ("tpu", "cuda:x"):
        with pytest.raises(ConfigError, match="is not one of"):
            resolve_device(name)
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        with pytest.raises(ConfigError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize(
    "key, forged",
    [
        ("iteration", 10**18),
        ("iteration", -5),
        ("iteration", 2.5),
        ("micro_batches", 0),
        ("micro_batches", 10**12),
        ("initial_rates", "nan"),
        ("initial_rates", "shape"),
        ("parameters", "nan"),
    ],
)
def test_resume_refuses_a_checkpoint_whose_numbers_make_no_sense(neuron, small_config, tmp_path, key, forged):
    """A damaged or forged checkpoint sets the loop's counters and rates directly: each is checked first."""
    first = _run(ExactFilterModel(neuron, 60), small_config(loop={"max_iterations": 5}), tmp_path / "first")
    state = torch.load(first.files["checkpoint"], weights_only=True)
    if forged == "nan":
        values = state[key].values() if isinstance(state[key], dict) else [state[key]]
        for tensor in values:
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                tensor.fill_(float("nan"))
    elif forged == "shape":
        state[key] = state[key][..., :-1]
    else:
        state[key] = forged
    path = tmp_path / "forged.pt"
    torch.save(state, path)
    with pytest.raises(OptimizationError, match=f"is damaged: '{key}' must be"):
        _run(ExactFilterModel(neuron, 60), small_config(loop={"resume_from": str(path)}), tmp_path / "second")

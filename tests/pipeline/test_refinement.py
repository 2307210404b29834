"""Closed-loop refinement, the training regime and transfer, end to end through main.py on tiny real Keras TCNs
whose pickles name a small simulated neuron (so that the ground truth and the refinement can run in seconds)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conversion.cache import current_conversion
from models.checkpoint import load_converted_model
from optimization.regime import regime_statistics
from pipeline.refinement import finished_round
from tests.ground_truth.simulators import small_neuron
from tests.pipeline.model_folders import (
    EXCITATORY,
    INHIBITORY,
    WINDOW,
    build_converted_models_folder,
    build_models_folder,
    workspace_with,
)
from tests.subprocesses import run_cli

NEURON = small_neuron(EXCITATORY, INHIBITORY)
QUICK = [
    "device=cpu",
    "optimization.loop.max_iterations=6",
    "optimization.loop.log_every=3",
    "optimization.loop.checkpoint_every=3",
    "optimization.sampler.samples_per_pattern=4",
    "optimization.evaluation.trials_per_pattern=40",
    "optimization.report.plots=false",
    "conversion.verify=false",
    "ground_truth.trials=200",
]
REFINE = [
    "refine.trials=24",
    "refine.replay_trials=16",
    "refine.steps=30",
    "refine.learning_rate=0.003",
    "refine.max_iterations=3",
]


def training_regime() -> dict:
    """The regime of uniform background rates like the ones these tests optimize from."""
    rng = np.random.default_rng(0)
    excitatory = rng.uniform(0.005, 0.02, (20, WINDOW, EXCITATORY))
    inhibitory = rng.uniform(0.01, 0.03, (20, WINDOW, INHIBITORY))
    spikes = rng.random(excitatory.shape) < excitatory
    return regime_statistics(excitatory, inhibitory, spikes, "tests: uniform backgrounds").to_dict()


@pytest.fixture(scope="module")
def models_source(tmp_path_factory) -> Path:
    """Three models, converted once (each test's copy reuses the .pth files, as a second run would)."""
    data = {
        "simulator_config": NEURON.to_dict(),
        "y_soma_threshold": -55.0,
        "y_train_soma_bias": -67.7,
        "input_regime": training_regime(),
    }
    return build_converted_models_folder(
        tmp_path_factory.mktemp("refine_models"), {"alpha": [0.2], "beta": [0.3], "gamma": [0.4]}, data
    )


@pytest.fixture
def workspace(models_source, tmp_path) -> Path:
    return workspace_with(models_source, tmp_path)


def run_main(workspace: Path, *extra: str):
    return run_cli(["main.py", "--config", str(workspace / "config.yaml"), *QUICK, *extra])


def only_summary(workspace: Path) -> dict:
    (path,) = (workspace / "runs").glob("*/summary.json")
    return json.loads(path.read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def refined_run(models_source, tmp_path_factory) -> tuple[Path, dict, str]:
    """One run with two refinement rounds: (workspace, its summary, the converted model's sha256 before it)."""
    workspace = workspace_with(models_source, tmp_path_factory.mktemp("refined_run"))
    base_sha = sha256(workspace / "models" / "alpha_converted.pth")
    result = run_main(workspace, "refine.rounds=2", *REFINE, "optimization.evaluation.transfer_models=0")
    assert result.returncode == 0, result.stderr
    return workspace, only_summary(workspace), base_sha


def test_refinement_rounds_teach_the_model_and_leave_the_converted_one_alone(refined_run):
    workspace, summary, base_sha = refined_run
    base = workspace / "models" / "alpha_converted.pth"
    assert sha256(base) == base_sha  # never replaced
    rounds = summary["refinement"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["model"] == str(base)
    run_dir = Path(summary["run_dir"])
    for record in rounds[1:]:
        tuning = record["fine_tuning"]
        assert tuning["loss_after"] < tuning["loss_before"]  # the model learned the new simulated trials
        assert tuning["new_trials"] == 2 * 24 + 16  # pairs of the pattern and its perturbations, replay trials
        assert tuning["trials"] == record["round"] * tuning["new_trials"]  # every round's trials so far
        for figures in (record["surrogate"], record["ground_truth"]):
            assert 0.0 <= figures["p_spike_stim"] <= 1.0 and 0.0 <= figures["p_spike_control"] <= 1.0
        assert record["gap"]["p_spike_stim"] == pytest.approx(
            abs(record["surrogate"]["p_spike_stim"] - record["ground_truth"]["p_spike_stim"])
        )
        assert record["gap"]["expected_spike_control"] == pytest.approx(
            abs(record["surrogate"]["expected_spike_control"] - record["ground_truth"]["p_spike_control"])
        )
        refined = Path(record["model"])
        assert refined.parent == run_dir and refined.name == f"alpha_refined_r{record['round']}.pth"
        torch.load(refined, weights_only=True)  # the same safe format as a conversion
        model = load_converted_model(refined)
        provenance = model.metadata["refined"]
        assert provenance["base_sha256"] == base_sha and provenance["round"] == record["round"]
        assert provenance["rounds"] == 2 and provenance["simulated_trials"] == tuning["trials"]
        assert (run_dir / f"refine_r{record['round']}" / "optimized_rates.npy").is_file()
    assert load_converted_model(run_dir / "alpha_refined_r2.pth").metadata["refined"]["parent_sha256"] == sha256(
        run_dir / "alpha_refined_r1.pth"
    )
    # the refined models differ from the converted one, and from each other
    weights = [
        load_converted_model(path).state_dict()
        for path in (base, run_dir / "alpha_refined_r1.pth", run_dir / "alpha_refined_r2.pth")
    ]
    name = next(key for key, value in weights[0].items() if value.is_floating_point() and value.numel() > 10)
    assert not torch.equal(weights[0][name], weights[1][name]) and not torch.equal(weights[1][name], weights[2][name])
    report = (run_dir / "report.md").read_text()
    assert "Closed-loop refinement" in report and "Distance from the training regime" in report
    assert "alpha_refined_r2.pth" in report
    assert summary["regime_distance"]["optimized"]["regime_source"] == "tests: uniform backgrounds"


def test_a_refined_model_is_never_reused_as_a_conversion(refined_run):
    _, summary, _ = refined_run
    refined = Path(summary["run_dir"]) / "alpha_refined_r1.pth"
    model, why = current_conversion(refined, None)
    assert model is None and "fine-tuned by a refinement round" in why


def _damages(round_dir: Path, other_round: Path, model_path: Path) -> dict:
    """Every file a finished round keeps, damaged in each way a kill, a disk or a person may: cut short,
    overwritten with garbage, replaced by another round's (valid) file, edited in place."""

    def cut(path):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    def garbage(path):
        path.write_bytes(b"\x00garbage" * 50)

    def edit_record(path):
        record = json.loads(path.read_text())
        record["round"] = 5
        path.write_text(json.dumps(record))

    def edit_rates(path):
        rates = np.load(path)
        np.save(path, rates * 0.5)

    files = {
        "round.json": round_dir / "round.json",
        "simulated_trials.npz": round_dir / "simulated_trials.npz",
        "optimized_rates.npy": round_dir / "optimized_rates.npy",
        "refined model": model_path,
    }
    cases = {}
    for name, path in files.items():
        cases[f"{name} cut short"] = (path, cut)
        cases[f"{name} garbage"] = (path, garbage)
        other = other_round / path.name if path.parent == round_dir else path.with_name(path.name.replace("_r1", "_r2"))
        cases[f"{name} from another round"] = (path, lambda p, source=other: shutil.copy(source, p))
    cases["round.json names another round"] = (files["round.json"], edit_record)
    cases["rates edited"] = (files["optimized_rates.npy"], edit_rates)
    return cases


def test_damaged_or_foreign_round_files_make_the_round_run_again(refined_run, tmp_path, caplog):
    _, summary, base_sha = refined_run
    run_dir = Path(summary["run_dir"])
    rates_shape = np.load(run_dir / "optimized_rates.npy").shape
    pristine = tmp_path / "pristine"
    shutil.copytree(run_dir, pristine)
    device = torch.device("cpu")
    found = finished_round(1, pristine / "refine_r1", pristine / "alpha_refined_r1.pth", base_sha, rates_shape, device)
    assert found is not None and found[0]["round"] == 1  # the undamaged round is taken as finished
    cases = _damages(pristine / "refine_r1", pristine / "refine_r2", pristine / "alpha_refined_r1.pth")
    assert len(cases) >= 14
    for label, (path, damage) in cases.items():
        copy = tmp_path / "case"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(pristine, copy)
        damage(copy / path.relative_to(pristine))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.refinement"):
            found = finished_round(1, copy / "refine_r1", copy / "alpha_refined_r1.pth", base_sha, rates_shape, device)
        assert found is None, label
        assert "running the round again" in caplog.text, label


def test_a_resumed_run_does_not_repeat_finished_rounds(workspace):
    first = run_main(workspace, "refine.rounds=2", *REFINE, "optimization.evaluation.transfer_models=0")
    assert first.returncode == 0, first.stderr
    summary = only_summary(workspace)
    run_dir = Path(summary["run_dir"])
    finished = (run_dir / "refine_r1" / "round.json").read_text()
    refined_r1 = sha256(run_dir / "alpha_refined_r1.pth")
    # as if killed during round 2: no summary, round 2 unfinished
    (run_dir / "summary.json").unlink()
    (run_dir / "refine_r2" / "round.json").unlink()
    second = run_main(workspace, "refine.rounds=2", *REFINE, "optimization.evaluation.transfer_models=0")
    assert second.returncode == 0, second.stderr
    assert len(list((workspace / "runs").glob("*/summary.json"))) == 1  # continued in the same folder
    assert "refinement round 1: finished earlier" in (run_dir / "run.log").read_text()
    assert (run_dir / "refine_r1" / "round.json").read_text() == finished
    assert sha256(run_dir / "alpha_refined_r1.pth") == refined_r1
    rounds = only_summary(workspace)["refinement"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and (run_dir / "refine_r2" / "round.json").is_file()
    # the ground truth of the main optimization (initial and optimized rates) was simulated before the
    # interruption: the resumed run takes it from the run folder
    assert (run_dir / "run.log").read_text().count("400 of 400 trials answered from the simulations stored") >= 2


SPIKE_TIMES_ONLY = "ground_truth.simulator=tests.ground_truth.simulators:small_neuron_spike_times"


def test_a_simulator_function_gives_the_ground_truth_of_the_built_in_simulator(refined_run, workspace):
    """The same neuron behind the function interface (in worker processes): the same figures, and the run says
    which simulator answered."""
    result = run_main(
        workspace, SPIKE_TIMES_ONLY, "ground_truth.workers=2", "optimization.evaluation.transfer_models=0"
    )
    assert result.returncode == 0, result.stderr
    truth, built_in = only_summary(workspace)["ground_truth"], refined_run[1]["ground_truth"]
    for key in ("p_spike_stim", "p_spike_control", "p_outside_stim", "p_outside_control"):
        assert truth[key] == built_in[key] and truth["initial"][key] == built_in["initial"][key]
    assert truth["simulator"] == "the simulator function tests.ground_truth.simulators:small_neuron_spike_times"
    assert built_in["simulator"] == "the demo neuron"


def test_refinement_through_a_function_without_soma_voltage_fine_tunes_on_spikes(workspace):
    result = run_main(
        workspace, SPIKE_TIMES_ONLY, "refine.rounds=1", *REFINE, "optimization.evaluation.transfer_models=0"
    )
    assert result.returncode == 0, result.stderr
    summary = only_summary(workspace)
    rounds = summary["refinement"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["fine_tuning"]["loss_after"] < rounds[1]["fine_tuning"][
        "loss_before"
    ]
    with np.load(Path(summary["run_dir"]) / "refine_r1" / "simulated_trials.npz") as stored:
        assert "soma_v" not in stored.files and stored["spikes"].shape[0] == 2 * 24 + 16
    assert "fine-tuning on spikes only" in (Path(summary["run_dir"]) / "run.log").read_text()


def test_transfer_table_evaluates_the_patterns_on_the_other_models(workspace):
    result = run_main(workspace, "optimization.evaluation.transfer_models=5")
    assert result.returncode == 0, result.stderr
    summary = only_summary(workspace)
    transfer = summary["transfer"]
    assert [(row["rank"], row["stem"]) for row in transfer] == [(2, "beta"), (3, "gamma")]
    for row in transfer:
        assert row["available"] is True
        for copy in ("initial", "optimized"):
            assert row[f"{copy}_difference"] == pytest.approx(
                row[f"{copy}_p_spike_stim"] - row[f"{copy}_p_spike_control"]
            )
    # the selected model's own figures are not in the table, and the other models judge the patterns differently
    assert {row["optimized_difference"] for row in transfer} != {summary["evaluation"]["difference"]}


def test_max_rate_auto_and_the_regime_term_use_the_pickles_regime(workspace):
    too_high = run_main(workspace, "optimization.constraints.max_rate=auto")
    assert too_high.returncode == 4 and "initial_rates.excitatory_range reaches 0.02" in too_high.stderr
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())  # refused before a folder
    result = run_main(
        workspace,
        "optimization.constraints.max_rate=auto",
        "optimization.objective.regime_weight=5",
        "optimization.evaluation.transfer_models=0",
        "optimization.initial_rates.excitatory_range=[0.002,0.008]",
        "optimization.initial_rates.inhibitory_range=[0.002,0.01]",
    )
    assert result.returncode == 0, result.stderr
    summary = only_summary(workspace)
    regime = training_regime()
    assert summary["max_rate"] == pytest.approx(regime["excitatory_rate"]["p99"])
    rates = np.load(Path(summary["run_dir"]) / "optimized_rates.npy")
    assert rates.max() <= np.float32(summary["max_rate"])
    history = (Path(summary["run_dir"]) / "history.csv").read_text().splitlines()
    assert "loss_regime" in history[0] and "loss_specificity" in history[0]


def test_regime_features_are_refused_without_a_regime(tmp_path):
    folder = build_models_folder(tmp_path / "models", {"alpha": [0.2]})
    (tmp_path / "config.yaml").write_text("models_dir: models\noutput_dir: runs\n")
    for setting in ("optimization.constraints.max_rate=auto", "optimization.objective.regime_weight=1"):
        result = run_main(tmp_path, setting)
        assert result.returncode == 3, result.stderr
        assert "input_regime" in result.stderr
    refused = run_main(tmp_path, "refine.rounds=1")
    assert refused.returncode == 3 and "simulator" in refused.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    assert folder.is_dir()


def test_an_ensemble_of_ranks_and_stems_runs_and_is_recorded(workspace):
    result = run_main(workspace, "optimization.ensemble=[1,gamma,2]", "optimization.evaluation.transfer_models=1")
    assert result.returncode == 0, result.stderr
    summary = only_summary(workspace)
    assert summary["ensemble"] == ["gamma", "beta"]  # the selected model (rank 1) is always the first member
    assert [row["stem"] for row in summary["transfer"]] == ["beta"]  # transfer_models: at most that many
    setup = json.loads((Path(summary["run_dir"]) / "evaluation.json").read_text())["setup"]
    assert setup["ensemble_size"] == 3


@pytest.mark.parametrize(
    "settings, message",
    [
        (["optimization.ensemble=[7]"], "no usable model of the results table has rank 7"),
        (["optimization.ensemble=[nosuch]"], "has stem 'nosuch'"),
        (["optimization.ensemble=[2]", "refine.rounds=1"], "cannot be combined with optimization.ensemble"),
        (["refine.rounds=1", "refine.somatic_output_index=7"], "refine.somatic_output_index=7"),
        (["refine.rounds=1", "refine.somatic_output_index=2"], "must be one of shape (batch, time, 1)"),
    ],
)
def test_ensemble_and_refinement_refusals_come_before_any_run_folder(workspace, settings, message):
    result = run_main(workspace, *settings)
    assert result.returncode == 3, result.stderr
    assert message in result.stderr
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())

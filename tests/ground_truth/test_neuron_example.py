"""The NEURON example end to end: main.py on the shipped example model (trained on NEURON simulations of the
reference cell by tools/train_neuron_example.py) with its config, the ground truth simulated in NEURON and shown
beside the surrogate's figures."""

from __future__ import annotations

import json

from tests.subprocesses import REPO, run_cli

EXAMPLE = REPO / "examples" / "neuron_ground_truth"
FIGURES = ("p_spike_stim", "p_spike_control", "p_outside_stim", "p_outside_control")


def test_the_example_runs_end_to_end_with_the_ground_truth_in_neuron(tmp_path):
    result = run_cli(
        [
            "main.py",
            "--config",
            str(EXAMPLE / "config.yaml"),
            f"output_dir={tmp_path / 'runs'}",
            f"ground_truth.neuron.mechanisms_cache={tmp_path / 'nrnivmodl'}",
            "device=cpu",
            "optimization.duration_ms=150",
            "optimization.loop.max_iterations=10",
            "optimization.evaluation.trials_per_pattern=100",
            "optimization.report.plots=false",
            "conversion.verify=false",
        ],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = (tmp_path / "runs").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    truth = summary["ground_truth"]
    assert truth["available"] and truth["simulator"] == "NEURON (cell.hoc)" and truth["n_trials"] == 200
    for figures in (truth, truth["initial"]):
        assert all(0.0 <= figures[key] <= 1.0 for key in FIGURES)
    assert truth["difference"] == truth["p_spike_stim"] - truth["p_spike_control"]
    report = (summary_path.parent / "report.md").read_text()
    assert "| ground truth (NEURON (cell.hoc), optimized rates) |" in report
    assert "| optimized rates |" in report  # the surrogate's row beside it
    assert len(list((summary_path.parent / "simulations").glob("*.npz"))) == 2 * 400 // 10  # cached answers
    assert "mechanism file(s) with nrnivmodl" in result.stderr  # compiled into the test's own cache


def test_a_cell_that_does_not_fit_the_models_channels_is_refused_before_any_run_folder(tmp_path):
    """The synapse count is checked in a worker before the optimization: exit 13, one paragraph, no run folder."""
    result = run_cli(
        [
            "main.py",
            "--config",
            str(EXAMPLE / "config.yaml"),
            f"output_dir={tmp_path / 'runs'}",
            f"ground_truth.neuron.mechanisms_cache={tmp_path / 'nrnivmodl'}",
            "ground_truth.neuron.synapse_map=null",
            "ground_truth.neuron.section_lists=[apical]",
            "conversion.verify=false",
        ],
        timeout=600,
    )
    assert result.returncode == 13, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "cell.hoc" in error[0]
    assert "make 17 + 17 synapses, but the model takes 32 excitatory + 32 inhibitory input channels" in error[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())

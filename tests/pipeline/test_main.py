"""main.py end to end on a real models folder: selection, conversion once, reuse, summary, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.pipeline.model_folders import NAN, build_models_folder
from tests.subprocesses import project_version, run_cli

QUICK = [
    "device=cpu",
    "optimization.loop.max_iterations=6",
    "optimization.loop.log_every=3",
    "optimization.loop.checkpoint_every=null",
    "optimization.sampler.samples_per_pattern=4",
    "optimization.evaluation.trials_per_pattern=40",
    "optimization.report.plots=false",
]

HISTORIES = {
    "alpha": [0.5, 0.2, 0.4],  # best by min, worse by last
    "beta": [0.35, 0.3, 0.3],  # best by last
    "gamma": [NAN, NAN, NAN],  # never selectable
    "nomodel_delta": [0.05, 0.01],  # best metric, but no model file
    "epsilon": [0.9, 0.8],  # worst; gets a stale .pth beside it
}


@pytest.fixture(scope="module")
def models_source(tmp_path_factory) -> Path:
    return build_models_folder(tmp_path_factory.mktemp("models_source"), HISTORIES)


@pytest.fixture
def workspace(models_source, tmp_path) -> Path:
    shutil.copytree(models_source, tmp_path / "models")
    config = tmp_path / "config.yaml"
    config.write_text("models_dir: models\noutput_dir: runs\nconversion:\n  verify: true\n")
    return tmp_path


def run_main(workspace: Path, *extra: str):
    return run_cli(["main.py", "--config", str(workspace / "config.yaml"), *QUICK, *extra])


def summaries(workspace: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((workspace / "runs").glob("*/summary.json"))]


def test_selects_converts_once_then_reuses(workspace):
    stale = workspace / "models" / "epsilon.pth"
    first = run_main(workspace)
    assert first.returncode == 0, first.stderr
    shutil.copy(workspace / "models" / "alpha_converted.pth", stale)  # a foreign file beside a worse model
    second = run_main(workspace)
    assert second.returncode == 0, second.stderr

    one, two = summaries(workspace)
    assert Path(one["selected_model"]).name == "alpha.h5"
    assert one["selection_metric"] == "val_spikes_loss" and one["selection_value"] == pytest.approx(0.2)
    assert one["converted"] is True and two["converted"] is False
    assert one["pytorch_model"] == two["pytorch_model"] == str(workspace / "models" / "alpha_converted.pth")
    for key in ("device", "final_loss", "seconds", "versions"):
        assert key in one
    assert one["device"] == "cpu" and {"python", "torch"} <= set(one["versions"])
    assert one["version"] == one["versions"]["neuron_tcn"] == project_version()
    for key in ("p_spike_stim", "p_spike_control", "difference", "n_trials"):
        assert key in one["evaluation"]
    assert one["evaluation"]["n_trials"] >= 40
    assert one["ground_truth"]["available"] is False  # these models name no simulator
    assert "Report:" in first.stdout and Path(first.stdout.split("Report:")[1].strip()).is_file()

    run_dir = Path(one["run_dir"])
    table = (run_dir / "results_table.csv").read_text()
    assert "nomodel_delta" in table and "no model file" in table and "no finite value" in table
    assert (run_dir / "config.yaml").is_file() and (run_dir / "run.log").read_text()
    info = (workspace / "models").glob("alpha_converted_info.pickle")
    assert list(info), "the conversion info is written beside the converted model"


def test_reduction_last_picks_another_model(workspace):
    result = run_main(workspace, "selection.reduction=last", "conversion.verify=false")
    assert result.returncode == 0, result.stderr
    (summary,) = summaries(workspace)
    assert Path(summary["selected_model"]).name == "beta.h5"
    assert summary["selection_value"] == pytest.approx(0.3)


def test_stale_pth_is_converted_again(workspace, tmp_path):
    """A .pth recording another source's sha256 is not used; the .h5 is converted afresh."""
    shutil.copy(workspace / "models" / "alpha.h5", tmp_path / "other.h5")
    run_cli(["model_converter.py", str(tmp_path / "other.h5"), str(workspace / "models" / "alpha_converted.pth")])
    result = run_main(workspace, "conversion.verify=false")
    assert result.returncode == 0, result.stderr
    assert "stale or foreign" not in result.stderr  # same bytes, same sha256: reused
    with open(workspace / "models" / "alpha.h5", "ab") as f:
        f.write(b"\0")  # the source changed since that conversion
    result = run_main(workspace, "conversion.verify=false")
    assert result.returncode == 0, result.stderr
    assert "stale or foreign" in result.stderr
    assert [s["converted"] for s in summaries(workspace)] == [False, True]


def test_compressed_export_is_used_stated_and_reused(workspace):
    """conversion.export: the run uses the int8/pruned model, its summary and report state the cost; the next
    run with the same export reuses it, one without converts the exact float32 model again."""
    export = ["conversion.export.quantize=int8", "conversion.export.prune=0.5", "conversion.export.max_error=0.5"]
    first = run_main(workspace, *export)
    assert first.returncode == 0, first.stderr
    second = run_main(workspace, *export)
    assert second.returncode == 0, second.stderr
    exact = run_main(workspace)
    assert exact.returncode == 0, exact.stderr
    one, two, three = summaries(workspace)
    assert [s["converted"] for s in (one, two, three)] == [True, False, True]
    assert one["conversion"]["stored"] == two["conversion"]["stored"] == "pruned 50 % (layer), int8"
    assert one["conversion"]["verified"] is True  # the float32 conversion, checked before the export was made
    cost = one["conversion"]["export"]
    assert "spikes" in cost["outputs"] and cost["spikes"]["trials"] > 0
    assert all(output["error"] <= 0.5 for output in cost["outputs"].values())
    assert any("max abs diff to the float32 conversion" in line for line in one["conversion"]["export_cost"])
    assert "stored as pruned 50 % (layer), int8" in (Path(one["run_dir"]) / "report.html").read_text()
    assert "stored as pruned" in first.stderr  # the log says which model the run uses
    assert three["conversion"]["stored"] == "float32" and three["conversion"]["export"] is None


def test_unknown_key_fails_naming_it(workspace):
    result = run_main(workspace, "optimization.loop.max_iters=5")
    assert result.returncode != 0
    assert "optimization.loop.max_iters" in result.stderr and "max_iterations" in result.stderr
    assert not (workspace / "runs").exists()


def test_wrong_type_fails_naming_it(workspace):
    result = run_main(workspace, "--set", "optimization.num_patterns=many")
    assert result.returncode != 0
    assert "optimization.num_patterns" in result.stderr
    bad_choice = run_main(workspace, "selection.reduction=median")
    assert bad_choice.returncode != 0 and "selection.reduction" in bad_choice.stderr and "'min'" in bad_choice.stderr


def test_no_usable_model_exits_without_summary(tmp_path):
    folder = build_models_folder(tmp_path / "models", {"nomodel_a": [0.1], "nan_b": [NAN]})
    (tmp_path / "config.yaml").write_text("models_dir: models\noutput_dir: runs\n")
    result = run_cli(["main.py", "--config", str(tmp_path / "config.yaml"), *QUICK])
    assert result.returncode != 0
    assert "no usable model" in result.stderr
    assert not list(tmp_path.glob("runs/*/summary.json"))
    assert (folder / "nan_b.h5").is_file()


def test_empty_models_folder(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "config.yaml").write_text("models_dir: models\n")
    result = run_cli(["main.py", "--config", str(tmp_path / "config.yaml"), *QUICK])
    assert result.returncode != 0 and "no model parameter pickles" in result.stderr

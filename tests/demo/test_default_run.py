"""main.py on the shipped demo models (a short run): the ground truth of the simulated neuron is reported."""

from __future__ import annotations

import json
import shutil

from tests.pipeline.test_main import QUICK
from tests.subprocesses import REPO, run_cli


def test_demo_run_reports_the_ground_truth(tmp_path):
    shutil.copytree(REPO / "demo_models", tmp_path / "demo_models", ignore=shutil.ignore_patterns("*_converted*", ".*"))
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "config.yaml").read_text())  # the shipped config, on a copy of the models
    result = run_cli(["main.py", "--config", str(config), *QUICK, "conversion.verify=false"])
    assert result.returncode == 0, result.stderr
    (summary_path,) = tmp_path.glob("runs/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert "4x32x77" in summary["selected_model"]  # lowest min val_spikes_loss of the three
    truth = summary["ground_truth"]
    assert truth["available"] is True and truth["n_trials"] == 200
    assert 0.0 <= truth["p_spike_control"] <= 1.0 and 0.0 <= truth["p_spike_stim"] <= 1.0
    assert truth["difference"] == truth["p_spike_stim"] - truth["p_spike_control"]
    assert "ground truth" in (summary_path.parent / "report.md").read_text()
    off = run_cli(["main.py", "--config", str(config), *QUICK, "ground_truth.enabled=false"])
    assert off.returncode == 0, off.stderr
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("runs/*/summary.json"))]
    assert [s["ground_truth"]["available"] for s in summaries] == [True, False]
    assert summaries[1]["converted"] is False

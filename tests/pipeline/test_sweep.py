"""`main.py --sweep` on a copy of the best demo model: 2 seeds x 2 stimulus sets with the sequential, Ray and
local backends, resuming, failed runs; and the expansion of the sweep section itself."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from errors import ConfigError, SelectionError, SweepError
from pipeline import sweep_backends
from pipeline.config import AppConfig, SweepConfig
from pipeline.sweep import resolve_models, run_config, run_sweep, sweep_points
from pipeline.sweep_backends import gpu_names, plan_local_workers, run_local
from pipeline.sweep_report import write_sweep_report
from selection.config import SelectionConfig
from selection.table import Candidate, rank
from tests.pipeline.test_main import QUICK
from tests.pipeline.test_study_folder import check_page_against
from tests.subprocesses import REPO, run_cli

BEST_DEMO = "SIMNMDA_TCN__DxWxT_4x32x77__2026-11-26__12_00__samples_57600__LogLoss_train_378_valid_399__ID_21456"
# Shorter still than QUICK (later overrides win): 3 iterations, 20 evaluation trials per run; a busier
# background, so that the neuron spikes and the figures differ from run to run.
SHORT = [
    *QUICK,
    "optimization.loop.max_iterations=3",
    "optimization.evaluation.trials_per_pattern=20",
    "optimization.initial_rates.excitatory_range=[0.02, 0.04]",
]
GRID = ["sweep.seeds=[0, 1]", "sweep.stimulus_sets=[0, [1, 2, 3]]"]
FAILING_SET = "[1, 2, 999]"  # a valid list of integers, but segment 999 does not exist: each run fails
FIGURES = ["difference", "p_spike_stim", "p_spike_control", "n_trials"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The best demo model (.h5 + .pickle only, so that the first sweep converts it) and a config."""
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "models").mkdir()
    for suffix in (".h5", ".pickle"):
        shutil.copy(REPO / "demo_models" / f"{BEST_DEMO}{suffix}", folder / "models")
    (folder / "config.yaml").write_text(
        "models_dir: models\noutput_dir: runs\nconversion:\n  verify: false\nground_truth:\n  enabled: false\n"
    )
    return folder


def run_main_sweep(workspace: Path, name: str, *extra: str):
    return run_cli(
        ["main.py", "--config", str(workspace / "config.yaml"), "--sweep", *SHORT, *GRID, f"sweep.name={name}", *extra]
    )


def manifest(sweep_dir: Path) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "manifest.csv").set_index("run_id")


@pytest.fixture(scope="module")
def sequential(workspace) -> Path:
    result = run_main_sweep(workspace, "sequential")
    assert result.returncode == 0, result.stderr
    return workspace / "runs" / "sweep_sequential"


@pytest.fixture(scope="module")
def on_ray(workspace, sequential) -> Path:
    result = run_main_sweep(workspace, "ray", "sweep.backend=ray", "sweep.ray.num_cpus=2")
    assert result.returncode == 0, result.stderr
    return workspace / "runs" / "sweep_ray"


def test_sequential_sweep_writes_runs_manifest_aggregate_and_plots(sequential):
    runs = manifest(sequential)
    assert len(runs) == 4 and set(runs["status"]) == {"done"}
    assert sorted(zip(runs["seed"], runs["stimulus"])) == [(0, "draw0"), (0, "seg1-2-3"), (1, "draw0"), (1, "seg1-2-3")]
    summaries = {
        run_id: json.loads((sequential / row.folder / "summary.json").read_text()) for run_id, row in runs.iterrows()
    }
    assert runs["p_spike_stim"].nunique() > 1  # figures that tell runs apart, for the comparisons below
    for run_id, summary in summaries.items():  # the manifest holds each run's own evaluation
        assert [runs.loc[run_id, key] for key in FIGURES] == [summary["evaluation"][key] for key in FIGURES]
        assert summary["seed"] == runs.loc[run_id, "seed"] and summary["device"] == "cpu"
    drawn = runs[runs["stimulus"] == "draw0"]["stimulus_segments"]
    assert drawn.nunique() == 1 and len(drawn.iloc[0].split(";")) == 3  # one draw, the same for both seeds
    assert set(runs[runs["stimulus"] == "seg1-2-3"]["stimulus_segments"]) == {"1;2;3"}
    assert [s["converted"] for s in summaries.values()] == [True] * 4  # converted by this sweep...
    assert (sequential / "sweep.log").read_text().count("converting ") == 1  # ...once, before the runs
    assert len({s["pytorch_model"] for s in summaries.values()}) == 1

    aggregate = pd.read_csv(sequential / "aggregate.csv").set_index("stimulus")
    for stimulus, group in runs.groupby("stimulus"):
        differences = [summaries[run_id]["evaluation"]["difference"] for run_id in group.index]
        assert aggregate.loc[stimulus, "runs_done"] == 2
        assert aggregate.loc[stimulus, "difference_mean"] == pytest.approx(np.mean(differences))
        assert aggregate.loc[stimulus, "difference_sd"] == pytest.approx(np.std(differences, ddof=1))
    table = (sequential / "aggregate.md").read_text()
    assert "±" in table and "draw0" in table and "seg1-2-3" in table

    heatmaps = sorted((sequential / "heatmaps").glob("*.png"))
    assert len(heatmaps) == 2 and all(p.read_bytes().startswith(b"\x89PNG") for p in heatmaps)
    report = (sequential / "report.md").read_text()
    assert all(f"heatmaps/{p.name}" in report for p in heatmaps) and table.strip() in report

    page = check_page_against(sequential)  # report.html: heatmaps embedded, each run's own page linked
    assert sorted(image["alt"] for image in page.images) == sorted(
        line.removeprefix("### ") for line in report.splitlines() if line.startswith("### ")
    )
    assert sorted(page.links) == sorted(f"{folder}/report.html" for folder in runs["folder"])
    for folder in runs["folder"]:
        check_page_against(sequential / folder, json.loads((sequential / folder / "summary.json").read_text()))
    shown = [float(value) for key, value in page.cells if key == "difference_mean"]
    assert shown == pytest.approx(list(aggregate["difference_mean"]))


def test_ray_backend_finds_the_same_figures(sequential, on_ray):
    here, there = manifest(sequential), manifest(on_ray)
    assert list(there.index) == list(here.index) and set(there["status"]) == {"done"}
    assert there[FIGURES + ["stimulus_segments"]].equals(here[FIGURES + ["stimulus_segments"]])
    # The loss is a float sum whose rounding depends on the thread count (Ray gives each run one CPU).
    assert there["final_loss"].to_numpy() == pytest.approx(here["final_loss"].to_numpy(), rel=1e-5)
    for folder in there["folder"]:
        summary = json.loads((on_ray / folder / "summary.json").read_text())
        assert summary["converted"] is False and Path(summary["run_dir"]).parent == on_ray
    assert len(list((on_ray / "heatmaps").glob("*.png"))) == 2


def test_a_second_invocation_runs_nothing_new(workspace, sequential):
    before = (sequential / "manifest.csv").read_text()
    folders = sorted(p.name for p in sequential.iterdir())
    summary_times = [p.stat().st_mtime_ns for p in sorted(sequential.glob("*/summary.json"))]
    again = run_main_sweep(workspace, "sequential")
    assert again.returncode == 0, again.stderr
    assert "4 done before, 0 to run" in again.stderr
    assert (sequential / "manifest.csv").read_text() == before
    assert sorted(p.name for p in sequential.iterdir()) == folders
    assert [p.stat().st_mtime_ns for p in sorted(sequential.glob("*/summary.json"))] == summary_times


def test_failed_runs_are_recorded_the_others_finish_and_a_rerun_retries_them(workspace, sequential):
    stimuli = f"sweep.stimulus_sets=[[1, 2, 3], {FAILING_SET}]"
    result = run_main_sweep(workspace, "local", stimuli, "sweep.backend=local", "sweep.max_workers=2")
    assert result.returncode == SweepError.exit_code, result.stderr
    assert "2 of 4 run(s) failed" in result.stderr
    local = workspace / "runs" / "sweep_local"
    runs = manifest(local)
    failed = runs[runs["status"] == "failed"]
    assert list(failed["stimulus"]) == ["seg1-2-999"] * 2
    assert all("999" in error and "outside" in error for error in failed["error"])
    done = runs[runs["status"] == "done"]
    reference = manifest(sequential).loc[done.index]
    assert list(done["stimulus"]) == ["seg1-2-3"] * 2
    np.testing.assert_array_equal(done[FIGURES].to_numpy(float), reference[FIGURES].to_numpy(float))
    assert "## Failed runs" in (local / "report.md").read_text()

    done_times = [(local / f / "summary.json").stat().st_mtime_ns for f in done["folder"]]
    retry = run_main_sweep(workspace, "local", stimuli)
    assert retry.returncode == SweepError.exit_code, retry.stderr
    assert "2 done before, 2 to run" in retry.stderr
    retried = manifest(local)
    assert list(retried.loc[failed.index, "folder"]) == [f"{f}_2" for f in failed["folder"]]  # a new attempt
    assert [(local / f / "summary.json").stat().st_mtime_ns for f in done["folder"]] == done_times


def test_a_report_leaves_out_the_heatmap_of_a_pruned_run_and_says_so(sequential, tmp_path, caplog):
    """A done run whose files went missing after the sweep: the report still comes, without that heatmap."""
    copy = tmp_path / "sweep_pruned"
    shutil.copytree(sequential, copy, ignore=shutil.ignore_patterns("heatmaps", "*.pt"))
    runs = manifest(copy)
    pruned = runs.iloc[0]
    (copy / pruned["folder"] / "optimized_rates.npy").unlink()
    with caplog.at_level(logging.WARNING, logger="sweep"):
        report = write_sweep_report(
            copy, copy / "manifest.csv", ["model", "stimulus"], SweepConfig(seeds=[0, 1], stimulus_sets=[0, [1, 2, 3]])
        )
    assert f"stimulus {pruned['stimulus']}" in caplog.text and "optimized_rates.npy" in caplog.text
    text = (copy / "report.md").read_text()
    assert "## Heatmaps left out" in text and f"stimulus {pruned['stimulus']}: " in text
    assert report.name == "report.html" and f"stimulus {pruned['stimulus']}: " in report.read_text()
    (kept,) = (copy / "heatmaps").glob("*.png")  # the other stimulus set's heatmap still comes
    other = (set(runs["stimulus"]) - {pruned["stimulus"]}).pop()
    assert kept.name.endswith(f"_{other}.png") and f"heatmaps/{kept.name}" in text


def test_local_workers_go_one_per_gpu_of_the_allocation_or_onto_the_named_gpu():
    assert gpu_names(2, "2,3") == ["2", "3"]  # a cluster's allocation: its GPUs, numbered 0 and 1 inside
    assert gpu_names(1, "GPU-aa,GPU-bb") == ["GPU-aa"]
    assert gpu_names(2, None) == ["0", "1"]
    assert plan_local_workers("auto", 8, None, 16, 2, "2,3") == (2, ["2", "3"])
    assert plan_local_workers("cuda", 1, None, 16, 2, None) == (1, ["0"])
    assert plan_local_workers("cuda", 8, 1, 16, 2, "5,7") == (1, ["5"])
    assert plan_local_workers("cuda:1", 8, None, 16, 2, "2,3") == (1, None)  # the runs name the GPU themselves
    assert plan_local_workers("cuda:1", 8, 3, 16, 2, None) == (3, None)
    assert plan_local_workers("auto", 8, None, 4, 0, None) == (4, None)  # no GPU: up to one per core
    assert plan_local_workers("cpu", 8, 2, 4, 2, None) == (2, None)


def kill_this_worker(task) -> dict:
    """In place of a run whose worker process the system kills (as it does for lack of memory)."""
    os.kill(os.getpid(), signal.SIGKILL)


def test_runs_lost_with_a_dead_worker_fail_with_a_hint_to_retry(monkeypatch):
    monkeypatch.setattr(sweep_backends, "run_task_in_worker", kill_this_worker)  # pickled by name: the worker
    results = {}  # imports it from this module
    run_local(["first", "second"], AppConfig(device="cpu", sweep=SweepConfig(max_workers=1)), results.__setitem__)
    assert set(results) == {"first", "second"}
    for result in results.values():
        assert result["status"] == "failed"
        assert "worker process died" in result["error"] and "start the sweep again" in result["error"]


def test_the_sweep_expands_to_the_cartesian_product():
    sweep = SweepConfig(
        seeds={"first": 42, "count": 3},
        stimulus_sets=[5, [0, 2, 4]],
        models=[1, "beta"],
        overrides={"optimization.loop.learning_rate": [0.002, 0.004]},
    )
    points = sweep_points(sweep, base_seed=0)
    assert len(points) == 2 * 2 * 2 * 3
    assert {p.seed for p in points} == {42, 43, 44} and {p.model for p in points} == {1, "beta"}
    config = run_config(AppConfig(), next(p for p in points if p.stimulus == 5 and p.overrides[0][1] == 0.004))
    assert config.optimization.stimulus.selection_seed == 5 and config.optimization.stimulus.segments is None
    assert config.optimization.loop.learning_rate == 0.004 and config.seed == 42
    explicit = run_config(AppConfig(), next(p for p in points if p.stimulus == [0, 2, 4]))
    assert explicit.optimization.stimulus.segments == [0, 2, 4]
    defaults = sweep_points(SweepConfig(), base_seed=7)
    assert [(p.model, p.seed, p.stimulus, p.overrides) for p in defaults] == [(1, 7, None, ())]
    with pytest.raises(ConfigError, match="sweep.stimulus_sets .* repeats a value"):
        sweep_points(SweepConfig(stimulus_sets=[[1, 2], [1, 2]]), base_seed=0)


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        ({"seed": [1, 2]}, ["'seed'", "sweep.seeds"]),
        ({"selection.metric": ["loss"]}, ["'selection.metric'", "sweep.models"]),
        ({"optimization.loop.learning_rate": []}, ["optimization.loop.learning_rate", "is empty"]),
        ({"optimization.loop.learning_rate": [0.1, 0.1]}, ["optimization.loop.learning_rate", "repeats"]),
    ],
)
def test_overrides_that_cannot_vary_are_refused(overrides, fragments):
    with pytest.raises(ConfigError) as error:
        sweep_points(SweepConfig(overrides=overrides), base_seed=0)
    assert all(fragment in str(error.value) for fragment in fragments)


def test_a_bad_override_stops_the_sweep_before_anything_is_written(tmp_path):
    config = AppConfig(
        output_dir=tmp_path / "runs", sweep=SweepConfig(overrides={"optimization.loop.learning_rat": [0.1]})
    )
    with pytest.raises(ConfigError) as error:
        run_sweep(config, table=pd.DataFrame(), log_buffer=None)
    assert "optimization.loop.learning_rat" in str(error.value) and "learning_rate" in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_models_by_rank_or_by_name(tmp_path):
    def row(stem: str, value: float, reason: str = "") -> Candidate:
        return Candidate(stem=stem, value=value, reason=reason, stem_path=tmp_path / stem, finite_epochs=1)

    table = rank(
        [row("alpha", 0.3), row("beta", 0.1), row("gamma", float("nan"), "no finite value")], SelectionConfig()
    )
    chosen = resolve_models(table, [1, 2], "models")
    assert [chosen[1].stem, chosen[2].stem] == ["beta", "alpha"]
    assert [chosen[1].rank, chosen[2].rank] == [1, 2]
    assert resolve_models(table, ["alpha"], "models")["alpha"].stem == "alpha"
    for specs, fragment in (([3], "rank 3"), (["delta"], "'delta'"), (["gamma"], "not usable")):
        with pytest.raises(SelectionError, match=fragment):
            resolve_models(table, specs, "models")
    with pytest.raises(ConfigError, match="more than once"):
        resolve_models(table, [2, "alpha"], "models")

"""Jobs killed with SIGKILL: the next run recovers. A conversion killed while it holds the model's lock leaves
no file under the output's name (or the previous one, untouched), and its lock dies with it; an optimization
killed after a checkpoint is resumed from it and completes.

Two conversions of one model at the same time: tests/conversion/test_cache.py
(test_two_processes_converting_the_same_model_leave_one_valid_file). Out-of-memory micro-batching:
tests/optimization/test_run.py (test_out_of_memory_*).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conversion.cache import lock_path_for
from model_converter import load_converted_model
from selection.config import SelectionConfig
from selection.table import table_from_models_dir
from tests.reliability.conftest import QUICK_RUN, run_main, snapshot
from tests.subprocesses import REPO, run_cli, run_keras_script

# A conversion that takes a while (a 35 MB kernel), so that it can be caught holding its lock.
BUILD_LARGE = """
import keras, numpy as np
inp = keras.Input((100, 1278), name="input")
x = keras.layers.Conv1D(128, 54, padding="causal", activation="relu", name="layer_1")(inp)
x = keras.layers.BatchNormalization(name="layer_1_BN")(x)
keras.Model(inp, keras.layers.Conv1D(1, 1, activation="sigmoid", name="spikes")(x)).save("large.h5")
"""
POLL_S = 0.01


@pytest.fixture(scope="module")
def large_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("large_model")
    run_keras_script(BUILD_LARGE, folder)
    return folder / "large.h5"


def lock_is_free(lock: Path) -> bool:
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def kill_when(process: subprocess.Popen, ready) -> None:
    """SIGKILL `process` as soon as `ready()` is true; fail if it ends first."""
    while not ready():
        assert process.poll() is None, f"the job ended before it could be killed:\n{process.communicate()[1]}"
        time.sleep(POLL_S)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def kill_conversion_holding_its_lock(model: Path, *extra: str) -> None:
    lock = lock_path_for(model.with_name(f"{model.stem}_converted.pth"))
    job = start(["model_converter.py", str(model), *extra])
    kill_when(job, lambda: lock.exists() and not lock_is_free(lock))
    assert lock.exists() and lock_is_free(lock), "an fcntl lock dies with the process that held it"


def test_conversion_killed_with_sigkill_is_recovered(large_model, tmp_path):
    model = tmp_path / "large.h5"
    model.write_bytes(large_model.read_bytes())
    output = tmp_path / "large_converted.pth"

    kill_conversion_holding_its_lock(model)
    assert not output.exists() and not (tmp_path / "large_converted_info.pickle").exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("large.h5", lock_path_for(output).name))
    assert all(name.startswith(".large_converted") and ".tmp." in name for name in leftovers), leftovers

    first = run_cli(["model_converter.py", str(model)])
    assert first.returncode == 0 and "converted" in first.stdout, first.stderr
    converted = snapshot(tmp_path)[output.name]

    kill_conversion_holding_its_lock(model, "--force")  # a second conversion over the first one, killed
    assert snapshot(tmp_path)[output.name] == converted, "the previous conversion is untouched"
    again = run_cli(["model_converter.py", str(model), "--force"])
    assert again.returncode == 0 and "converted" in again.stdout, again.stderr
    assert load_converted_model(output).metadata["source_sha256"]


def test_leftovers_of_a_killed_write_are_never_taken_as_the_model(workspace):
    """What SIGKILL during the final write leaves (hidden temporary files of the .pth and its info pickle, and
    the lock file) is ignored by main.py's model search and results table."""
    models = workspace / "models"
    converted = models / "alpha_converted.pth"
    (models / f".alpha_converted.{999999}.deadbeef.tmp.pth").write_bytes(converted.read_bytes()[:3000])
    (models / f".alpha_converted_info.{999999}.deadbeef.tmp.pickle").write_bytes(
        pickle.dumps({"converter_version": "partial"})
    )
    lock_path_for(converted).touch()
    table = table_from_models_dir(models, SelectionConfig())
    assert table["stem"].tolist() == ["alpha"]
    result = run_main(workspace)
    assert result.returncode == 0, result.stderr
    (summary,) = [json.loads(p.read_text()) for p in (workspace / "runs").glob("*/summary.json")]
    assert summary["pytorch_model"] == str(converted) and summary["converted"] is False


# A run that checkpoints every 5 iterations and stops only at max_iterations.
CHECKPOINTING = [
    "optimization.loop.log_every=5",
    "optimization.loop.checkpoint_every=5",
    "optimization.loop.early_stop_patience_iterations=null",
    "optimization.loop.stop_when_target_reached=false",
]


def start_endless_run(workspace: Path) -> subprocess.Popen:
    return start(
        [
            "main.py",
            "--config",
            str(workspace / "config.yaml"),
            *QUICK_RUN,
            *CHECKPOINTING,
            "optimization.loop.max_iterations=100000",
        ]
    )


def test_optimization_killed_after_a_checkpoint_is_continued_by_the_next_start(workspace):
    job = start_endless_run(workspace)
    kill_when(job, lambda: any((workspace / "runs").glob("*/checkpoint.pt")))
    (checkpoint,) = (workspace / "runs").glob("*/checkpoint.pt")
    assert not any((workspace / "runs").glob("*/summary.json"))
    reached = torch.load(checkpoint, weights_only=True)["iteration"]
    assert reached > 0 and reached % 5 == 0

    finish_at = reached + 10  # the same job started again; max_iterations counts across resumes
    result = run_main(workspace, *CHECKPOINTING, f"optimization.loop.max_iterations={finish_at}")
    assert result.returncode == 0, result.stderr
    assert f"continuing the interrupted run {checkpoint.parent}" in result.stderr
    assert f"resumed from {checkpoint} at iteration {reached}" in result.stderr
    (summary_path,) = (workspace / "runs").glob("*/summary.json")
    assert summary_path.parent == checkpoint.parent and len(list((workspace / "runs").iterdir())) == 1
    summary = json.loads(summary_path.read_text())
    assert summary["iterations_run"] == finish_at and summary["stopped_because"] == "max_iterations"
    history = pd.read_csv(summary_path.parent / "history.csv")
    assert history["iteration"].iloc[0] <= reached and history["iteration"].iloc[-1] == finish_at
    run_log = (summary_path.parent / "run.log").read_text()
    assert run_log.count("selected ") == 2  # both starts logged into the run's one log

    again = run_main(workspace, *CHECKPOINTING, f"optimization.loop.max_iterations={finish_at}")
    assert again.returncode == 0 and "continuing the interrupted run" not in again.stderr
    assert len(list((workspace / "runs").iterdir())) == 2  # a finished run is never continued


def test_a_run_still_in_progress_is_not_continued_by_a_second_job(workspace):
    job = start_endless_run(workspace)
    try:
        while not any((workspace / "runs").glob("*/checkpoint.pt")):
            assert job.poll() is None, job.communicate()[1]
            time.sleep(POLL_S)
        (live,) = (workspace / "runs").iterdir()
        second = run_main(workspace, *CHECKPOINTING, "optimization.loop.max_iterations=10")
        assert second.returncode == 0, second.stderr
        assert "continuing the interrupted run" not in second.stderr
        (finished,) = (workspace / "runs").glob("*/summary.json")
        assert finished.parent != live and not (live / "summary.json").exists()
    finally:
        job.kill()
        job.communicate()

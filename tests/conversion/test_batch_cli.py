"""Batch conversion of a folder (`model_converter.py DIR`): parallel worker processes, the final table, cache
hits on a second run, reconversion of a changed source only, --force, and a failing model among good ones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import model_converter
from conversion.batch import NO_WORKER, BatchJob, BatchRow, batch_table, run_batch
from errors import ConversionError
from tests.subprocesses import run_cli, run_keras_script

N_MODELS = 8
BUILD = f"""
import pickle
from pathlib import Path
import keras, numpy as np

def neuron_tcn(depth, width, kernel, activation, seed):
    inp = keras.Input((40, 12), name="input")
    x = inp
    for k in range(1, depth + 1):
        x = keras.layers.Conv1D(width, kernel, padding="causal", activation=activation, name=f"layer_{{k}}")(x)
        x = keras.layers.BatchNormalization(name=f"layer_{{k}}_BN")(x)
    model = keras.Model(inp, [keras.layers.Conv1D(1, 1, activation="sigmoid", name="spikes")(x),
                              keras.layers.Conv1D(1, 1, name="somatic")(x)])
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # BN: gamma, beta, moving mean from a normal; moving variance positive
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if i < 3 else
                           rng.uniform(0.5, 2.0, w.shape).astype("float32")
                           for i, w in enumerate(layer.get_weights())])
    return model

activations = ["relu", "tanh", "elu", "sigmoid"]
configs = [(1 + i % 3, 4 + 2 * (i % 4), 3 + i % 3, activations[i % 4]) for i in range({N_MODELS})]
Path("models").mkdir()
Path("retrained").mkdir()
for i, (depth, width, kernel, activation) in enumerate(configs):
    neuron_tcn(depth, width, kernel, activation, seed=i).save(f"models/tcn_{{i}}.h5")
    if i % 2 == 0:  # a training pickle beside half of them
        with open(f"models/tcn_{{i}}.pickle", "wb") as f:
            pickle.dump({{"architecture_dict": {{"input_window_size": 40, "network_depth": depth}}}}, f, protocol=2)
neuron_tcn(*configs[3], seed=99).save("retrained/tcn_3.h5")  # the same architecture trained again
"""


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory) -> Path:
    """8 small neuron TCNs (half with a training pickle) and a retrained copy of one of them."""
    folder = tmp_path_factory.mktemp("batch_keras_models")
    run_keras_script(BUILD, folder)
    return folder


def parse_table(stdout: str) -> dict[str, dict[str, str]]:
    """The batch table's rows by model file name."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "status"])
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        name, status, stored, max_diff, export_error, seconds, worker = line.split()
        rows[name] = {
            "status": status,
            "stored": stored,
            "max_diff": max_diff,
            "export_error": export_error,
            "seconds": seconds,
            "worker": worker,
        }
    return rows


def convert_folder(folder: Path, *options: str):
    result = run_cli(["model_converter.py", str(folder), *options])
    return result, parse_table(result.stdout)


@pytest.fixture(scope="module")
def first_run(keras_models, tmp_path_factory):
    """The folder after a first batch run with two worker processes, and that run's output."""
    folder = tmp_path_factory.mktemp("batch_first_run") / "models"
    shutil.copytree(keras_models / "models", folder)
    result, rows = convert_folder(folder, "--jobs", "2")
    return folder, result, rows


def copy_of(first_run, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(first_run[0], folder)
    return folder


def test_first_run_converts_every_model_in_parallel(first_run):
    folder, result, rows = first_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(rows) == [f"tcn_{i}.h5" for i in range(N_MODELS)]
    assert {row["status"] for row in rows.values()} == {"converted"}
    assert len({row["worker"] for row in rows.values()}) == 2  # two worker processes shared the models
    assert f"{N_MODELS} models: {N_MODELS} converted, 0 cached, 0 failed (2 worker processes)" in result.stdout
    assert f"{N_MODELS}/{N_MODELS}" in result.stderr  # the progress bar
    for i in range(N_MODELS):
        payload = torch.load(folder / f"tcn_{i}_converted.pth", weights_only=True)
        assert (payload["metadata"]["architecture_dict"] is not None) == (i % 2 == 0)  # its pickle was passed
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporaries or lock files left


def test_second_run_converts_nothing(first_run, tmp_path):
    folder = copy_of(first_run, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.glob("*_converted.pth")}
    result, rows = convert_folder(folder)
    assert result.returncode == 0, result.stderr
    assert {row["status"] for row in rows.values()} == {"cached"} and len(rows) == N_MODELS
    assert {p.name: p.read_bytes() for p in folder.glob("*_converted.pth")} == before


def test_changed_source_is_the_only_one_converted_again(first_run, keras_models, tmp_path):
    folder = copy_of(first_run, tmp_path)
    old = torch.load(folder / "tcn_3_converted.pth", weights_only=True)
    shutil.copy(keras_models / "retrained" / "tcn_3.h5", folder / "tcn_3.h5")
    rows = model_converter.batch_convert(folder)
    assert {Path(row.model).name: row.status for row in rows if row.status != "cached"} == {"tcn_3.h5": "converted"}
    new = torch.load(folder / "tcn_3_converted.pth", weights_only=True)
    assert new["metadata"]["source_sha256"] != old["metadata"]["source_sha256"]
    assert not torch.equal(new["state_dict"]["layers.spikes.weight"], old["state_dict"]["layers.spikes.weight"])


def test_force_converts_every_model_again(first_run, tmp_path):
    folder = copy_of(first_run, tmp_path)
    rows = model_converter.batch_convert(folder, force=True, jobs=2)
    assert [row.status for row in rows] == ["converted"] * N_MODELS


def test_failing_model_does_not_stop_the_others(keras_models, keras_files, tmp_path):
    """Also: --output-dir, and --verify filling the table's max diff column."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("tcn_0.h5", "tcn_1.h5"):
        shutil.copy(keras_models / "models" / name, folder / name)
    shutil.copy(keras_files / "unknown_layers.h5", folder / "broken.h5")
    out = tmp_path / "converted"
    result, rows = convert_folder(folder, "--output-dir", str(out), "--verify", "--jobs", "1")
    assert result.returncode == 8
    assert {name: row["status"] for name, row in rows.items()} == {
        "broken.h5": "failed",
        "tcn_0.h5": "converted",
        "tcn_1.h5": "converted",
    }
    assert float(rows["tcn_0.h5"]["max_diff"]) <= 1e-5 and float(rows["tcn_1.h5"]["max_diff"]) <= 1e-5
    failure = next(line for line in result.stdout.splitlines() if line.startswith("failed: "))
    assert "broken.h5" in failure and "layer 'triple' (Lambda): unknown layer class" in failure
    assert sorted(p.name for p in out.glob("*.pth")) == ["tcn_0_converted.pth", "tcn_1_converted.pth"]
    assert not list(folder.glob("*.pth"))  # --output-dir: nothing written beside the models


def test_folder_takes_no_params_or_output_path(keras_models, capsys):
    with pytest.raises(SystemExit) as exit_info:
        model_converter.main([str(keras_models / "models"), "x.pickle"])
    assert exit_info.value.code == 2 and "a folder takes no PARAMS.pickle" in capsys.readouterr().err


def report_torch_threads(source: Path, params: Path | None, output: Path):
    """A worker's convert function that fails with the number of threads torch would use there."""
    raise ConversionError(f"{source}: threads={torch.get_num_threads()}")


def test_workers_share_the_cores_between_their_torch_threads(tmp_path):
    jobs = [BatchJob(tmp_path / f"m{i}.h5", None, tmp_path / f"m{i}.pth") for i in range(2)]
    rows = run_batch(jobs, report_torch_threads, n_jobs=2)
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert [row.error for row in rows] == [f"{job.source}: threads={expected}" for job in jobs]


def test_rows_of_a_dead_worker_do_not_count_as_a_worker_process():
    rows = [
        BatchRow(
            model="a.h5",
            status="converted",
            output="a.pth",
            stored="float32",
            max_abs_diff=None,
            seconds=1.0,
            worker_pid=4242,
        ),
        BatchRow(
            model="b.h5",
            status="failed",
            output=None,
            stored=None,
            max_abs_diff=None,
            seconds=0.0,
            worker_pid=NO_WORKER,
            error="b.h5: the worker process died.",
        ),
    ]
    table = batch_table(rows)
    assert "2 models: 1 converted, 0 cached, 1 failed (1 worker process)" in table, table

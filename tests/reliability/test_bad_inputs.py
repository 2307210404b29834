"""Bad inputs fed to the real command-line programs: exit ≠ 0, one `error:` line naming the file and the problem,
nothing existing changed (bytes and modification times) and no new or temporary file left behind.

Refusal messages of each broken `.h5` are checked in detail in tests/conversion/test_refusals.py; here every
kind of bad input is run against a folder that already holds a good conversion, which must survive untouched.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np
import pytest

from errors import (
    ConfigError,
    ConversionError,
    ModelFileError,
    OptimizationError,
    OutputError,
    PickleFileError,
    SelectionError,
)
from model_converter import load_converted_model
from pipeline.config import load_config
from pipeline.lifecycle import rank_candidates
from safe_pickle import load_pickle
from tests.pipeline.model_folders import params_pickle
from tests.reliability.conftest import QUICK_RUN, assert_refused, run_main, snapshot
from tests.subprocesses import REPO, run_cli


class MarkerPayload:
    """Unpickling this runs a shell command that creates `marker`: what a malicious pickle does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_pickle(path: Path, marker: Path) -> None:
    params = params_pickle([0.1])
    params["training_history_dict"]["val_spikes_loss"] = MarkerPayload(marker)
    path.write_bytes(pickle.dumps(params, protocol=2))


class Python2StylePickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 `str` (BINSTRING opcodes), as Python 2.7's cPickle did."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[str] = save_python2_str
    dispatch[bytes] = save_python2_str


def python2_pickle(obj) -> bytes:
    """A protocol-2 pickle laid out like a Python 2.7 training script's: byte-string payloads of numpy arrays
    and scalars, and the module names numpy had then."""
    buffer = io.BytesIO()
    Python2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


# ---- model_converter.py: broken .h5 files -------------------------------------------------------------------


def _truncate(path: Path, keras_files: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random(path: Path, keras_files: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(8192))


def _empty(path: Path, keras_files: Path) -> None:
    path.write_bytes(b"")


def _no_model(path: Path, keras_files: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f["recordings"] = np.zeros((4, 3))


def _unknown_layer(path: Path, keras_files: Path) -> None:
    shutil.copy(keras_files / "unknown_layers.h5", path)


def _missing_weight(path: Path, keras_files: Path) -> None:
    with h5py.File(path, "r+") as f:
        group = f["model_weights/layer_1_BN"]
        group.attrs["weight_names"] = [n for n in group.attrs["weight_names"] if "moving_mean" not in str(n)]
        del group["layer_1_BN/moving_mean"]


def _extra_weight(path: Path, keras_files: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["model_weights/somatic/somatic/spare"] = np.ones(2, dtype=np.float32)


def _misshaped_weight(path: Path, keras_files: Path) -> None:
    with h5py.File(path, "r+") as f:
        group = f["model_weights/layer_1/layer_1"]
        del group["bias"]
        group["bias"] = np.zeros(7, dtype=np.float32)  # 6 filters


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (_truncate, "cannot be read as a Keras HDF5 model file"),
        (_random, "cannot be read as a Keras HDF5 model file"),
        (_empty, "cannot be read as a Keras HDF5 model file"),
        (_no_model, "no 'model_config' attribute"),
        (_unknown_layer, "unknown layer class"),
        (_missing_weight, "moving_mean' is missing"),
        (_extra_weight, "unexpected extra weight"),
        (_misshaped_weight, "has shape (7,)"),
    ],
    ids=[
        "truncated",
        "random",
        "empty",
        "hdf5_without_model",
        "unknown_layer",
        "missing_weight",
        "extra_weight",
        "misshaped_weight",
    ],
)
def test_broken_h5_keeps_the_previous_conversion(tcn_folder, keras_files, damage, fragment):
    model = tcn_folder / "tcn.h5"
    damage(model, keras_files)
    before = snapshot(tcn_folder)
    result = run_cli(["model_converter.py", str(model)])
    assert_refused(result, ConversionError.exit_code, str(model), fragment)
    assert snapshot(tcn_folder) == before


# ---- pickles ------------------------------------------------------------------------------------------------


def test_malicious_params_pickle_does_not_run(tcn_folder, tmp_path):
    marker = tmp_path / "payload_ran"
    params = tcn_folder / "tcn.pickle"
    malicious_pickle(params, marker)
    before = snapshot(tcn_folder)
    result = run_cli(["model_converter.py", str(tcn_folder / "tcn.h5"), str(params), "--force"])
    assert_refused(
        result, PickleFileError.exit_code, str(params), "class 'posix.system' is not allowed", "--trust-pickles"
    )
    assert not marker.exists()
    assert snapshot(tcn_folder) == before


@pytest.mark.parametrize(
    "content, exit_code, fragment",
    [
        (pickle.dumps(params_pickle([0.1]), protocol=2)[:100], PickleFileError.exit_code, "cannot be read as a pickle"),
        (b"", PickleFileError.exit_code, "cannot be read as a pickle"),
        (pickle.dumps([1, 2, 3]), ConversionError.exit_code, "holds a list, expected a dict"),
    ],
    ids=["truncated", "empty", "not_a_dict"],
)
def test_unreadable_params_pickle(tcn_folder, content, exit_code, fragment):
    params = tcn_folder / "tcn.pickle"
    params.write_bytes(content)
    before = snapshot(tcn_folder)
    result = run_cli(["model_converter.py", str(tcn_folder / "tcn.h5"), str(params), "--force"])
    assert_refused(result, exit_code, str(params), fragment)
    assert snapshot(tcn_folder) == before


def test_trust_pickles_opts_out_of_the_restriction(tcn_folder):
    """A pickle holding a class outside plain data (here datetime.date) loads only with --trust-pickles."""
    params = tcn_folder / "tcn.pickle"
    content = params_pickle([0.1])
    content["data_dict"]["recorded_on"] = date(2019, 5, 1)
    params.write_bytes(pickle.dumps(content, protocol=2))
    refused = run_cli(["model_converter.py", str(tcn_folder / "tcn.h5"), str(params), "--force"])
    assert_refused(refused, PickleFileError.exit_code, "class 'datetime.date' is not allowed")
    trusted = run_cli(["model_converter.py", str(tcn_folder / "tcn.h5"), str(params), "--force", "--trust-pickles"])
    assert trusted.returncode == 0, trusted.stderr
    assert load_pickle(params, trust=True)["data_dict"]["recorded_on"] == date(2019, 5, 1)


def test_config_trust_pickles_opts_out_for_main(tmp_path):
    """conversion.trust_pickles makes main.py's selection accept a pickle it otherwise refuses."""
    content = params_pickle([0.1])
    content["data_dict"]["recorded_on"] = date(2019, 5, 1)
    (tmp_path / "dated.pickle").write_bytes(pickle.dumps(content, protocol=2))
    (tmp_path / "dated.h5").write_bytes(b"selection only checks that the model file exists")
    (tmp_path / "config.yaml").write_text("models_dir: .\n")
    with pytest.raises(SelectionError, match="class 'datetime.date' is not allowed"):
        rank_candidates(load_config(tmp_path / "config.yaml"))
    best = rank_candidates(load_config(tmp_path / "config.yaml", ["conversion.trust_pickles=true"])).iloc[0]
    assert best["stem"] == "dated" and best["value"] == 0.1


def training_pickle_with_numpy() -> dict:
    content = params_pickle([0.4, 0.3])
    content["architecture_dict"]["input_window_size"] = 40
    content["training_history_dict"]["val_spikes_loss"] = [np.float32(0.4), np.float64(0.3)]
    content["data_dict"]["segment_weights"] = np.arange(12, dtype=np.float32).reshape(3, 4)
    return content


@pytest.mark.parametrize(
    "writer, marks",
    [
        (python2_pickle, b"cnumpy.core.multiarray\n_reconstruct"),  # byte strings
        (lambda content: pickle.dumps(content, protocol=2), b"c_codecs\nencode"),  # bytes via _codecs.encode
    ],
    ids=["python2", "python3"],
)
def test_protocol2_training_pickle_with_numpy_arrays_loads(tmp_path, writer, marks):
    """Both Python 2.7's layout and Python 3's protocol 2 pass the restriction."""
    content = training_pickle_with_numpy()
    path = tmp_path / "params.pickle"
    path.write_bytes(writer(content))
    assert marks in path.read_bytes()
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded["data_dict"]["segment_weights"], content["data_dict"]["segment_weights"])
    assert loaded["training_history_dict"]["val_spikes_loss"] == content["training_history_dict"]["val_spikes_loss"]


def test_converter_reads_a_python2_training_pickle(tcn_folder):
    params = tcn_folder / "tcn.pickle"
    params.write_bytes(python2_pickle(training_pickle_with_numpy()))
    result = run_cli(["model_converter.py", str(tcn_folder / "tcn.h5"), str(params), "--force"])
    assert result.returncode == 0, result.stderr
    info = load_pickle(tcn_folder / "tcn_converted_info.pickle")
    assert info["architecture_dict"]["input_window_size"] == 40


def test_main_never_selects_refused_or_historyless_pickles(tmp_path):
    """A models folder whose only candidates are a malicious pickle, one without training history and one with
    NaN-only history: no usable model (exit 7), each reason named, the payload never runs, no run folder."""
    models = tmp_path / "models"
    models.mkdir()
    marker = tmp_path / "payload_ran"
    malicious_pickle(models / "evil.pickle", marker)
    without_history = params_pickle([0.1])
    del without_history["training_history_dict"]
    (models / "nohistory.pickle").write_bytes(pickle.dumps(without_history, protocol=2))
    (models / "nanonly.pickle").write_bytes(pickle.dumps(params_pickle([math.nan, math.nan]), protocol=2))
    for stem in ("evil", "nohistory", "nanonly"):
        (models / f"{stem}.h5").write_bytes(b"selection only checks that the model file exists")
    (tmp_path / "config.yaml").write_text("models_dir: models\noutput_dir: runs\n")
    before = snapshot(models)

    result = run_main(tmp_path)
    assert_refused(
        result,
        SelectionError.exit_code,
        str(models),
        "no usable model",
        "evil: unreadable pickle",
        "class 'posix.system' is not allowed",
        "nohistory: no training_history_dict",
        "nanonly: 'val_spikes_loss' has no finite value",
    )
    assert not marker.exists()
    assert snapshot(models) == before and not (tmp_path / "runs").exists()


# ---- main.py: corrupt PyTorch files beside the model --------------------------------------------------------


def test_corrupt_pth_beside_the_model_is_not_used(workspace):
    models = workspace / "models"
    users_file = models / "alpha.pth"
    users_file.write_bytes(b"PK\x03\x04 not really a zip archive")
    converted = models / "alpha_converted.pth"
    converted.write_bytes(converted.read_bytes()[:2000])  # a conversion cut short
    for corrupt in (users_file, converted):
        with pytest.raises(ModelFileError, match="cannot be read as a PyTorch file") as raised:
            load_converted_model(corrupt)
        assert str(corrupt) in str(raised.value)
    users_state = snapshot(models)[users_file.name]

    result = run_main(workspace)
    assert result.returncode == 0, result.stderr
    assert f"not using {users_file}" in result.stderr and f"not using {converted}" in result.stderr
    (summary_path,) = (workspace / "runs").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["converted"] is True and summary["pytorch_model"] == str(converted)
    assert snapshot(models)[users_file.name] == users_state  # the user's file is reported, never replaced
    assert load_converted_model(converted).metadata["source_sha256"]


# ---- main.py: configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config_text, overrides, fragments",
    [
        (
            "optimization:\n  loop:\n    max_iters: 5\n",
            [],
            ["unknown config key 'optimization.loop.max_iters'", "max_iterations"],
        ),
        ("seed: twelve\n", [], ["config key 'seed'", "valid integer"]),
        ("", ["optimization.evaluation.confidence=1.5"], ["optimization.evaluation.confidence", "less than 1"]),
        ("optimization: [unclosed\n", [], ["cannot be read as YAML"]),
    ],
    ids=["unknown_key", "wrong_type", "out_of_range", "not_yaml"],
)
def test_bad_config_stops_before_any_work(workspace, config_text, overrides, fragments):
    config = workspace / "config.yaml"
    config.write_text("models_dir: models\noutput_dir: runs\n" + config_text)
    before = snapshot(workspace)
    result = run_main(workspace, *overrides)
    assert_refused(result, ConfigError.exit_code, *fragments)
    if not overrides:
        assert str(config) in result.stderr
    assert snapshot(workspace) == before and not (workspace / "runs").exists()


# ---- main.py: initial-rates file ----------------------------------------------------------------------------


def _rates(value: float = 0.01) -> np.ndarray:
    return np.full((20, 60), value)  # (segments, time) of the test models: 10 + 10 segments, 60 ms


@pytest.mark.parametrize(
    "rates, fragment",
    [
        (_rates().T, "looks transposed"),
        (np.where(np.eye(20, 60, 5) > 0, np.nan, _rates()), "NaN or Inf values, first at segment 0, time 5"),
        (_rates(-0.01), "must lie in [0, constraints.max_rate"),
    ],
    ids=["wrong_shape", "nan", "negative"],
)
def test_bad_initial_rates_file(workspace, rates, fragment):
    path = workspace / "rates.npy"
    np.save(path, rates)
    before = snapshot(workspace / "models")
    result = run_main(workspace, f"optimization.initial_rates.path={path}")
    assert_refused(result, OptimizationError.exit_code, f"initial rates file {path}", fragment)
    assert snapshot(workspace / "models") == before
    (run_dir,) = (workspace / "runs").iterdir()  # the failed run's record: config, table, log, failure mark
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "config.yaml",
        "failed.txt",
        "results_table.csv",
        "run.log",
    ]
    assert fragment in (run_dir / "run.log").read_text() and fragment in (run_dir / "failed.txt").read_text()


# ---- unwritable and full output locations -------------------------------------------------------------------


def unwritable_folder(tmp_path: Path, how: str) -> Path:
    """A folder path nothing can be written into: below a regular file, or (not as root) without write mode."""
    if how == "below_a_file":
        (tmp_path / "a_file").write_text("a regular file, not a folder")
        return tmp_path / "a_file" / "outputs"
    if os.geteuid() == 0:
        pytest.skip("chmod does not stop root; the below_a_file case covers the same failure")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@pytest.mark.parametrize("how", ["below_a_file", "chmod"])
def test_unwritable_output_folder(workspace, tcn_folder, tmp_path, how):
    blocked = unwritable_folder(tmp_path, how)
    before = snapshot(tcn_folder)
    converted = run_cli(["model_converter.py", str(tcn_folder / "tcn.h5"), str(blocked / "out.pth")])
    assert_refused(converted, OutputError.exit_code, str(blocked / "out.pth"), "output folder must be writable")
    assert snapshot(tcn_folder) == before

    before = snapshot(workspace)
    result = run_main(workspace, f"output_dir={blocked}")
    assert_refused(result, OutputError.exit_code, str(blocked), "output_dir")  # checked before any work
    assert snapshot(workspace) == before
    assert not blocked.exists() or not any(blocked.iterdir())


def run_with_file_size_limit(args: list[str], limit_bytes: int) -> subprocess.CompletedProcess:
    """Run a CLI whose writes fail beyond `limit_bytes` per file (EFBIG), as on a full disk."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
        check=False,
    )


def test_full_disk_keeps_the_previous_conversion(tcn_folder):
    pth = tcn_folder / "tcn_converted.pth"
    before = snapshot(tcn_folder)
    result = run_with_file_size_limit(
        ["model_converter.py", str(tcn_folder / "tcn.h5"), "--force"], pth.stat().st_size // 2
    )
    assert_refused(result, OutputError.exit_code, str(pth), "File too large", "previous version is left unchanged")
    assert snapshot(tcn_folder) == before
    load_converted_model(pth)


def test_full_disk_during_a_run_stops_it_with_the_file_named(workspace):
    """The run's small files fit under the limit, its 25 kB optimization checkpoint does not."""
    before = snapshot(workspace / "models")
    result = run_with_file_size_limit(["main.py", "--config", str(workspace / "config.yaml"), *QUICK_RUN], 12_000)
    assert_refused(result, OutputError.exit_code, "checkpoint.pt: cannot be written", "File too large")
    assert snapshot(workspace / "models") == before
    (run_dir,) = (workspace / "runs").iterdir()
    assert not (run_dir / "summary.json").exists() and not (run_dir / "checkpoint.pt").exists()
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]

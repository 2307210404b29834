"""Reuse of current conversions (conversion.cache): the rule, the single-file CLI's cache and --force, a changed
source, and two processes converting the same model at the same time."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conversion.cache import current_conversion, lock_path_for
from conversion.config import ExportConfig
from conversion.keras_file import file_sha256
from model_converter import TCNModelConverter, convert_or_reuse
from tests.subprocesses import REPO, run_cli


@pytest.fixture
def model_copy(keras_files, tmp_path):
    shutil.copy(keras_files / "tcn.h5", tmp_path / "tcn.h5")
    return tmp_path / "tcn.h5"


def test_current_conversion_rule(model_copy, tmp_path):
    pth = tmp_path / "tcn.pth"
    TCNModelConverter(model_copy).convert(pth)
    sha = file_sha256(model_copy)
    assert current_conversion(pth, sha)[0] is not None
    assert "stale or foreign" in current_conversion(pth, "0" * 64)[1]
    assert (
        "is stored as 'float32', and 'float16' was asked for"
        in current_conversion(pth, sha, ExportConfig(dtype="float16"))[1]
    )
    assert "'int8' was asked for" in current_conversion(pth, sha, ExportConfig(quantize="int8"))[1]
    assert "no passed verification" in current_conversion(pth, sha, verified=True)[1]
    payload = torch.load(pth, weights_only=True)
    payload["metadata"]["verification"] = {
        "passed": True,
        "outputs": {"spikes": {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "max_abs_value": 1.0, "passed": True}},
    }
    torch.save(payload, pth)
    assert current_conversion(pth, sha, verified=True)[0] is not None
    pth.write_bytes(pth.read_bytes()[:100])  # truncated
    assert "cannot be read as a PyTorch file" in current_conversion(pth, sha)[1]


def test_cli_reuses_a_current_conversion_and_force_converts_again(model_copy):
    pth = model_copy.with_name("tcn_converted.pth")
    TCNModelConverter(model_copy).convert()
    written = pth.read_bytes()
    second = run_cli(["model_converter.py", str(model_copy)])
    assert second.returncode == 0 and f"up to date: {model_copy} -> {pth} (cached)" in second.stdout
    assert pth.read_bytes() == written
    forced = run_cli(["model_converter.py", str(model_copy), "--force"])
    assert forced.returncode == 0 and forced.stdout.startswith("converted "), forced.stderr


def test_changed_source_is_converted_again(model_copy):
    first = convert_or_reuse(model_copy)
    assert not first.cached and convert_or_reuse(model_copy).cached
    with h5py.File(model_copy, "r+") as f:  # other weights in the same file, as after more training
        stored = []
        f["model_weights/spikes"].visit(stored.append)
        bias = f["model_weights/spikes"][next(name for name in stored if name.endswith("bias"))]
        bias[...] = bias[...] + 1.0
    again = convert_or_reuse(model_copy)
    assert not again.cached
    assert again.model.metadata["source_sha256"] == file_sha256(model_copy)
    np.testing.assert_allclose(
        again.model.layers["spikes"].bias.detach().numpy(),
        first.model.layers["spikes"].bias.detach().numpy() + 1.0,
        rtol=0,
        atol=1e-6,
    )


def test_two_processes_converting_the_same_model_leave_one_valid_file(model_copy):
    """Both jobs are started while the model's lock is held here, so that they really run at the same time:
    each reports that it waits, then the lock is released and they race for it."""
    folder = model_copy.parent
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with open(lock_path_for(folder / "tcn_converted.pth"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        jobs = [
            subprocess.Popen(
                [sys.executable, "model_converter.py", str(model_copy)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for job in jobs:
            assert any("waiting for another job" in line for line in iter(job.stderr.readline, ""))
        fcntl.flock(lock, fcntl.LOCK_UN)
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    # exactly one converts; the other, having waited for it, finds its result current
    assert sorted(out.split()[0] for out, _ in outputs) == ["converted", "up"], outputs
    assert sorted(p.name for p in folder.iterdir()) == [  # no temporaries, and the lock file removed
        "tcn.h5",
        "tcn_converted.pth",
        "tcn_converted_info.pickle",
    ]
    payload = torch.load(folder / "tcn_converted.pth", weights_only=True)
    assert payload["metadata"]["source_sha256"] == file_sha256(model_copy)
    assert current_conversion(folder / "tcn_converted.pth", file_sha256(model_copy))[0] is not None

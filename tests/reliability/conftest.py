"""Fixtures of the reliability suite: a converted model to protect, a main.py workspace, file-state snapshots.

Every bad input is fed to the real command-line programs; afterwards the folder must hold exactly what it held
before, byte for byte and with the same modification times.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.pipeline.model_folders import build_converted_models_folder, workspace_with
from tests.subprocesses import run_cli

# main.py settings that keep a run to a few seconds on a CPU.
QUICK_RUN = [
    "device=cpu",
    "conversion.verify=false",
    "ground_truth.enabled=false",
    "optimization.loop.max_iterations=6",
    "optimization.loop.log_every=3",
    "optimization.loop.checkpoint_every=null",
    "optimization.sampler.samples_per_pattern=4",
    "optimization.evaluation.trials_per_pattern=40",
    "optimization.report.plots=false",
]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime in ns) of every file below `folder`."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_refused(result, exit_code: int, *fragments: str) -> str:
    """Exit status `exit_code` and a one-paragraph `error: ...` line containing every fragment."""
    assert result.returncode == exit_code, (result.returncode, result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in: {errors[0]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


@pytest.fixture
def model(keras_files, tmp_path) -> Path:
    """A private copy of the small real Keras 3 neuron TCN (tcn.h5) to attack."""
    shutil.copy(keras_files / "tcn.h5", tmp_path / "tcn.h5")
    return tmp_path / "tcn.h5"


@pytest.fixture(scope="session")
def converted_tcn(keras_files, tmp_path_factory) -> Path:
    """A folder with tcn.h5 and a genuine earlier conversion of it (tcn_converted.pth + info) to protect."""
    folder = tmp_path_factory.mktemp("converted_tcn")
    shutil.copy(keras_files / "tcn.h5", folder / "tcn.h5")
    result = run_cli(["model_converter.py", str(folder / "tcn.h5")])
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def tcn_folder(converted_tcn, tmp_path) -> Path:
    """A private copy of `converted_tcn`, with the copies' modification times preserved."""
    folder = tmp_path / "work"
    shutil.copytree(converted_tcn, folder)
    return folder


@pytest.fixture(scope="session")
def converted_models(tmp_path_factory) -> Path:
    """A models folder with one real neuron TCN ('alpha': .h5, .pickle) already converted by main.py's rules."""
    return build_converted_models_folder(tmp_path_factory.mktemp("reliability_models"), {"alpha": [0.5, 0.2]})


@pytest.fixture
def workspace(converted_models, tmp_path) -> Path:
    """tmp_path with `models/` (a copy of converted_models) and a config.yaml that points at it."""
    return workspace_with(converted_models, tmp_path)


def run_main(workspace: Path, *overrides: str, **kwargs):
    return run_cli(["main.py", "--config", str(workspace / "config.yaml"), *QUICK_RUN, *overrides], **kwargs)

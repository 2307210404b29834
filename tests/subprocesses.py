"""Run Keras model builders and the command-line programs in fresh Python processes.

Tests build real Keras models, but the process running the tests must stay free of TensorFlow (conversion
must not need it), and Keras 2 (tf_keras) and Keras 3 are best kept apart; so builders run as subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def project_version() -> str:
    """The version written in pyproject.toml, read here on its own (not through the code under test)."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]["version"]


def run_keras_script(code: str, cwd: Path, timeout: int = 600) -> None:
    """Run `code` (a Python script) with the repository on sys.path; fail the test with its stderr."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"Keras builder failed (exit {result.returncode}):\n{result.stderr[-4000:]}")


def run_cli(
    args: list[str], cwd: Path | None = None, env_extra: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run one of the repository's command-line programs, capturing its output."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout
    )

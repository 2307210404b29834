"""One version number: pyproject.toml's, printed by both entry points."""

from __future__ import annotations

import re

import pytest

from tests.subprocesses import REPO, project_version, run_cli


def test_the_version_is_a_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", project_version())


@pytest.mark.parametrize("program", ["main.py", "model_converter.py"])
def test_entry_points_print_the_version(program, tmp_path):
    result = run_cli([str(REPO / program), "--version"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"neuron-tcn {project_version()}"
    assert not list(tmp_path.iterdir()), "--version writes nothing"

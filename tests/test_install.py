"""The project as an installed package: importable and runnable from any folder, with no PYTHONPATH and no
checkout on sys.path (what `pip install -e .`, run by `make venv`, provides, and what Ray's workers rely on)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from errors import ConfigError
from pipeline import sweep_backends
from tests.subprocesses import REPO

DISTRIBUTION = "neuron-tcn"


def run_elsewhere(command: list[str], folder: Path) -> subprocess.CompletedProcess:
    """Run `command` in `folder` without PYTHONPATH; fail the test with its stderr when it fails."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def test_the_project_is_installed_from_this_checkout(tmp_path):
    """As an interpreter started elsewhere sees it (in the checkout, setuptools' egg-info folder would answer)."""
    code = (
        "import importlib.metadata, json\n"
        f"distribution = importlib.metadata.distribution({DISTRIBUTION!r})\n"
        "print(json.dumps({'origin': json.loads(distribution.read_text('direct_url.json')),\n"
        "                  'scripts': {e.name: e.value for e in distribution.entry_points\n"
        "                              if e.group == 'console_scripts'}}))\n"
    )
    result = run_elsewhere([sys.executable, "-c", code], tmp_path)
    installed = json.loads(result.stdout)
    assert installed["origin"]["url"] == REPO.as_uri() and installed["origin"]["dir_info"].get("editable") is True
    assert installed["scripts"] == {"neuron-tcn-convert": "model_converter:main", "neuron-tcn-run": "main:main"}


def test_the_public_names_import_from_another_folder(tmp_path):
    code = (
        "import main, model_converter\n"
        "from model_converter import TCNModelConverter, batch_convert, load_converted_model\n"
        "print(model_converter.__file__)\n"
        "print(main.__file__)\n"
    )
    result = run_elsewhere([sys.executable, "-c", code], tmp_path)
    files = [Path(line) for line in result.stdout.splitlines()]
    assert files == [REPO / "model_converter.py", REPO / "main.py"]


@pytest.mark.parametrize("command, says", [("neuron-tcn-convert", "model_converter.py"), ("neuron-tcn-run", "main.py")])
def test_the_console_commands_run_from_another_folder(tmp_path, command, says):
    executable = Path(sys.executable).parent / command
    result = run_elsewhere([str(executable), "--help"], tmp_path)
    assert result.stdout.startswith("usage:") and says in result.stdout


def test_the_converter_command_converts_from_another_folder(tmp_path):
    """A real conversion through the installed command, with relative paths from an unrelated folder."""
    shipped = sorted((REPO / "demo_models").glob("*.h5"))[0]
    (tmp_path / "model.h5").write_bytes(shipped.read_bytes())
    (tmp_path / "model.pickle").write_bytes(shipped.with_suffix(".pickle").read_bytes())
    run_elsewhere([str(Path(sys.executable).parent / "neuron-tcn-convert"), "model.h5"], tmp_path)
    assert (tmp_path / "model_converted.pth").is_file() and (tmp_path / "model_converted_info.pickle").is_file()


@pytest.fixture
def ray_present(monkeypatch):
    """check_backend as if ray were installed (the test environment need not have it)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "ray" else real(name, *a))


def test_ray_without_the_ray_package_is_a_config_error_before_any_folder(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the ray package"):
        sweep_backends.check_backend("ray")
    sweep_backends.check_backend("local")  # the others need nothing


def test_ray_refuses_clearly_without_the_installed_project(monkeypatch, ray_present):
    monkeypatch.setattr(sweep_backends, "DISTRIBUTION", "neuron-tcn-not-installed")
    with pytest.raises(ConfigError, match="pip install --no-deps -e"):
        sweep_backends.check_backend("ray")


def test_ray_refuses_an_install_of_another_checkout(monkeypatch, ray_present, tmp_path):
    installed = [
        sweep_backends._installed_location(d)
        for d in importlib.metadata.distributions(name=sweep_backends.DISTRIBUTION)
    ]
    checkout = next(path for path in installed if path is not None)  # make venv installs with -e
    assert (checkout / "pyproject.toml").is_file()
    monkeypatch.setattr(sweep_backends, "PROJECT_ROOT", checkout)
    sweep_backends.check_backend("ray")
    monkeypatch.setattr(sweep_backends, "PROJECT_ROOT", tmp_path)
    with pytest.raises(ConfigError, match=f"is {checkout}, not this checkout {tmp_path}"):
        sweep_backends.check_backend("ray")

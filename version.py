"""The project's one version number. It is written once, in pyproject.toml; the checkout is the installed tool
(`pip install -e .`), so the file is read from beside this module, and package metadata is the fallback."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "neuron-tcn"


def _read_version() -> str:
    pyproject = Path(__file__).resolve().parent / "pyproject.toml"
    if pyproject.is_file():
        with pyproject.open("rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    return metadata.version(DISTRIBUTION)


VERSION = _read_version()

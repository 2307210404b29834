"""config.yaml documents every setting, and the loader validates and overrides as promised."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from errors import ConfigError
from pipeline.config import AppConfig, load_config
from tests.subprocesses import REPO


def dotted_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= dotted_fields(annotation, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def dotted_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in data.items():
        if isinstance(value, dict):
            keys |= dotted_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_config_yaml_lists_every_setting_with_a_comment():
    text = (REPO / "config.yaml").read_text()
    assert dotted_keys(yaml.safe_load(text)) == dotted_fields(AppConfig)
    for line in text.splitlines():
        if re.match(r"^\s*\w+:\s*\S", line):  # a key with a value
            assert "#" in line, f"setting without a comment: {line}"


def test_shipped_config_is_valid_and_points_at_the_demo_models():
    config = load_config(REPO / "config.yaml")
    assert config.models_dir == (REPO / "demo_models").resolve()


def test_overrides_are_typed_and_nested(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n")
    config = load_config(path, ["optimization.loop.max_iterations=7", "device=cpu",
                                "optimization.stimulus.segments=[1, 2]", "selection.results_table=t.csv"])
    assert config.optimization.loop.max_iterations == 7 and config.device == "cpu"
    assert config.optimization.stimulus.segments == [1, 2]
    assert config.selection.results_table == (tmp_path / "t.csv").resolve()


@pytest.mark.parametrize("override, fragments", [
    ("optimization.sampler.kindd=poisson", ["optimization.sampler.kindd", "samples_per_pattern"]),
    ("device=gpu", ["device", "cuda"]),
    ("optimization.loop.max_iterations=-1", ["optimization.loop.max_iterations", "greater than or equal"]),
    ("optimization.constraints.method=clip", ["optimization.constraints.method", "'projection'", "'sigmoid'"]),
    ("seed", ["KEY=VALUE"]),
])
def test_bad_values_name_the_key(tmp_path: Path, override, fragments):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, [override])
    for fragment in fragments:
        assert fragment in str(error.value)

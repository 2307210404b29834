"""config.yaml documents every setting, and the loader validates and overrides as promised."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from errors import ConfigError
from pipeline.config import AppConfig, get_dotted, load_config, set_dotted
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


# Settings whose value is a mapping of the user's own keys (not sections of the schema).
MAPPING_SETTINGS = {"demo.settings", "sweep.overrides"}


def dotted_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in data.items():
        if isinstance(value, dict) and prefix + name not in MAPPING_SETTINGS:
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
    config = load_config(
        path,
        [
            "optimization.loop.max_iterations=7",
            "device=cpu",
            "optimization.stimulus.segments=[1, 2]",
            "selection.results_table=t.csv",
        ],
    )
    assert config.optimization.loop.max_iterations == 7 and config.device == "cpu"
    assert config.optimization.stimulus.segments == [1, 2]
    assert config.selection.results_table == (tmp_path / "t.csv").resolve()


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("optimization.sampler.kindd=poisson", ["optimization.sampler.kindd", "samples_per_pattern"]),
        ("device=gpu", ["device", "cuda"]),
        ("optimization.loop.max_iterations=-1", ["optimization.loop.max_iterations", "greater than or equal"]),
        ("optimization.constraints.method=clip", ["optimization.constraints.method", "'projection'", "'sigmoid'"]),
        ("seed", ["KEY=VALUE"]),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, override, fragments):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, [override])
    for fragment in fragments:
        assert fragment in str(error.value)


# ---- demo settings: only for the shipped demo models ---------------------------------------------------------

DEMO_KEYS = yaml.safe_load((REPO / "config.yaml").read_text())["demo"]["settings"]


def value_at(config: AppConfig, key: str):
    value = config.model_dump(mode="json")
    for part in key.split("."):
        value = value[part]
    return value


def test_the_shipped_config_applies_the_demo_settings_to_the_demo_models_only(tmp_path):
    shipped = load_config(REPO / "config.yaml")
    assert sorted(shipped.demo.applied) == sorted(DEMO_KEYS)
    defaults = AppConfig().model_dump(mode="json")
    for key, demo_value in DEMO_KEYS.items():
        assert value_at(shipped, key) == demo_value
        default = defaults
        for part in key.split("."):
            default = default[part]
        assert default != demo_value, f"{key}: the demo value is the built-in default"
        elsewhere = load_config(REPO / "config.yaml", [f"models_dir={tmp_path}"])
        assert value_at(elsewhere, key) == default and not elsewhere.demo.applied
        asked = load_config(REPO / "config.yaml", [f"models_dir={tmp_path}", "demo.apply=always"])
        assert value_at(asked, key) == demo_value
        never = load_config(REPO / "config.yaml", ["demo.apply=never"])
        assert value_at(never, key) == default and not never.demo.applied


@pytest.mark.parametrize("how", ["command_line", "changed_in_file", "default_in_file", "absent"])
def test_a_users_value_beats_the_demo_value(tmp_path, how):
    """Every demo key, set each way by the user: only a value the user chose (command line, or a changed value
    in the file) beats the demo's; the built-in default restated in the file does not."""
    for key, demo_value in DEMO_KEYS.items():
        data = yaml.safe_load((REPO / "config.yaml").read_text())
        data["models_dir"] = str(REPO / "demo_models")
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            node = node[part]
        chosen = [0.003, 0.009] if isinstance(demo_value, list) else (7 if isinstance(demo_value, int) else 0.55)
        if how == "absent":
            node.pop(parts[-1])
        elif how == "changed_in_file":
            node[parts[-1]] = chosen
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(data))
        overrides = [f"{key}={json.dumps(chosen)}"] if how == "command_line" else []
        config = load_config(path, overrides)
        expected = chosen if how in ("command_line", "changed_in_file") else demo_value
        assert value_at(config, key) == expected, (key, how)
        assert (key in config.demo.applied) == (expected == demo_value)


def nested(key: str, value) -> dict:
    """{'a': {'b': value}} from 'a.b'."""
    data: dict = {}
    set_dotted(data, key, value, "test")
    return data


DEFAULTS = AppConfig().model_dump(mode="json")


def default_at(key: str):
    return get_dotted(DEFAULTS, key)


@pytest.mark.parametrize("key", sorted(dotted_fields(AppConfig)))
def test_any_key_alone_keeps_every_other_default(key):
    """A config that sets one key (to its default) is the default config: every key is optional, also inside
    sections whose defaults their parent builds (a synapse's kinetics)."""
    assert AppConfig.model_validate(nested(key, default_at(key))).model_dump(mode="json") == DEFAULTS


def test_a_changed_key_of_a_parent_built_subsection_keeps_its_siblings():
    config = AppConfig.model_validate(nested("ground_truth.neuron.nmda.weight_us", 0.002))
    default = AppConfig().ground_truth.neuron.nmda
    assert config.ground_truth.neuron.nmda.weight_us == 0.002
    assert config.ground_truth.neuron.nmda.tau_decay_ms == default.tau_decay_ms == 70.0


def field_at(key: str):
    model: type[BaseModel] = AppConfig
    *parents, last = key.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[last]


NON_BOOLEAN_KEYS = sorted(
    key
    for key in dotted_fields(AppConfig)
    if isinstance(default_at(key), (int, float))
    and not isinstance(default_at(key), bool)
    or isinstance(default_at(key), list)
    and default_at(key)
    and isinstance(default_at(key)[0], (int, float))
)


@pytest.mark.parametrize("key", NON_BOOLEAN_KEYS)
def test_true_or_false_is_never_taken_as_a_number(key):
    """pydantic would read `seed: true` as 1; a key of numbers (or a list of them) refuses booleans, naming it."""
    from pipeline.config import validate_config

    value = default_at(key)
    flag = [True, *value[1:]] if isinstance(value, list) else True
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}'") + ".*true/false is not a number"):
        validate_config(nested(key, flag), "test.yaml")


BOOLEAN_KEYS = sorted(key for key in dotted_fields(AppConfig) if isinstance(default_at(key), bool))


@pytest.mark.parametrize("key", BOOLEAN_KEYS)
def test_boolean_keys_take_true_and_false(key):
    for flag in (True, False):
        assert value_at(AppConfig.model_validate(nested(key, flag)), key) is flag


@pytest.mark.parametrize(
    "key, value",
    [
        ("optimization.stimulus.segments", [True, 2]),
        ("optimization.stimulus.candidates", [3, False]),
        ("sweep.seeds", [True]),
        ("sweep.stimulus_sets", [[1, True]]),
        ("sweep.models", [True]),
        ("optimization.ensemble", [True]),
        ("optimization.initial_rates.excitatory_range", [False, 0.01]),
    ],
)
def test_true_or_false_is_refused_inside_lists_of_numbers(key, value):
    from pipeline.config import validate_config

    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}'")):
        validate_config(nested(key, value), "test.yaml")

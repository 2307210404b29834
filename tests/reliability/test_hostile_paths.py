"""Hostile configs, paths, locks and layer settings: each class generated here, each refused with its exit code and
one `error:` paragraph naming the file and the problem, quickly, with nothing written — or, where the input is
odd but legitimate, accepted.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from errors import (
    INTERRUPTED_EXIT,
    TERMINATED_EXIT,
    ConfigError,
    ConversionError,
    OutputError,
    SelectionError,
    Terminated,
    quiet_interrupts_while_importing,
)
from fileio import atomic_paths, open_lock_file
from limits import MAX_CONFIG_DEPTH, MAX_INPUT_LENGTH
from models.layers import Conv1d, Pool1d, TimePad
from pipeline.config import AppConfig, load_config, parse_yaml
from pipeline.run_folder import claim_run_folder
from tests.reliability import hostile
from tests.reliability.conftest import QUICK_RUN, snapshot
from tests.reliability.test_hostile import assert_clean_refusal, converter_refuses, main_refuses, with_ctrl_c
from tests.subprocesses import REPO

CONVERTER = "model_converter.py"


# ---- config.yaml ----------------------------------------------------------------------------------------------


def nested_yaml(depth: int, style: str) -> str:
    """`x:` holding `depth` levels of lists (flow `[[...]]` or block `- - ...`) or mappings (`{a: {a: ...}}`)."""
    if style == "flow_lists":
        return "x: " + "[" * depth + "]" * depth + "\n"
    if style == "flow_maps":
        return "x: " + "{a: " * depth + "1" + "}" * depth + "\n"
    return "x:\n" + "".join("  " * level + "-\n" for level in range(depth - 1)) + "  " * (depth - 1) + "- 1\n"


@pytest.mark.parametrize("style", ["flow_lists", "flow_maps", "block_lists"])
def test_config_nesting_is_refused_just_beyond_the_limit_and_read_within_it(style):
    limit = int(MAX_CONFIG_DEPTH.value)
    within = parse_yaml(nested_yaml(limit - 1, style), "config.yaml")  # `x:` itself is the first level
    assert within["x"] is not None
    with pytest.raises(ConfigError, match=f"config.yaml: nests more than {limit} levels deep"):
        parse_yaml(nested_yaml(limit, style), "config.yaml")


def test_a_config_nested_20000_deep_is_refused_at_once(workspace):
    """PyYAML's scanner slows down quadratically with flow nesting: the refusal must come before that."""
    (workspace / "config.yaml").write_text("models_dir: models\n" + nested_yaml(20_000, "flow_lists"))
    started = time.monotonic()
    with pytest.raises(ConfigError, match="nests more than"):
        load_config(workspace / "config.yaml")
    assert time.monotonic() - started < 2  # the unguarded parse takes ~40 s


@pytest.mark.parametrize(
    "text, line",
    [
        ("seed: 1\nseed: 2\n", 2),
        ("optimization:\n  loop:\n    max_iterations: 5\n    log_every: 1\n    max_iterations: 9\n", 5),
        ("device: cpu\nsweep: {seeds: [1], seeds: [2]}\n", 2),
    ],
)
def test_a_key_given_twice_in_one_section_is_refused(text, line):
    with pytest.raises(ConfigError, match=f"appears twice in one section \\(line {line}\\)"):
        parse_yaml(text, "config.yaml")


def test_the_same_key_in_different_sections_is_fine():
    assert parse_yaml("a: {seed: 1}\nb: {seed: 2}\n", "c") == {"a": {"seed": 1}, "b": {"seed": 2}}


def test_an_integer_too_long_for_python_is_a_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("seed: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match=f"{path}: cannot be read as YAML"):
        load_config(path)


def float_keys(schema: type = AppConfig, prefix: str = "") -> list[str]:
    """Every float setting of the config schema (bare floats and Optional[float]), found by walking it."""
    keys = []
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys += float_keys(annotation, f"{prefix}{name}.")
        elif annotation is float or float in getattr(annotation, "__args__", ()):
            keys.append(prefix + name)
    return keys


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_no_float_setting_accepts_nan_or_infinity(tmp_path, value):
    """A NaN tolerance or learning rate compares false forever; every float key of the schema is tried."""
    path = tmp_path / "config.yaml"
    path.write_text("models_dir: models\n")
    keys = float_keys()
    assert len(keys) > 10
    for key in keys:
        with pytest.raises(ConfigError, match=f"override '{key}={value}'"):
            load_config(path, [f"{key}={value}"])


def test_an_override_error_names_the_override_not_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("models_dir: models\nseed: 3\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, ["optimization.loop.max_iterations=abc", "seed=4"])
    assert str(raised.value).startswith("override 'optimization.loop.max_iterations=abc': config key")
    path.write_text("models_dir: models\nseed: -3\n")
    with pytest.raises(ConfigError, match=f"^{path}: config key 'seed'"):
        load_config(path, ["optimization.loop.max_iterations=7"])


def test_the_shipped_config_has_no_duplicate_keys_and_is_shallow():
    text = (REPO / "config.yaml").read_text()
    assert parse_yaml(text, "config.yaml") == yaml.safe_load(text)


# ---- locks and output folders -----------------------------------------------------------------------------------


def plant(path: Path, kind: str) -> Path:
    """Something that is not a regular file at `path`."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "link_to_nothing":
        path.symlink_to(path.with_name("elsewhere"))
    elif kind == "link_loop":
        path.symlink_to(path.name)
    return path


LOCK_PLANTS = ["fifo", "folder", "link_to_nothing", "link_loop"]


@pytest.mark.parametrize("kind", LOCK_PLANTS)
def test_a_conversion_lock_that_is_not_a_file_is_refused_without_hanging(model, kind):
    plant(model.with_name(".tcn_converted.pth.lock"), kind)
    before = snapshot(model.parent)
    result = hostile.run_limited([CONVERTER, str(model)], timeout=60)
    assert_clean_refusal(result, OutputError.exit_code, "cannot use the conversion lock", "not a regular file")
    assert snapshot(model.parent) == before
    assert not (model.parent / "elsewhere").exists()  # a link was not followed to create a file


@pytest.mark.parametrize("kind", LOCK_PLANTS)
def test_a_run_folder_whose_lock_is_not_a_file_is_not_claimed(tmp_path, kind):
    plant(tmp_path / ".running.lock", kind)
    assert claim_run_folder(tmp_path) is None  # returns at once: nothing opened that could block


def test_open_lock_file_makes_a_regular_file_and_refuses_the_rest(tmp_path):
    with open_lock_file(tmp_path / "a.lock") as handle:
        assert os.path.isfile(handle.name)
    for kind in LOCK_PLANTS:
        with pytest.raises(OSError, match="not a regular file"):
            open_lock_file(plant(tmp_path / f"{kind}.lock", kind))


@pytest.mark.parametrize("kind", ["file", "inside_a_file"])
def test_an_unusable_output_dir_is_refused_before_any_conversion(workspace, kind):
    models = workspace / "models"
    for path in models.glob("*converted*"):
        path.unlink()  # main.py would convert first if it did not check output_dir
    (workspace / "runs").write_text("not a folder")
    target = workspace / "runs" if kind == "file" else workspace / "runs" / "today"
    before = snapshot(workspace)
    result = hostile.run_limited(
        ["main.py", "--config", str(workspace / "config.yaml"), *QUICK_RUN, f"output_dir={target}"]
    )
    assert_clean_refusal(result, OutputError.exit_code, str(target), "output_dir", "a file, not a folder")
    assert snapshot(workspace) == before


def test_all_targets_or_none_when_one_of_them_is_a_folder(tmp_path):
    kept = tmp_path / "model.pth"
    kept.write_text("old")
    (tmp_path / "info.pickle").mkdir()
    with pytest.raises(OutputError, match="a folder has that name"):
        with atomic_paths(kept, tmp_path / "info.pickle") as (first, second):
            first.write_text("new")
            second.write_text("new")
    assert kept.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["info.pickle", "model.pth"]


# ---- paths that cannot be resolved -----------------------------------------------------------------------------


def test_a_link_loop_as_the_model_is_refused(tmp_path):
    loop = plant(tmp_path / "loop.h5", "link_loop")
    result = hostile.run_limited([CONVERTER, str(loop)])
    assert_clean_refusal(result, ConversionError.exit_code, str(loop), "Too many levels of symbolic links")


def test_a_results_table_row_with_an_unusable_path_is_an_unusable_row(workspace):
    table = workspace / "table.csv"
    (workspace / "models" / "loop").symlink_to("loop")
    rows = [("x" * 5000, 0.1), ("models/loop/alpha.h5", 0.2), ("/proc/self/mem/alpha.h5", 0.3)]
    table.write_text("model_path,metric\n" + "".join(f"{path},{value}\n" for path, value in rows))
    (workspace / "config.yaml").write_text(
        "models_dir: models\noutput_dir: runs\nselection: {results_table: table.csv}\n"
    )
    message = main_refuses(workspace, SelectionError.exit_code, "no usable model among 3 candidate(s)")
    assert message.count("the model path cannot be used") + message.count("no model file beside it") == 3
    assert "File name too long" in message


@pytest.mark.parametrize("kind", ["file", "device"])
def test_models_dir_that_is_not_a_folder_says_so(workspace, kind):
    target = "/dev/zero" if kind == "device" else str(workspace / "config.yaml")
    main_refuses(
        workspace,
        SelectionError.exit_code,
        f"{target}: models_dir names something that is not a folder",
        overrides=(f"models_dir={target}",),
    )


# ---- time extents and layer numbers from a file ------------------------------------------------------------------


def test_modules_refuse_time_extents_beyond_the_limit_and_take_those_within(monkeypatch):
    monkeypatch.setenv(MAX_INPUT_LENGTH.env, "1000")
    Conv1d(1, 1, kernel_size=10, dilation=111)  # spans 1000
    Pool1d("max", pool_size=1000, stride=1000)
    TimePad(600, 400)
    for build in (
        lambda: Conv1d(1, 1, kernel_size=10, dilation=112),
        lambda: Conv1d(1, 1, 3, stride=1001),
        lambda: Pool1d("max", 1001, 1),
        lambda: Pool1d("avg", 2, 1001),
        lambda: TimePad(-600, 401),
    ):
        with pytest.raises(ValueError, match="NEURON_TCN_MAX_INPUT_LENGTH"):
            build()


def conv_setting(key: str, value) -> callable:
    def change(config: dict) -> None:
        hostile.layer_entry(config, "layer_1")["config"][key] = value

    return change


@pytest.mark.parametrize(
    "key, value",
    [("dilation_rate", 20_000_000), ("dilation_rate", [10**9]), ("dilation_rate", 25_000), ("strides", 10**6)],
)
def test_a_convolution_spanning_millions_of_steps_is_refused_before_allocating(model, key, value):
    source = hostile.config_edit(f"{key}_{value}", conv_setting(key, value))(model, model.parent)
    converter_refuses(source, "layer", "time steps", "NEURON_TCN_MAX_INPUT_LENGTH")


def test_a_convolution_spanning_just_within_the_limit_converts(model):
    source = hostile.config_edit("dilation_24999", conv_setting("dilation_rate", 24_999))(model, model.parent)
    result = hostile.run_limited([CONVERTER, str(source)])  # kernel 5: spans 99,997 steps
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_forged_pth_with_a_huge_dilation_is_not_used_but_converted_again(model):
    first = hostile.run_limited([CONVERTER, str(model)])
    assert first.returncode == 0, first.stderr
    pth = model.with_name("tcn_converted.pth")
    payload = torch.load(pth, weights_only=True)
    next(layer for layer in payload["spec"]["layers"] if layer["type"] == "conv1d")["config"]["dilation"] = 10**9
    torch.save(payload, pth)  # still carries the real model's sha256
    again = hostile.run_limited([CONVERTER, str(model)])
    assert again.returncode == 0, again.stderr
    assert "up to date" not in again.stdout + again.stderr
    assert again.stderr.count("converting again") == 1 and "4,000,000,00" in again.stderr
    from models.checkpoint import load_converted_model

    assert load_converted_model(pth).layers["layer_1"].dilation != 10**9


def norm_setting(value) -> callable:
    def change(config: dict) -> None:
        hostile.layer_entry(config, "layer_1_BN")["config"]["epsilon"] = value

    return change


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, "abc", [1e-3]])
def test_a_normalization_epsilon_that_is_not_a_finite_non_negative_number_is_refused(model, value):
    source = hostile.config_edit(f"epsilon_{value}", norm_setting(value))(model, model.parent)
    converter_refuses(source, "layer_1_BN", "epsilon")


# ---- interrupts while the programs start ----------------------------------------------------------------------


@pytest.mark.parametrize("interruption, code", [(KeyboardInterrupt, INTERRUPTED_EXIT), (Terminated, TERMINATED_EXIT)])
def test_an_interrupt_while_importing_ends_in_one_line(capsys, interruption, code):
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exited:
            with quiet_interrupts_while_importing(script=True):
                raise interruption()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exited.value.code == code
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(KeyboardInterrupt):  # as a library: nothing changes
        with quiet_interrupts_while_importing(script=False):
            raise KeyboardInterrupt()


@pytest.mark.parametrize(
    "script, signum, code",
    [("main.py", signal.SIGTERM, TERMINATED_EXIT), ("model_converter.py", signal.SIGINT, INTERRUPTED_EXIT)],
)
def test_a_signal_while_torch_loads_ends_in_one_line(script, signum, code):
    """The signal is sent once the process maps libtorch, that is while the entry script imports."""
    child = subprocess.Popen(
        [sys.executable, script, "--help"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=with_ctrl_c,
    )
    maps = Path(f"/proc/{child.pid}/maps")
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        try:
            if "libtorch" in maps.read_text():
                break
        except OSError as exc:
            assert exc.errno in (errno.ENOENT, errno.ESRCH)
        time.sleep(0.01)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: ")

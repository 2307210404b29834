"""The hostile corpus through the real programs: every attack class gives its exit code, one `error:` paragraph
naming the file and the problem, no traceback, nothing written or overwritten, peak memory under 1 GB and under
60 s — or, for the legitimate ones (soft links, unusual but real models), an exact conversion.

The inputs are generated here from real Keras files (tests/reliability/hostile.py); the programs run as
subprocesses under an address-space limit (tests/reliability/hostile.run_limited).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from errors import (
    INTERRUPTED_EXIT,
    TERMINATED_EXIT,
    UNEXPECTED_EXIT,
    ConfigError,
    ConversionError,
    OutputError,
    PickleFileError,
    SelectionError,
)
from tests.reliability import hostile
from tests.reliability.conftest import QUICK_RUN, snapshot
from tests.subprocesses import REPO

CONVERTER = "model_converter.py"


def assert_clean_refusal(result: hostile.Limited, exit_code: int, *fragments: str) -> str:
    """The exit code, exactly one `error:` line holding every fragment, no traceback, bounded memory and time."""
    assert result.returncode == exit_code, (result.returncode, result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in: {errors[0]}"
    assert "Traceback" not in result.stderr and "--- Logging error ---" not in result.stderr, result.stderr[-3000:]
    assert result.peak_rss_mb < hostile.PEAK_RSS_MB, f"peak memory {result.peak_rss_mb:.0f} MB"
    assert result.seconds < hostile.WALL_S
    return errors[0]


def converter_refuses(
    source: Path,
    *fragments: str,
    extra: tuple[str, ...] = (),
    exit_code: int = ConversionError.exit_code,
    named: Path | None = None,
    env: dict | None = None,
) -> str:
    """The converter on `source` refuses; its message names `named` (default: the source)."""
    before = snapshot(source.parent)
    result = hostile.run_limited([CONVERTER, str(source), *extra], env_extra=env)
    message = assert_clean_refusal(result, exit_code, str(named or source), *fragments)
    assert snapshot(source.parent) == before, "nothing written or overwritten"
    return message


# ---- only the model file's own bytes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attack, fragment",
    [
        (hostile.external_storage, "keeps its data in another file (/etc/passwd)"),
        (hostile.external_link, "is a link into another file"),
        (hostile.virtual_dataset, "is a virtual dataset"),
    ],
    ids=["external_storage", "external_link", "virtual_dataset"],
)
def test_no_byte_from_outside_the_file_reaches_a_pth(model, attack, fragment):
    source = attack(model, model.parent)
    converter_refuses(source, "not stored in the file itself", fragment)
    assert not list(model.parent.glob("*.pth"))


def test_a_soft_link_inside_the_file_converts_exactly(model, keras_files):
    source = hostile.soft_link(model, model.parent)
    result = hostile.run_limited([CONVERTER, str(source), str(model.parent / "soft.pth")])
    assert result.returncode == 0, result.stderr
    from models.checkpoint import load_converted_model

    with np.load(keras_files / "tcn_io.npz") as io:
        outputs = load_converted_model(model.parent / "soft.pth")(torch.from_numpy(io["x"]))
        for name, got in zip(("spikes", "somatic"), outputs):
            assert np.abs(got.detach().numpy() - io[name]).max() <= 1e-5


def test_external_data_changed_later_cannot_pass_as_cached(model):
    """The cache cannot be fooled by a file whose weights live elsewhere: such a file never converts."""
    source = hostile.external_link(model, model.parent)
    for _ in range(2):
        converter_refuses(source, "is a link into another file")


# ---- budgets before allocation ------------------------------------------------------------------------------


@pytest.mark.parametrize("elements", [1e9, 2e10])
def test_a_declared_but_unstored_dataset_is_refused_before_reading(model, elements):
    source = hostile.declared_but_not_stored(elements)(model, model.parent)
    assert source.stat().st_size < 10 << 20
    converter_refuses(source, "weight 'layer_1/", "but stores", "NEURON_TCN_COMPRESSION_RATIO")


@pytest.mark.parametrize(
    "dtype, value, fragment",
    [
        ("complex128", 1 + 2j, "is stored as complex128, not as real numbers"),
        ("float64", 1e300, "beyond the range of float32"),
    ],
    ids=["complex", "float64_1e300"],
)
def test_weights_no_float32_equals_are_refused(model, dtype, value, fragment):
    converter_refuses(hostile.weight_dtype(dtype, value)(model, model.parent), fragment)


def test_legitimate_float16_and_integer_weights_convert(model):
    for dtype in ("float16", "int32"):
        source = hostile.weight_dtype(dtype, 1)(model, model.parent)
        result = hostile.run_limited([CONVERTER, str(source), str(model.parent / f"{dtype}.pth")])
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "tag, change, fragment",
    [
        ("deep_inbound", hostile.deep_inbound, "nested too deeply"),
        ("cycle", hostile.cycle, "has a cycle"),
        ("duplicate_names", hostile.duplicate_names, "occur more than once"),
        ("groups_zero", hostile.groups_zero, "layer 'layer_1' (Conv1D)"),
        ("long_input", hostile.long_input, "100,000,000 time steps"),
    ],
)
def test_forged_configs_get_the_right_words(model, tag, change, fragment):
    converter_refuses(hostile.config_edit(tag, change)(model, model.parent), fragment)


@pytest.mark.parametrize("depth", [600, 100_000])
def test_deeply_nested_json_is_refused(model, depth):
    text = "[" * depth + "]" * depth
    converter_refuses(hostile.raw_config(f"json_{depth}", text)(model, model.parent), "nested too deeply")


def test_a_long_chain_of_layers_converts_in_linear_time(model):
    source = hostile.config_edit("chain", hostile.activation_chain(24_000))(model, model.parent)
    assert source.stat().st_size > 5 << 20
    result = hostile.run_limited([CONVERTER, str(source), str(model.parent / "chain.pth")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.seconds < hostile.WALL_S and result.peak_rss_mb < hostile.PEAK_RSS_MB


def keras_archive(folder: Path, **bombs: int) -> Path:
    config = json.dumps(
        {"class_name": "Functional", "config": {"layers": [], "input_layers": [], "output_layers": []}}
    ).encode()
    members = {
        name: data
        for name, data in (("config.json", config), ("metadata.json", b"{}"), ("model.weights.h5", b""))
        if name not in bombs
    }
    return hostile.zip_with_member(folder / "bomb.keras", members, bombs)


@pytest.mark.parametrize(
    "member, size", [("config.json", 200 << 20), ("metadata.json", 48 << 20), ("model.weights.h5", 600 << 20)]
)
def test_zip_bombs_in_a_keras_archive_are_refused_before_inflating(tmp_path, member, size):
    source = keras_archive(tmp_path, **{member: size})
    assert source.stat().st_size < 10 << 20
    converter_refuses(source, f"member {member}", "declares")


def test_weights_that_declare_gigabytes_inside_an_archive(tmp_path, keras_files):
    """A .keras whose weights file declares 4 GB (stored as unallocated chunks)."""
    weights = tmp_path / "w.h5"
    with h5py.File(weights, "w") as h5:
        h5.create_dataset("layers/conv1d/vars/0", shape=(int(1e9),), dtype="f4", chunks=(1 << 16,))
    config = {
        "class_name": "Functional",
        "config": {
            "layers": [
                {
                    "class_name": "Conv1D",
                    "name": "conv1d",
                    "config": {"name": "conv1d", "filters": 4, "kernel_size": 3, "use_bias": False},
                }
            ]
        },
    }
    source = hostile.zip_with_member(
        tmp_path / "big.keras",
        {"config.json": json.dumps(config).encode(), "metadata.json": b"{}", "model.weights.h5": weights.read_bytes()},
        {},
    )
    weights.unlink()
    converter_refuses(source, "declares 4 GB but stores")


# ---- pickles ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (pickle.dumps(hostile._Reduce(bytearray, (3_000_000_000,)), protocol=2), "bytearray of 3 GB"),
        (pickle.dumps(hostile._Reduce(np.ndarray, ((500_000_000,),)), protocol=2), "array of shape (500000000,)"),
        (hostile.self_referential_architecture(), "contains itself"),
        (b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b".", "nests more than 100 levels"),
    ],
    ids=["bytearray", "ndarray", "self_referential", "deep"],
)
def test_params_pickles_that_allocate_or_recurse(model, payload, fragment):
    params = model.parent / "tcn_params.pickle"
    params.write_bytes(payload)
    converter_refuses(model, fragment, extra=(str(params),), exit_code=PickleFileError.exit_code, named=params)


def test_a_python2_set_is_read_as_a_set(tmp_path):
    from safe_pickle import load_pickle

    path = tmp_path / "p.pickle"
    path.write_bytes(pickle.dumps({"s": {1, 2}}, protocol=2))  # written with Python 2's name, __builtin__.set
    assert b"__builtin__" in path.read_bytes() and load_pickle(path) == {"s": {1, 2}}


# ---- main.py ------------------------------------------------------------------------------------------------


def main_refuses(
    workspace: Path, exit_code: int, *fragments: str, overrides: tuple[str, ...] = (), args: tuple[str, ...] = ()
) -> str:
    before = snapshot(workspace)
    result = hostile.run_limited(["main.py", "--config", str(workspace / "config.yaml"), *QUICK_RUN, *overrides, *args])
    message = assert_clean_refusal(result, exit_code, *fragments)
    assert snapshot(workspace) == before and not (workspace / "runs").exists(), "nothing written"
    return message


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["seed=-1"], ["seed", "greater than or equal to 0"]),
        (["optimization.stimulus.selection_seed=1e20"], ["selection_seed"]),
        (["optimization.duration_ms=100000000"], ["duration_ms", "less than or equal"]),
        (["optimization.report.dpi=20000"], ["dpi", "less than or equal to 600"]),
        (["optimization.num_patterns=1000000"], ["one optimization step", "NEURON_TCN_MAX_BATCH_BYTES"]),
        (["optimization.num_patterns=100", "optimization.evaluation.trials_per_pattern=50000000"], ["the evaluation"]),
        (["optimization.stimulus.segments=[1, 15]"], ["[15] are inhibitory", "allow_inhibitory"]),
    ],
    ids=[
        "negative_seed",
        "huge_selection_seed",
        "long_duration",
        "dpi",
        "num_patterns",
        "trials",
        "inhibitory_stimulus",
    ],
)
def test_config_values_out_of_range(workspace, overrides, fragments):
    main_refuses(workspace, ConfigError.exit_code, *fragments, overrides=tuple(overrides))


@pytest.mark.parametrize("where", [["seed"], ["sweep", "overrides"]])
def test_yaml_aliases_are_refused(workspace, where):
    (workspace / "config.yaml").write_text("models_dir: models\noutput_dir: runs\n" + hostile.billion_laughs(where))
    main_refuses(workspace, ConfigError.exit_code, "uses the YAML alias", args=("--sweep",) if "sweep" in where else ())


def test_a_sweep_of_1e8_seeds_is_refused(workspace):
    main_refuses(
        workspace, ConfigError.exit_code, "sweep", args=("--sweep", "sweep.seeds={first: 0, count: 100000000}")
    )


@pytest.mark.parametrize(
    "simulator, fragment",
    [
        ({"dt_ms": 1e-5}, "dt_ms=1e-05 is below"),
        ({"gaba_weight_ns": float("nan")}, "gaba_weight_ns must be a finite number"),
        ({"num_excitatory_segments": 12}, "12 + 10 = 22 segments, but the model takes 20"),
    ],
    ids=["tiny_step", "nan", "segment_count"],
)
def test_a_bad_simulator_config_is_refused_before_the_run_naming_the_pickle(workspace, simulator, fragment):
    path = workspace / "models" / "alpha.pickle"
    record = pickle.loads(path.read_bytes())
    record["data_dict"] = {
        "simulator_config": {"num_excitatory_segments": 10, "num_inhibitory_segments": 10, **simulator}
    }
    path.write_bytes(pickle.dumps(record, protocol=2))
    main_refuses(
        workspace,
        ConfigError.exit_code,
        str(path),
        "simulator_config",
        fragment,
        overrides=("ground_truth.enabled=true",),
    )


def test_a_history_that_allocates_gigabytes_is_unusable(workspace):
    path = workspace / "models" / "alpha.pickle"
    record = pickle.loads(path.read_bytes())
    record["training_history_dict"] = {"val_spikes_loss": hostile._Reduce(np.ndarray, ((500_000_000,),))}
    path.write_bytes(pickle.dumps(record, protocol=2))
    main_refuses(workspace, SelectionError.exit_code, "no usable model", "array of shape (500000000,)")


def test_a_pth_that_inflates_is_refused(workspace):
    models = workspace / "models"
    for path in models.glob("alpha*"):
        if path.suffix != ".pickle":
            path.unlink()
    hostile.zip_with_member(models / "alpha.pth", {}, {"archive/data.pkl": 300 << 20})
    main_refuses(workspace, SelectionError.exit_code, "no Keras file to convert")


def test_a_forged_pth_with_groups_zero_is_refused(workspace):
    models = workspace / "models"
    payload = torch.load(models / "alpha_converted.pth", weights_only=True)
    next(layer for layer in payload["spec"]["layers"] if layer["type"] == "conv1d")["config"]["groups"] = 0
    for path in models.glob("alpha*"):
        if path.suffix != ".pickle":
            path.unlink()
    torch.save(payload, models / "alpha.pth")
    result = hostile.run_limited(["main.py", "--config", str(workspace / "config.yaml"), *QUICK_RUN])
    assert_clean_refusal(result, SelectionError.exit_code, "alpha")
    assert "do not build a model (ZeroDivisionError" in result.stderr


# ---- hangs ------------------------------------------------------------------------------------------------


def test_a_fifo_among_the_models_is_skipped_with_a_note(workspace):
    hostile.fifo(workspace / "models" / "zz.pickle")
    result = hostile.run_limited(["main.py", "--config", str(workspace / "config.yaml"), *QUICK_RUN], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping" in result.stderr and "zz.pickle: not a regular file" in result.stderr


@pytest.mark.parametrize("which", ["model", "params", "config"])
def test_a_fifo_given_as_an_input_is_refused_not_opened(model, workspace, which):
    pipe = hostile.fifo(model.parent / f"pipe_{which}")
    if which == "config":
        result = hostile.run_limited(["main.py", "--config", str(pipe)])
        assert_clean_refusal(result, ConfigError.exit_code, "is a FIFO (named pipe)")
        return
    args = [str(pipe)] if which == "model" else [str(model), str(pipe.rename(pipe.with_suffix(".pickle")))]
    result = hostile.run_limited([CONVERTER, *args])
    assert_clean_refusal(result, ConversionError.exit_code, "is a FIFO (named pipe)")


# ---- no data loss -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("outputs", [["same"], ["info_is_params"]])
def test_an_output_that_is_an_input_is_refused(model, outputs):
    before = model.read_bytes()
    if outputs == ["same"]:
        source = model.rename(model.with_name("model.pt"))
        converter_refuses(source, "would overwrite the input", extra=(str(source),))
        assert source.read_bytes() == before
        return
    params = model.with_name("out_info.pickle")
    params.write_bytes(pickle.dumps(hostile.training_pickle(), protocol=2))
    converter_refuses(model, "would overwrite the input", extra=(str(params), str(model.with_name("out.pth"))))


KILL_AT_RENAME = """
import os, signal, sys, runpy
real, count = os.replace, [0]
def replace(source, target):
    count[0] += 1
    if count[0] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    real(source, target)
os.replace = replace
sys.argv = ["model_converter.py", *sys.argv[1:]]
runpy.run_path("model_converter.py", run_name="__main__")
"""


@pytest.mark.parametrize("kill_at", [1, 2])
def test_sigkill_between_the_renames_never_leaves_a_new_model_beside_old_info(model, kill_at):
    """The info pickle is renamed first and names its .pth's sha256; the .pth's rename commits the pair."""
    from conversion.keras_file import file_sha256
    from safe_pickle import load_pickle

    pth, info = model.with_name("tcn_converted.pth"), model.with_name("tcn_converted_info.pickle")
    assert hostile.run_limited([CONVERTER, str(model)]).returncode == 0
    old_pth, old_info = pth.read_bytes(), info.read_bytes()
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_RENAME, str(model), "--force"],
        cwd=REPO,
        env=dict(os.environ, KILL_AT=str(kill_at)),
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    assert pth.read_bytes() == old_pth, "the model is the old one until its own rename"
    if kill_at == 1:
        assert info.read_bytes() == old_info
    else:  # new info, old model: the info names another .pth, and the next reuse rewrites it
        assert load_pickle(info)["pth_sha256"] != file_sha256(pth)
        again = hostile.run_limited([CONVERTER, str(model)])
        assert again.returncode == 0 and "up to date" in again.stdout
        assert load_pickle(info)["pth_sha256"] == file_sha256(pth)


# ---- one error boundary per entry point -------------------------------------------------------------------

UNEXPECTED_IN_REPORT = """
import sys, runpy
import optimization.report
def broken(*args, **kwargs):
    raise RuntimeError("a plotting library failed")
optimization.report.plot_raster = broken
sys.argv = ["main.py", *sys.argv[1:]]
runpy.run_path("main.py", run_name="__main__")
"""


def test_an_unexpected_exception_marks_the_run_failed_and_it_is_not_continued(workspace):
    args = [
        "--config",
        str(workspace / "config.yaml"),
        *QUICK_RUN,
        "optimization.report.plots=true",
        "optimization.loop.checkpoint_every=3",
    ]
    failed = subprocess.run(
        [sys.executable, "-c", UNEXPECTED_IN_REPORT, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert failed.returncode == UNEXPECTED_EXIT, failed.stderr
    (line,) = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert "unexpected RuntimeError while running main.py: a plotting library failed" in line
    assert "Traceback" not in failed.stderr
    (run_dir,) = (workspace / "runs").iterdir()
    assert "RuntimeError: a plotting library failed" in (run_dir / "failed.txt").read_text()
    again = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "continuing the interrupted run" not in again.stderr and len(list((workspace / "runs").iterdir())) == 2
    verbose = subprocess.run(
        [sys.executable, "-c", UNEXPECTED_IN_REPORT, *args, "--verbose"], cwd=REPO, capture_output=True, text=True
    )
    assert "Traceback" in verbose.stderr  # only with --verbose


def with_ctrl_c() -> None:
    """In the child before it starts: Ctrl-C back to the default, so that Python installs its handler. A test
    run started in the background (`cmd &`, nohup) has SIGINT ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_and_signal(args: list[str], ready, sig: int) -> subprocess.CompletedProcess:
    child = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        preexec_fn=with_ctrl_c,
    )
    deadline = time.monotonic() + 120
    while not ready() and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()[1]
        time.sleep(0.05)
    child.send_signal(sig)
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(args, child.returncode, out, err)


def test_ctrl_c_in_the_converter_exits_130_with_one_line(tmp_path):
    from tests.reliability.test_faults import BUILD_LARGE
    from tests.subprocesses import run_keras_script

    run_keras_script(BUILD_LARGE, tmp_path)
    lock = tmp_path / ".large_converted.pth.lock"
    result = start_and_signal([CONVERTER, str(tmp_path / "large.h5")], lock.exists, signal.SIGINT)
    assert result.returncode == INTERRUPTED_EXIT, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: interrupted") and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.pth")) and not list(tmp_path.glob(".*.tmp*"))


def test_sigterm_to_main_exits_143_and_the_run_resumes(workspace):
    args = [
        "main.py",
        "--config",
        str(workspace / "config.yaml"),
        *QUICK_RUN,
        "optimization.loop.max_iterations=100000",
        "optimization.loop.checkpoint_every=3",
        "optimization.loop.early_stop_patience_iterations=null",
        "optimization.loop.stop_when_target_reached=false",
    ]
    result = start_and_signal(args, lambda: any((workspace / "runs").glob("*/checkpoint.pt")), signal.SIGTERM)
    assert result.returncode == TERMINATED_EXIT, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: terminated (SIGTERM)")
    assert "Traceback" not in result.stderr
    (run_dir,) = (workspace / "runs").iterdir()
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "failed.txt").exists()
    resumed = subprocess.run(
        [sys.executable, *args, "optimization.loop.max_iterations=12"], cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0 and "continuing the interrupted run" in resumed.stderr, resumed.stderr[-2000:]


def test_a_full_disk_stops_the_run_and_the_log_says_so_once(workspace):
    """RLIMIT_FSIZE stands for a full output disk: the run log fails first, then a result file."""
    result = hostile.run_limited(
        ["main.py", "--config", str(workspace / "config.yaml"), *QUICK_RUN], file_size_limit=256
    )
    assert_clean_refusal(result, OutputError.exit_code, "cannot be written")
    assert result.stderr.count("cannot write the log") == 1


def test_metadata_a_pth_cannot_hold_is_made_plain_so_success_means_loadable(model):
    """A params pickle may hold numpy dtypes, sets and complex numbers, which weights_only loading refuses: the
    record stores them as text and lists, and the written .pth loads back."""
    from models.checkpoint import load_converted_model

    params = model.with_name("tcn.pickle")
    record = hostile.training_pickle()
    record["architecture_dict"].update(dtype=np.dtype("float32"), tags={"a"}, gain=1 + 2j)
    params.write_bytes(pickle.dumps(record, protocol=2))
    result = hostile.run_limited([CONVERTER, str(model), str(params)])
    assert result.returncode == 0, result.stderr
    loaded = load_converted_model(model.with_name("tcn_converted.pth"))
    recorded = loaded.metadata["architecture_dict"]
    assert (recorded["dtype"], recorded["tags"], recorded["gain"]) == ("float32", ["a"], "(1+2j)")

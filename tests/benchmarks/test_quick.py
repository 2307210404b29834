"""The benchmark scripts run in their --quick mode and print their tables (timings are not checked)."""

from __future__ import annotations

import pytest

from benchmarks.common import QUICK
from benchmarks.optimization_loop import neuron_tcn
from conversion.converter import build_conversion
from conversion.model_file import read_model_file
from tests.subprocesses import run_cli


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of the markdown table in a script's output."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, stdout
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.fixture(scope="module")
def conversion_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("benchmark_cache")
    result = run_cli(
        [
            "benchmarks/conversion.py",
            "--quick",
            "--cache",
            str(cache),
            "--onnx-packages",
            str(cache / "no_onnx_packages"),
        ]
    )
    return result, cache


def test_conversion_benchmark_quick(conversion_run):
    result, _ = conversion_run
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert [row[2] for row in rows] == ["ours (h5py -> torch)", "Keras load + copy into the same module"]
    for row in rows:
        assert float(row[3].split()[0]) > 0 and float(row[4]) > 0  # wall seconds, peak RSS MB
    assert rows[0][5] == rows[0][6] == "1.00"  # ours against itself
    assert "onnx2torch not run" in result.stdout


def test_loop_benchmark_model_is_what_the_converter_makes(conversion_run):
    """The optimization benchmark builds its models without TensorFlow; they match a converted Keras TCN."""
    _, cache = conversion_run
    (keras_file,) = cache.glob("*.h5")
    converted = build_conversion(read_model_file(keras_file), None).model.spec
    built = neuron_tcn(QUICK).spec

    def structure(spec):
        return (
            [(layer["name"], layer["type"], layer["config"]) for layer in spec["layers"]],
            [call["layer"] for call in spec["calls"]],
            spec["output_names"],
            spec["inputs"][0]["shape"],
        )

    assert structure(built) == structure(converted)


def test_optimization_loop_benchmark_quick():
    result = run_cli(["benchmarks/optimization_loop.py", "--quick", "--device", "cpu"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "measured bf16 matmul rate" in result.stdout
    rows = table_rows(result.stdout)
    assert [row[3] for row in rows] == [
        "prior loop (fp32)",
        "ours: plain path, fp32",
        "ours: fast path, fp32",
        "ours: fast path, bf16",
    ]
    assert [row[4] for row in rows] == ["fp32", "fp32", "fp32, first layer as conv", "bf16, first layer as conv"]
    for row in rows:
        assert float(row[5]) > 0 and float(row[6]) > 0  # ms/iteration, effective TFLOP/s
    assert rows[0][8] == "1.00"  # the prior against itself


def test_ground_truth_benchmark_quick():
    result = run_cli(["benchmarks/ground_truth.py", "--quick", "--workers", "1,2"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["1", "2"] and rows[0][3] == "1.00"
    assert float(rows[1][1].split()[0]) > 0
    assert "figures identical for every worker count: True" in result.stdout


def test_export_benchmark_quick(tmp_path):
    result = run_cli(["benchmarks/export.py", "--quick", "--cache", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert [row[1] for row in rows] == ["float32", "int8", "pruned 50 % + int8"]
    assert rows[0][2].endswith("(1.00)") and rows[0][4] == "exact (the reference)"
    sizes = [float(row[2].split()[0]) for row in rows]
    assert max(sizes[1:]) < sizes[0]  # smaller than float32 even where the record dominates a tiny file
    for row in rows[1:]:
        assert "spikes" in row[4] and "/" in row[6]

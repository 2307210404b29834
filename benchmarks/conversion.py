#!/usr/bin/env python
"""Conversion benchmark: wall time and peak memory of turning a Keras neuron TCN .h5 into a PyTorch module.

    python benchmarks/conversion.py [--repeats 3] [--quick] [--onnx-packages DIR]

Every conversion runs in a fresh Python process, imports included, as in a scheduled job; wall time is from
start to exit, memory is the child's own peak resident set (ru_maxrss from wait4). Routes:
  ours   conversion.converter (h5py -> torch); the child checks that TensorFlow was never imported.
  keras  tf_keras.models.load_model, then the weights copied into the same PyTorch module (a KerasGraphModule
         built from the spec our converter derived beforehand, loaded with strict key and shape checks).
  onnx   tf2onnx.convert.from_keras, then onnx2torch.convert, with packages from --onnx-packages (a
         `pip install --target` folder, see BENCHMARKS.md). When onnx2torch cannot be imported there, only
         the tf2onnx half is timed — a lower bound of the route — and the import error is printed.
The models (Keras 2 .h5 files as the published ones, random weights) are generated once into
benchmarks/.cache/. --quick: one small model, one repetition (checks that the script runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, PUBLISHED, QUICK, TCNSize, cpu_description, markdown_table, run_child, versions  # noqa: E402

GENERATE = """
import numpy as np
from tests.conversion.keras_zoo import KerasFlavour, build_neuron_tcn, neuron_architecture, set_test_weights
flavour = KerasFlavour("keras2")
arch = neuron_architecture(window={window}, segments={segments}, filters={filters}, kernels={kernels},
                           activations=["relu"] * {depth}, num_dvt=20)
model = build_neuron_tcn(flavour, arch, "benchmark_tcn")
set_test_weights(model, np.random.default_rng(0), 1.0)
model.save({path!r})
"""

OURS_LABEL = "ours (h5py -> torch)"
OURS = """
import sys
from conversion.converter import build_conversion
from conversion.model_file import read_model_file
module = build_conversion(read_model_file({path!r}), None).model
assert "tensorflow" not in sys.modules, "the converter imported TensorFlow"
"""

KERAS = """
import numpy as np, torch, {keras} as keras
from models.graph import KerasGraphModule
spec = torch.load({spec!r}, weights_only=True)
keras_model = keras.models.load_model({path!r}, compile=False)
module = KerasGraphModule(spec)
state = {{}}
for layer in spec["layers"]:
    weights = keras_model.get_layer(layer["name"]).get_weights()
    prefix = "layers." + layer["key"] + "."
    if layer["type"] == "conv1d":
        names, weights[0] = ["weight", "bias"], weights[0].transpose(2, 1, 0)
    elif layer["type"] == "batch_norm":
        config = layer["config"]
        names = ["weight"] * config["scale"] + ["bias"] * config["center"] + ["running_mean", "running_var"]
    else:
        raise SystemExit("no weight copy for layer type " + layer["type"])
    state.update({{prefix + name: torch.from_numpy(np.ascontiguousarray(w)) for name, w in zip(names, weights)}})
module.load_state_dict(state, strict=True)
"""

ONNX = """
import tensorflow as tf, tf_keras, tf2onnx
keras_model = tf_keras.models.load_model({path!r}, compile=False)
signature = (tf.TensorSpec((None, {window}, {segments}), tf.float32, name="input"),)
proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=signature, opset=17)
if {with_torch}:
    import onnx2torch
    module = onnx2torch.convert(proto)
"""


def generate(size: TCNSize, cache: Path) -> Path:
    """The model's .h5 in the cache folder (built with tf_keras in a child process the first time)."""
    stem = "tcn_{}x{}_{}".format(len(size.filters), size.filters[0], "_".join(map(str, size.kernels[:2])))
    path = cache / f"{stem}_{size.segments}in_{size.window}ms.h5"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.h5")
        code = GENERATE.format(
            window=size.window,
            segments=size.segments,
            filters=list(size.filters),
            kernels=list(size.kernels),
            depth=len(size.filters),
            path=str(partial),
        )
        result = run_child(code)
        if result.returncode:
            raise SystemExit(f"generating {path.name} failed:\n{result.stderr[-3000:]}")
        partial.rename(path)
    return path


def save_spec(path: Path, folder: Path) -> Path:
    """The module description our converter derives, for the Keras route to fill with Keras's weights."""
    import torch

    from conversion.converter import build_conversion
    from conversion.model_file import read_model_file

    spec_path = folder / f"{path.stem}.spec.pt"
    torch.save(build_conversion(read_model_file(path), None).model.spec, spec_path)
    return spec_path


def keras_package(path: Path) -> str:
    """The Keras that wrote the file: `keras` for Keras 3 files, `tf_keras` (Keras 2) otherwise."""
    import h5py

    with h5py.File(path, "r") as handle:
        version = handle.attrs.get("keras_version", b"2")
    version = version.decode() if isinstance(version, bytes) else str(version)
    return "keras" if version.startswith("3") else "tf_keras"


def torch_input_shape(spec_path: Path) -> tuple[int, int]:
    import torch

    window, segments = torch.load(spec_path, weights_only=True)["inputs"][0]["shape"]
    return window or 400, segments


def onnx2torch_error(packages: Path | None) -> str | None:
    """None when onnx2torch imports beside our torch, else the last line of its error."""
    if packages is None:
        return "no --onnx-packages folder"
    result = run_child("import onnx2torch", [packages])
    return None if result.returncode == 0 else result.stderr.strip().splitlines()[-1]


def measure(routes: dict[str, tuple[str, list[Path]]], repeats: int) -> dict[str, dict]:
    """Each route `repeats` times, interleaved (so that a change of machine load hits all routes alike)."""
    runs: dict[str, list] = {label: [] for label in routes}
    for _ in range(repeats):
        for label, (code, extra_path) in routes.items():
            run = run_child(code, extra_path)
            if run.returncode:
                raise SystemExit(f"{label}: the conversion child failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
            runs[label].append(run)
    return {
        label: {
            "wall_s": statistics.median(r.wall_s for r in results),
            "wall_range": (min(r.wall_s for r in results), max(r.wall_s for r in results)),
            "peak_mb": statistics.median(r.peak_rss_mb for r in results),
        }
        for label, results in runs.items()
    }


def benchmark_model(
    name: str, path: Path, folder: Path, repeats: int, packages: Path | None, torch_error: str | None
) -> list[list[object]]:
    spec = save_spec(path, folder)
    routes = {
        OURS_LABEL: (OURS.format(path=str(path)), []),
        "Keras load + copy into the same module": (
            KERAS.format(path=str(path), spec=str(spec), keras=keras_package(path)),
            [],
        ),
    }
    if packages is not None:
        window, segments = torch_input_shape(spec)
        label = "tf2onnx + onnx2torch" if torch_error is None else "tf2onnx only (lower bound of the ONNX route)"
        routes[label] = (
            ONNX.format(path=str(path), window=window, segments=segments, with_torch=torch_error is None),
            [packages],
        )
    results = measure(routes, repeats)
    ours, megabytes = results[OURS_LABEL], path.stat().st_size / 2**20
    rows = []
    for label, result in results.items():
        low, high = result["wall_range"]
        rows.append(
            [
                name,
                f"{megabytes:.0f} MB",
                label,
                f"{result['wall_s']:.2f} ({low:.2f}-{high:.2f})",
                f"{result['peak_mb']:.0f}",
                f"{ours['wall_s'] / result['wall_s']:.2f}",
                f"{ours['peak_mb'] / result['peak_mb']:.2f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per route and model (median)")
    parser.add_argument("--quick", action="store_true", help="one small model, one repetition")
    parser.add_argument(
        "--model", type=Path, action="append", help="benchmark this .h5 instead of the generated models (repeatable)"
    )
    parser.add_argument("--cache", type=Path, default=CACHE, help="folder of the generated models")
    parser.add_argument(
        "--onnx-packages",
        type=Path,
        default=CACHE / "onnx_route",
        help="pip --target folder holding tf2onnx, onnx, onnx2torch (and torchvision)",
    )
    args = parser.parse_args(argv)
    sizes, repeats = ((QUICK,), 1) if args.quick else (PUBLISHED, args.repeats)
    models = [(path.stem, path) for path in args.model] if args.model else [(s.name, s) for s in sizes]
    packages = args.onnx_packages if args.onnx_packages.is_dir() else None
    tf2onnx_present = packages is not None and (packages / "tf2onnx").is_dir()
    torch_error = onnx2torch_error(packages) if tf2onnx_present else "tf2onnx not installed"

    print(f"machine: {cpu_description()}; load average {os.getloadavg()[0]:.1f}")
    found = versions(
        "torch",
        "h5py",
        "numpy",
        "tensorflow-cpu",
        "tf_keras",
        "tf2onnx",
        "onnx",
        "onnx2torch",
        "torchvision",
        extra_path=packages,
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    print(f"fresh process per conversion, median of {repeats}; wall includes interpreter start and imports")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models:
            path = model if isinstance(model, Path) else generate(model, args.cache)
            rows += benchmark_model(
                name, path, Path(folder), repeats, packages if tf2onnx_present else None, torch_error
            )
    print(
        markdown_table(
            [
                "model",
                ".h5",
                "route",
                "wall s, median (range)",
                "peak RSS MB",
                "ours / route wall",
                "ours / route memory",
            ],
            rows,
        )
    )
    if torch_error is not None:
        print(f"ONNX route: onnx2torch not run ({torch_error})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure what storing a converted model's weights in half precision costs (`model_converter.py --dtype`).

    .venv/bin/python tools/measure_export_dtype.py [MODEL.h5 ...]     # default: the demo models

Each model is converted with float32, float16 and bfloat16 weights, loaded back (computing in float32) and run
on binary spike trains (3 % density, the converter's verification input); the table gives the max abs diff
of each output against Keras's prediction on the same input. Needs TensorFlow (for the Keras side).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_converter import TCNModelConverter, load_converted_model  # noqa: E402
from models.checkpoint import STORAGE_DTYPES  # noqa: E402

SPIKE_DENSITY = 0.03
BATCH = 32
SEED = 0


def spike_input(model: torch.nn.Module, length: int) -> np.ndarray:
    (shape,) = model.input_shapes
    rng = np.random.default_rng(SEED)
    return (rng.random((BATCH, shape[0] or length, shape[-1])) < SPIKE_DENSITY).astype(np.float32)


def keras_outputs(h5: Path, x: np.ndarray) -> list[np.ndarray]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    outputs = keras.models.load_model(str(h5), compile=False).predict(x, verbose=0)
    return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def measure(h5: Path, folder: Path) -> list[tuple[str, str, float, float]]:
    """(dtype, output, max abs diff to Keras, max |Keras output|) for every stored precision and output."""
    params = h5.with_suffix(".pickle")
    converter = TCNModelConverter(h5, params if params.is_file() else None)
    rows, expected, x = [], None, None
    for dtype in STORAGE_DTYPES:
        pth = folder / f"{h5.stem}.{dtype}.pth"
        converter.convert(pth, dtype=dtype)
        model = load_converted_model(pth)
        if x is None:
            length = (converter.params or {}).get("architecture_dict", {}).get("input_window_size", 200)
            x = spike_input(model, length)
            expected = keras_outputs(h5, x)
        with torch.no_grad():
            got = model(torch.from_numpy(x))
        got = got if isinstance(got, tuple) else (got,)
        for name, have, want in zip(model.output_names, got, expected):
            rows.append((dtype, name, float(np.abs(have.numpy() - want).max()), float(np.abs(want).max())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path, help="Keras .h5 files (default: demo_models/*.h5)")
    models = parser.parse_args().models or sorted((REPO / "demo_models").glob("*.h5"))
    print("| model | weights | output | max abs diff vs Keras | max abs output |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for h5 in models:
            short = h5.stem.split("__")[1] if "__" in h5.stem else h5.stem
            for dtype, name, diff, scale in measure(h5, Path(folder)):
                print(f"| {short} | {dtype} | {name} | {diff:.2g} | {scale:.3g} |")


if __name__ == "__main__":
    main()

"""Every supported Keras layer and activation converts exactly, for Keras 2 and Keras 3 files.

The Keras models (tests/conversion/keras_zoo.py) are built and saved by a subprocess; here they are
converted with TensorFlow unimportable and compared with Keras's saved predictions: max abs diff
<= 1e-5 on every output (float32, CPU). See conftest.py for the `parity` fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from keras_zoo import FLAVOURS, zoo_names

LAYER_CASES = [pytest.param(f, n, id=f"{f}-{n}") for f in FLAVOURS for n in zoo_names(f, "layers")]
EDGE_CASES = [pytest.param(f, n, id=f"{f}-{n}") for f in FLAVOURS for n in zoo_names(f, "edge")]


def summarize(diffs: dict[str, float], tolerance: float) -> str:
    worst = max(diffs, key=diffs.get)
    status = "ok   " if diffs[worst] <= tolerance else "FAIL "
    return f"{status} {diffs[worst]:.2e}  (worst output {worst!r} of {len(diffs)})"


def check_against_keras(parity, artifact, model, what="converted model"):
    """Run `model` on the saved input, record the figures for the summary table, assert the tolerance."""
    actual = parity.run_torch(model, artifact.inputs)
    if len(actual) != len(artifact.outputs):
        parity.record(artifact, f"FAIL  {len(actual)} output(s) instead of Keras's {len(artifact.outputs)}")
    else:
        parity.record(
            artifact, summarize(parity.output_diffs(actual, artifact.outputs, artifact.output_names), parity.tolerance)
        )
    parity.assert_matches_keras(artifact, actual, what=what)
    return actual


@pytest.mark.parametrize("flavour, name", LAYER_CASES)
def test_converted_model_matches_keras(parity, flavour, name):
    artifact = parity.artifact(flavour, name)
    converted = parity.converted(artifact)
    if converted.error is not None:
        parity.record(
            artifact,
            f"CONVERSION FAILED  {type(converted.error).__name__}: {' '.join(str(converted.error).split())[:160]}",
        )
    model = parity.require_converted(converted, artifact)
    assert not model.training, "convert() must return the model in eval mode"
    check_against_keras(parity, artifact, model)


@pytest.mark.parametrize("flavour, name", LAYER_CASES)
def test_saved_file_reloads_without_tensorflow(parity, flavour, name):
    """The .pth loads with weights_only=True, and load_converted_model rebuilds the same function."""
    artifact = parity.artifact(flavour, name)
    converted = parity.converted(artifact)
    model = parity.require_converted(converted, artifact)

    payload = torch.load(converted.pth, map_location="cpu", weights_only=True)
    assert isinstance(payload, dict)

    with parity.tensorflow_blocked():
        from model_converter import load_converted_model

        reloaded = load_converted_model(converted.pth, device="cpu")
    assert not reloaded.training, "load_converted_model must return the model in eval mode"

    original = parity.run_torch(model, artifact.inputs)
    again = parity.run_torch(reloaded, artifact.inputs)
    for out_name, a, b in zip(artifact.output_names, original, again):
        assert a.shape == b.shape and np.max(np.abs(a - b), initial=0.0) <= 1e-6, (
            f"{artifact.label}: output {out_name!r} of the reloaded model differs from the converted one"
        )
    parity.assert_matches_keras(artifact, again, what="model reloaded from the .pth")


@pytest.mark.parametrize("flavour, name", LAYER_CASES)
def test_model_describes_its_inputs_and_outputs(parity, flavour, name):
    """`input_shapes` and `output_names` follow the Keras config (docs/converting.md, "The module")."""
    artifact = parity.artifact(flavour, name)
    model = parity.require_converted(parity.converted(artifact), artifact)
    assert list(model.output_names) == artifact.meta["output_names"]
    assert [tuple(s) for s in model.input_shapes] == [tuple(s) for s in artifact.meta["input_config_shapes"]]


@pytest.mark.parametrize("flavour, name", EDGE_CASES)
def test_unusual_model_is_exact_or_refused(parity, flavour, name):
    """Legal Keras models outside the supported list: a clear refusal is fine, wrong numbers are not."""
    from errors import ToolError

    artifact = parity.artifact(flavour, name)
    converted = parity.converted(artifact)
    if converted.error is not None:
        error = converted.error
        message = " ".join(str(error).split())
        parity.record(artifact, f"refused: {message[:160]}")
        assert isinstance(error, ToolError), (
            f"{artifact.label}: refused with a raw {type(error).__name__} instead of a ToolError: {message}"
        )
        assert artifact.h5.name in message, f"{artifact.label}: the refusal does not name the file: {message}"
        written = sorted(p.name for p in converted.pth.parent.iterdir())
        assert not written, f"{artifact.label}: refused, but files were written: {written}"
        return
    check_against_keras(parity, artifact, converted.model, what="converted model (accepted, so it must be exact)")

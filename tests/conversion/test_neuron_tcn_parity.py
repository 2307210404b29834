"""Beniaguev-style neuron TCNs convert exactly, for Keras 2 and Keras 3 files.

Each zoo TCN (keras_zoo.py, group "neuron") is a stack of causal Conv1D layers named `layer_k`, each with
its activation (the original 'lrelu' as a LeakyReLU(0.25) layer) and followed by `layer_k_BN`, then the
heads `spikes` (sigmoid), `somatic` (linear) and `dendritic` (linear, N components). They are saved beside
the `.pickle` that fit_CNN.py writes, converted with that pickle, and run on binary spike inputs (3 %).
"""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from keras_zoo import FLAVOURS, ZOO, zoo_names

NEURON_CASES = [pytest.param(f, n, id=f"{f}-{n}") for f in FLAVOURS for n in zoo_names(f, "neuron")]
HEADS = ["spikes", "somatic", "dendritic"]


@pytest.mark.parametrize("flavour, name", NEURON_CASES)
def test_neuron_tcn_matches_keras(parity, flavour, name):
    artifact = parity.artifact(flavour, name)
    assert artifact.params is not None, "the zoo writes a parameters pickle beside every neuron TCN"
    converted = parity.converted(artifact)
    if converted.error is not None:
        parity.record(
            artifact,
            f"CONVERSION FAILED  {type(converted.error).__name__}: {' '.join(str(converted.error).split())[:160]}",
        )
    model = parity.require_converted(converted, artifact)
    assert list(model.output_names) == HEADS

    actual = parity.run_torch(model, artifact.inputs)
    diffs = parity.output_diffs(actual, artifact.outputs, artifact.output_names)
    worst = max(diffs, key=diffs.get)
    parity.record(
        artifact,
        f"{'ok   ' if diffs[worst] <= parity.tolerance else 'FAIL '} {diffs[worst]:.2e}  "
        f"(spikes {diffs['spikes']:.1e}, somatic {diffs['somatic']:.1e}, "
        f"dendritic {diffs['dendritic']:.1e})",
    )
    parity.assert_matches_keras(artifact, actual)

    spikes, somatic, dendritic = actual
    num_dvt = ZOO[name].neuron["num_DVT_components"]
    assert spikes.shape[-1] == 1 and somatic.shape[-1] == 1 and dendritic.shape[-1] == num_dvt
    assert 0.0 <= spikes.min() and spikes.max() <= 1.0


@pytest.mark.parametrize("flavour, name", NEURON_CASES)
def test_neuron_tcn_reloads_from_pth(parity, flavour, name):
    artifact = parity.artifact(flavour, name)
    converted = parity.converted(artifact)
    parity.require_converted(converted, artifact)
    with parity.tensorflow_blocked():
        from model_converter import load_converted_model

        reloaded = load_converted_model(converted.pth)
    parity.assert_matches_keras(
        artifact, parity.run_torch(reloaded, artifact.inputs), what="model reloaded from the .pth"
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_default_output_is_written_beside_the_input(parity, tmp_path, flavour):
    """convert() without a path writes <stem>_converted.pth and <stem>_converted_info.pickle beside the .h5."""
    artifact = parity.artifact(flavour, "tcn_d3_mixed")
    h5 = shutil.copy(artifact.h5, tmp_path / "neuron_model.h5")
    params = shutil.copy(artifact.params, tmp_path / "neuron_model.pickle")
    with parity.tensorflow_blocked():
        from model_converter import TCNModelConverter, load_converted_model

        TCNModelConverter(h5, params).convert()
        pth = tmp_path / "neuron_model_converted.pth"
        info = tmp_path / "neuron_model_converted_info.pickle"
        assert pth.is_file() and info.is_file(), sorted(p.name for p in tmp_path.iterdir())
        reloaded = load_converted_model(pth)
    with open(info, "rb") as f:
        assert isinstance(pickle.load(f), dict)
    parity.assert_matches_keras(
        artifact, parity.run_torch(reloaded, artifact.inputs), what="model converted to the default path"
    )


def test_test_conversion_reports_parity(parity):
    """TCNModelConverter.test_conversion loads the original with Keras (in this process) and passes."""
    artifact = parity.artifact("keras3", "tcn_1278_fcn_relu")
    model = parity.require_converted(parity.converted(artifact), artifact)

    from model_converter import TCNModelConverter

    converter = TCNModelConverter(artifact.h5, artifact.params)
    for test_input in (None, artifact.inputs[0]):
        report = converter.test_conversion(model, test_input=test_input)
        label = "its own input" if test_input is None else "the zoo's spike input"
        assert set(report["outputs"]) == set(HEADS), report
        for head, figures in report["outputs"].items():
            assert figures["passed"] and figures["max_abs_diff"] <= parity.tolerance, (
                f"test_conversion on {label}: output {head!r}: {figures}"
            )
            assert np.isfinite(figures["mean_abs_diff"]) and figures["mean_abs_diff"] <= figures["max_abs_diff"]
        assert report["passed"] is True, report
        assert report["tolerance"] > 0

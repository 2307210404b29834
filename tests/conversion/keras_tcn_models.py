#!/usr/bin/env python
"""Build keras-tcn models with real Keras and keras-tcn, save them as .h5 with Keras's predictions beside them.

    keras_tcn_models.py --flavour keras3|keras2 --out-dir DIR [--seed N]

keras-tcn builds its layers from `tensorflow.keras`: Keras 3 by default, Keras 2 (tf_keras) when
TF_USE_LEGACY_KERAS=1 is set before TensorFlow is imported, which `--flavour keras2` does. Importing this
module without running it imports neither TensorFlow nor keras-tcn: the tests read MODELS to parametrize.

For each model NAME of the flavour this writes NAME.h5 (NAME.keras for archives), NAME.npz (inputs `spikes` — binary at 3 % density —
and `normal`, and Keras's predictions `out_spikes_<i>` / `out_normal_<i>` of the model reloaded from the
file), or NAME.error.txt with the traceback (exit status 1).

Weight normalization: keras-tcn ≤ 3.4 wrapped each dilated conv in tensorflow_addons' WeightNormalization,
which no longer installs beside TensorFlow 2.21. The `weight_norm*` models are therefore built honestly
but indirectly: a keras-tcn 3.5.7 model (tf_keras) gets kernels g · v / ||v|| from random g and v, Keras
predicts with them, and the saved file is rewritten into the layout a keras-tcn 3.4.4 + tensorflow_addons
0.23 file has (checked against such a file: `conv1D_k/g`, `conv1D_k/kernel` = v, `conv1D_k/initialized`,
`conv1D_k/data_dep_init/{kernel,bias}`, `use_weight_norm: true` in the config).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPIKE_DENSITY = 0.03
BATCH = 3
FLAVOURS = ("keras3", "keras2")
# Activation strings passed to keras-tcn (every one both Keras versions accept and the converter knows).
ACTIVATIONS = (
    "linear",
    "relu",
    "relu6",
    "sigmoid",
    "tanh",
    "elu",
    "selu",
    "softplus",
    "softsign",
    "gelu",
    "swish",
    "silu",
    "exponential",
    "hard_sigmoid",
    "leaky_relu",
    "mish",
    "softmax",
)


@dataclass(frozen=True)
class TCNModel:
    """One test model: Input(time, channels) → TCN(**tcn) → optional head(s)."""

    name: str
    tcn: dict
    channels: int
    time: int | None  # the Input's time axis (None: any length)
    length: int  # length of the test inputs
    head: str = "none"  # none | dense | neuron (Conv1D spikes + Dense somatic)
    gain: float = 1.0  # kernel std = gain / sqrt(fan_in)
    flavours: tuple[str, ...] = FLAVOURS
    rewrite: str | None = None  # weight_norm | weight_norm_uninitialized (see the module docstring)
    bias: float | None = None  # every TCN bias set to this value instead of random ones
    branches: tuple[str, ...] = ()  # one TCN per activation, side by side on the input, named tcn_<activation>
    archive: bool = False  # saved as a Keras 3 `.keras` zip archive instead of `.h5`

    @property
    def file_name(self) -> str:
        return f"{self.name}.keras" if self.archive else f"{self.name}.h5"

    notes: str = ""


MODELS: dict[str, TCNModel] = {}


def _add(model: TCNModel) -> None:
    MODELS[model.name] = model


_add(
    TCNModel(
        "stacked_skip_heads",
        notes="nb_stacks=2, skip connections, Conv1D + Dense heads",
        tcn=dict(
            nb_filters=8,
            kernel_size=3,
            nb_stacks=2,
            dilations=(1, 2, 4),
            padding="causal",
            use_skip_connections=True,
            return_sequences=True,
        ),
        channels=20,
        time=48,
        length=48,
        head="neuron",
    )
)
_add(
    TCNModel(
        "same_layernorm_middle_step",
        notes="same padding, layer norm, return_sequences=False (T//2)",
        tcn=dict(
            nb_filters=6,
            kernel_size=3,
            nb_stacks=1,
            dilations=(1, 2, 4),
            padding="same",
            use_layer_norm=True,
            return_sequences=False,
        ),
        channels=5,
        time=25,
        length=25,
        head="dense",
    )
)
_add(
    TCNModel(
        "same_any_length_middle_step",
        notes="same padding, time axis None, even test length",
        tcn=dict(
            nb_filters=6,
            kernel_size=2,
            nb_stacks=1,
            dilations=(1, 2),
            padding="same",
            use_layer_norm=True,
            return_sequences=False,
        ),
        channels=5,
        time=None,
        length=24,
        head="dense",
    )
)
_add(
    TCNModel(
        "batchnorm_even_kernel_dropout",
        notes="batch norm, kernel 4, dropout, identity residual in block 0",
        tcn=dict(
            nb_filters=6,
            kernel_size=4,
            nb_stacks=1,
            dilations=(1, 2, 4),
            padding="causal",
            use_batch_norm=True,
            dropout_rate=0.2,
            return_sequences=False,
        ),
        channels=6,
        time=None,
        length=40,
        head="dense",
    )
)
_add(
    TCNModel(
        "archive_batchnorm_stacked",
        notes="a .keras archive: stacked, batch norm, kernel 4",
        tcn=dict(
            nb_filters=6, kernel_size=4, nb_stacks=2, dilations=(1, 2), use_batch_norm=True, return_sequences=True
        ),
        channels=5,
        time=None,
        length=30,
        head="dense",
        flavours=("keras3",),
        archive=True,
    )
)
_add(
    TCNModel(
        "filters_per_block_no_skip",
        notes="nb_filters list, no skip connections (Keras 3 cannot save "
        "a keras-tcn layer whose nb_filters is a list to .h5: its TrackedList does not serialize)",
        tcn=dict(
            nb_filters=[6, 4, 5],
            kernel_size=3,
            nb_stacks=2,
            dilations=(1, 2, 4),
            use_skip_connections=False,
            return_sequences=True,
        ),
        channels=3,
        time=None,
        length=30,
        flavours=("keras2",),
    )
)
_add(
    TCNModel(
        "go_backwards_single_block",
        notes="go_backwards, one block (skip sum of one)",
        tcn=dict(nb_filters=5, kernel_size=3, nb_stacks=1, dilations=(1,), go_backwards=True, return_sequences=True),
        channels=4,
        time=None,
        length=20,
    )
)
_add(
    TCNModel(
        "go_backwards_last_step",
        notes="go_backwards, return_sequences=False, return_state=True",
        tcn=dict(
            nb_filters=5,
            kernel_size=2,
            nb_stacks=1,
            dilations=(1, 2),
            go_backwards=True,
            return_state=True,
            return_sequences=False,
        ),
        channels=4,
        time=None,
        length=20,
    )
)
# Every activation but `exponential` in one model (one save, load and conversion for all): output i is the
# TCN with activation BRANCHED_ACTIVATIONS[i].
BRANCHED_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "exponential")
_add(
    TCNModel(
        "activations",
        notes="one TCN per activation",
        tcn=dict(nb_filters=4, kernel_size=2, nb_stacks=1, dilations=(1, 2), return_sequences=True),
        channels=3,
        time=None,
        length=16,
        gain=1.5,
        branches=BRANCHED_ACTIVATIONS,
    )
)
# A block applies its activation four times in a row (conv, conv, block, residual): nested exponentials
# overflow float32 unless the pre-activations stay well below zero.
_add(
    TCNModel(
        "activation_exponential",
        notes="activation='exponential', one block, small kernels, biases -3",
        tcn=dict(
            nb_filters=4, kernel_size=2, nb_stacks=1, dilations=(1,), activation="exponential", return_sequences=True
        ),
        channels=3,
        time=None,
        length=16,
        gain=0.3,
        bias=-3.0,
    )
)
_add(
    TCNModel(
        "weight_norm",
        notes="keras-tcn <= 3.4 use_weight_norm (file layout rewritten, see docstring)",
        tcn=dict(nb_filters=5, kernel_size=3, nb_stacks=1, dilations=(1, 2), return_sequences=True),
        channels=3,
        time=None,
        length=20,
        flavours=("keras2",),
        rewrite="weight_norm",
    )
)
_add(
    TCNModel(
        "weight_norm_uninitialized",
        notes="WeightNormalization never called: data-dependent init pending",
        tcn=dict(nb_filters=5, kernel_size=3, nb_stacks=1, dilations=(1, 2), return_sequences=True),
        channels=3,
        time=None,
        length=20,
        flavours=("keras2",),
        rewrite="weight_norm_uninitialized",
    )
)


def model_names(flavour: str) -> list[str]:
    return [m.name for m in MODELS.values() if flavour in m.flavours]


# --------------------------------------------------------------------------------------------------
# Building (in a subprocess with TensorFlow)
# --------------------------------------------------------------------------------------------------


def _build(spec: TCNModel, keras, TCN):
    inputs = keras.Input(shape=(spec.time, spec.channels), name="inputs")
    if spec.branches:
        outputs = [TCN(name=f"tcn_{a}", activation=a, **spec.tcn)(inputs) for a in spec.branches]
        return keras.Model(inputs, outputs, name=spec.name)
    x = TCN(name="tcn", **spec.tcn)(inputs)
    if spec.head == "dense":
        outputs = keras.layers.Dense(2, name="head")(x)
    elif spec.head == "neuron":
        outputs = [
            keras.layers.Conv1D(1, 1, activation="sigmoid", name="spikes")(x),
            keras.layers.Dense(1, name="somatic")(x),
        ]
    else:
        outputs = x
    return keras.Model(inputs, outputs, name=spec.name)


def _weight_normalize(model, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Give each dilated conv a kernel g · v / ||v||; returns {weight name: (g, v)} for the file rewrite."""
    tcn = model.get_layer("tcn")
    parts = {}
    for weight in tcn.weights:
        name = weight.name
        if "/conv1D_" in name and name.endswith("/kernel:0"):
            v = rng.normal(0.0, 1.0, tuple(weight.shape)).astype(np.float32)
            g = rng.uniform(0.5, 1.5, v.shape[-1]).astype(np.float32)
            norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=(0, 1)))
            weight.assign((v / norm * g).astype(np.float32))
            parts[name] = (g, v)
    return parts


def _rewrite_as_weight_norm(h5: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]], initialized: bool) -> None:
    """Turn the saved file into the layout of a keras-tcn 3.4 + tensorflow_addons WeightNormalization file."""
    import h5py

    with h5py.File(h5, "r+") as f:
        group = f["model_weights/tcn"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
        trainable, non_trainable = [], []
        for name in names:
            if name in parts:
                conv = name[: -len("/kernel:0")]
                g, v = parts[name]
                group[f"{conv}/g:0"] = g
                group[name][...] = v
                group[f"{conv}/initialized:0"] = np.bool_(initialized)
                group[f"{conv}/data_dep_init/kernel:0"] = v
                group[f"{conv}/data_dep_init/bias:0"] = np.zeros(v.shape[-1], np.float32)
                trainable.append(f"{conv}/g:0")
                non_trainable += [
                    f"{conv}/initialized:0",
                    f"{conv}/data_dep_init/kernel:0",
                    f"{conv}/data_dep_init/bias:0",
                ]
            trainable.append(name)
        group.attrs["weight_names"] = np.array([n.encode() for n in trainable + non_trainable])
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "TCN":
                layer["config"]["use_weight_norm"] = True
                for newer_key in ("go_backwards", "return_state"):  # not in keras-tcn 3.4's config
                    layer["config"].pop(newer_key)
        f.attrs["model_config"] = json.dumps(config).encode()


def make(spec: TCNModel, out_dir: Path, seed: int, keras, TCN) -> None:
    from keras_zoo import set_test_weights  # kernels, biases, norm statistics away from their defaults

    rng = np.random.default_rng(seed * 7919 + sum(map(ord, spec.name)))
    model = _build(spec, keras, TCN)
    set_test_weights(model, rng, spec.gain)
    if spec.bias is not None:
        for weight in model.get_layer("tcn").weights:
            if weight.name.split("/")[-1].split(":")[0] == "bias":
                weight.assign(np.full(tuple(weight.shape), spec.bias, np.float32))
    parts = _weight_normalize(model, rng) if spec.rewrite else {}
    shape = (BATCH, spec.length, spec.channels)
    inputs = {
        "spikes": (rng.random(shape) < SPIKE_DENSITY).astype(np.float32),
        "normal": rng.normal(0.0, 1.0, shape).astype(np.float32),
    }
    h5 = out_dir / spec.file_name
    model.save(str(h5))
    reloaded = keras.models.load_model(str(h5), custom_objects={"TCN": TCN}, compile=False)
    arrays = dict(inputs)
    for kind, x in inputs.items():
        outputs = reloaded(x, training=False)
        for i, out in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            arrays[f"out_{kind}_{i}"] = np.asarray(out, dtype=np.float32)
    if spec.rewrite:
        _rewrite_as_weight_norm(h5, parts, initialized=spec.rewrite == "weight_norm")
    np.savez(out_dir / f"{spec.name}.npz", **arrays)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flavour", choices=FLAVOURS, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.flavour == "keras2":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tensorflow.keras (and so keras-tcn) becomes tf_keras
    import tensorflow as tf
    from tcn import TCN

    keras = tf.keras
    args.out_dir.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in model_names(args.flavour):
        try:
            make(MODELS[name], args.out_dir, args.seed, keras, TCN)
        except Exception:
            (args.out_dir / f"{name}.error.txt").write_text(traceback.format_exc())
            status = 1
    return status


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())

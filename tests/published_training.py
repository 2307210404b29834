"""Model files as the published training code writes them, built by real Keras in a subprocess.

`create_temporaly_convolutional_model` is reproduced from fit_CNN.py (SelfishGene/neuron_as_deep_net) as it
builds the network: per layer a causal Conv1D with a TruncatedNormal initializer and an l2 regularizer, whose
activation 'lrelu' is the lambda `lambda x: LeakyReLU(alpha=leaky_relu_slope)(x)` closing over the slope, then
a BatchNormalization; causal 1x1 heads `spikes` (sigmoid, bias -2), `somatic`, `dendritic`; compiled with Nadam
and trained briefly (so the file holds optimizer state), saved with `model.save(<stem>.h5)` beside a protocol-2
pickle of `data_dict`, `architecture_dict`, `learning_schedule_dict` and `training_history_dict`. The lab
variant has 639 + 640 segments, two heads and the legacy Nadam. Keras's own predictions on binary spikes are
saved beside each model (`<stem>.io.npz`: x, then y0, y1, ... in output order), and Keras's parameter counts
(`<stem>.meta.json`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tests.subprocesses import run_keras_script

HEADS = ("spikes", "somatic", "dendritic")
LAB_HEADS = ("spikes", "somatic")


@dataclass
class PublishedModel:
    """One model file (and pickle) to write; `history` is val_spikes_loss per epoch (NaN allowed)."""

    stem: str
    flavour: str = "keras3"  # keras3 (Keras 3.x) or keras2 (tf_keras)
    window: int = 60
    segments: int = 20  # excitatory + inhibitory input channels
    activations: list[str] = field(default_factory=lambda: ["lrelu", "relu"])
    filter_sizes: list[int] = field(default_factory=lambda: [15, 5])
    filters: list[int] = field(default_factory=lambda: [8, 8])
    dilations: list[int] | None = None
    heads: tuple[str, ...] = HEADS
    num_dvt: int = 3
    slope: float = 0.25  # the slope the lambda closes over (fit_CNN.py: 0.25)
    history: list[float] = field(default_factory=lambda: [0.5, 0.3, 0.2])
    weights: str = "random"  # random (non-trivial), init (as initialized: untrained), nan
    save: str = "full"  # full (model.save .h5) or weights (Keras 3 .weights.h5)
    lambda_string: bool = False  # rewrite stored lambdas as the older "<lambda>" string
    legacy_optimizer: bool = False  # the lab variant's optimizers.legacy.Nadam (tf_keras)
    lambda_form: str = "closure"  # closure (fit_CNN.py), literal (slope 0.3 in the code), global

    @property
    def architecture_dict(self) -> dict:
        depth = len(self.filters)
        return {
            "network_depth": depth,
            "input_window_size": self.window,
            "num_filters_per_layer": self.filters,
            "initializer_per_layer": [0.002] * depth,
            "filter_sizes_per_layer": self.filter_sizes,
            "l2_regularization_per_layer": [1e-8] * depth,
            "activation_function_per_layer": self.activations,
            "strides_per_layer": [1] * depth,
            "dilation_rates_per_layer": self.dilations or [1] * depth,
        }


BUILDER = r"""
import json, math, pickle
import h5py, numpy as np
import keras, tf_keras
from tests.conversion.keras_zoo import set_test_weights

GLOBAL_SLOPE = 0.3
# Lab variants of the 'lrelu' lambda: the slope written in the code, or read from a module-level name.
OTHER_LAMBDAS = {"literal": lambda x: LeakyReLU(alpha=0.3)(x), "global": lambda x: LeakyReLU(alpha=GLOBAL_SLOPE)(x)}

def create_temporaly_convolutional_model(K, spec, arch):
    binary_input_mat = K.Input(shape=(arch["input_window_size"], spec["segments"]), name="input_layer")
    x = binary_input_mat
    for k in range(arch["network_depth"]):
        activation = arch["activation_function_per_layer"][k]
        if activation == "lrelu" and spec["lambda_form"] != "closure":
            activation = OTHER_LAMBDAS[spec["lambda_form"]]
        elif activation == "lrelu":
            leaky_relu_slope = spec["slope"]
            activation = lambda x: LeakyReLU(alpha=leaky_relu_slope)(x)
        initializer = K.initializers.TruncatedNormal(stddev=arch["initializer_per_layer"][k])
        x = K.layers.Conv1D(arch["num_filters_per_layer"][k], arch["filter_sizes_per_layer"][k], activation=activation,
                            kernel_initializer=initializer,
                            kernel_regularizer=K.regularizers.l2(arch["l2_regularization_per_layer"][k]),
                            strides=arch["strides_per_layer"][k], dilation_rate=arch["dilation_rates_per_layer"][k],
                            padding="causal", name="layer_%d" % (k + 1))(x)
        x = K.layers.BatchNormalization(name="layer_%d_BN" % (k + 1))(x)
    heads = {
        "spikes": K.layers.Conv1D(1, 1, activation="sigmoid",
                                  kernel_initializer=K.initializers.TruncatedNormal(stddev=0.001),
                                  bias_initializer=K.initializers.Constant(value=-2.0),
                                  kernel_regularizer=K.regularizers.l2(1e-8), padding="causal", name="spikes"),
        "somatic": K.layers.Conv1D(1, 1, activation="linear",
                                   kernel_initializer=K.initializers.TruncatedNormal(stddev=0.03),
                                   kernel_regularizer=K.regularizers.l2(1e-8), padding="causal", name="somatic"),
        "dendritic": K.layers.Conv1D(spec["num_dvt"], 1, activation="linear",
                                     kernel_initializer=K.initializers.TruncatedNormal(stddev=0.05),
                                     kernel_regularizer=K.regularizers.l2(1e-8), padding="causal",
                                     name="dendritic")}
    outputs = [heads[name](x) for name in spec["heads"]]
    model = K.Model(inputs=binary_input_mat, outputs=outputs)
    if spec["flavour"] == "keras2":
        nadam = K.optimizers.legacy.Nadam if spec["legacy_optimizer"] else K.optimizers.Nadam
        optimizer = nadam(lr=0.0001)                       # as fit_CNN.py writes it
    else:
        optimizer = K.optimizers.Nadam(learning_rate=0.0001)  # Keras 3 refuses lr=
    model.compile(optimizer=optimizer, loss=["binary_crossentropy", "mse", "mse"][:len(outputs)],
                  loss_weights=[1.0, 0.006, 0.002][:len(outputs)])
    return model

def training_record(spec, arch):
    history = [float(v) for v in spec["history"]]
    epochs = len(history)
    record = {"loss": [1.0] * epochs, "spikes_loss": history, "somatic_loss": [0.5] * epochs,
              "val_loss": [1.1] * epochs, "val_spikes_loss": history, "val_somatic_loss": [0.6] * epochs,
              "learning_schedule": list(range(epochs)), "batch_size": [8] * epochs,
              "learning_rate": [0.0001] * epochs, "loss_weights": [[1.0, 0.02, 0.00005]] * epochs,
              "num_train_samples": [800] * epochs, "num_train_steps": [100] * epochs,
              "train_files_histogram": [{"sim_0.p": 60}] * epochs, "valid_files_histogram": [{"sim_1.p": 30}] * epochs}
    if "dendritic" in spec["heads"]:
        record.update(dendritic_loss=[0.1] * epochs, val_dendritic_loss=[0.12] * epochs)
    return {"data_dict": {"train_files": ["/data/train/sim_0.p"], "valid_files": ["/data/valid/sim_1.p"],
                          "test_files": ["/data/test/sim_2.p"]},
            "architecture_dict": arch,
            "learning_schedule_dict": {"num_epochs": epochs, "batch_size_per_epoch": [8] * epochs,
                                       "learning_rate_per_epoch": [0.0001] * epochs},
            "training_history_dict": record}

def rewrite_lambdas_as_string(path):
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if isinstance(layer["config"].get("activation"), dict):
                layer["config"]["activation"] = "<lambda>"
        f.attrs["model_config"] = json.dumps(config)

for spec in json.load(open("published_spec.json")):
    K = tf_keras if spec["flavour"] == "keras2" else keras
    LeakyReLU = K.layers.LeakyReLU  # a module-level name, as fit_CNN.py imports it: not in the lambda's closure
    arch = spec["architecture"]
    K.utils.set_random_seed(len(spec["stem"]))
    model = create_temporaly_convolutional_model(K, spec, arch)
    rng = np.random.default_rng(len(spec["stem"]))
    x = (rng.random((4, arch["input_window_size"], spec["segments"])) < 0.03).astype("float32")
    targets = [rng.random((4, arch["input_window_size"], int(o.shape[-1]))).astype("float32") for o in model.outputs]
    model.fit(x, targets, batch_size=2, epochs=1, verbose=0)  # optimizer state in the file, as after training
    if spec["weights"] != "init":
        set_test_weights(model, rng, 1.0)
    if spec["weights"] == "nan":  # a diverged run: the weights saved at its end are NaN
        for name in ("layer_2", "spikes"):
            layer = model.get_layer(name)
            layer.set_weights([np.full(w.shape, np.nan, "float32") for w in layer.get_weights()])
    if spec["save"] == "weights":
        model.save_weights(spec["stem"] + ".weights.h5")
    else:
        model.save(spec["stem"] + ".h5")
        if spec["lambda_string"]:
            rewrite_lambdas_as_string(spec["stem"] + ".h5")
    outputs = model.predict(x, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    np.savez(spec["stem"] + ".io.npz", x=x, **{f"y{i}": np.asarray(y) for i, y in enumerate(outputs)})
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    json.dump({"count_params": int(model.count_params()), "trainable_params": trainable},
              open(spec["stem"] + ".meta.json", "w"))
    with open(spec["stem"] + ".pickle", "wb") as f:
        pickle.dump(training_record(spec, arch), f, protocol=2)
"""


def write_published_models(folder: Path, models: list[PublishedModel]) -> Path:
    """Write every model (its Keras file, pickle and Keras predictions) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = [
        {
            **asdict(model),
            "architecture": model.architecture_dict,
            "history": [("nan" if math.isnan(v) else v) for v in model.history],
        }
        for model in models
    ]
    (folder / "published_spec.json").write_text(json.dumps(specs))
    # Run from a file, as fit_CNN.py runs: Keras reads the lambdas' source when it traces them.
    (folder / "fit_cnn_reproduction.py").write_text(BUILDER)
    run_keras_script("import runpy; runpy.run_path('fit_cnn_reproduction.py', run_name='__main__')", folder)
    for scratch in ("published_spec.json", "fit_cnn_reproduction.py"):
        (folder / scratch).unlink()
    return folder


def keras_io(folder: Path, stem: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """The binary-spike input and Keras's outputs saved beside a built model."""
    with np.load(folder / f"{stem}.io.npz") as data:
        return data["x"], [data[f"y{i}"] for i in range(len(data.files) - 1)]


def keras_counts(folder: Path, stem: str) -> dict[str, int]:
    """Keras's count_params() (every weight) and its trainable share, for a built model."""
    return json.loads((folder / f"{stem}.meta.json").read_text())


def without_keras_extras(folder: Path, target: Path, stems: list[str]) -> Path:
    """A copy of the named models' files (Keras file, pickle) as a researcher keeps them: no .io/.meta files."""
    target.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        for path in folder.glob(f"{stem}.*"):
            if path.name.split(".", 1)[1] in ("h5", "weights.h5", "keras", "pickle"):
                (target / path.name).write_bytes(path.read_bytes())
    return target

"""Train the shipped demo TCNs on the demo neuron and write them in the users' file formats.

    .venv/bin/python tools/train_demo_models.py [--seed 20261126] [--out-dir demo_models]

Simulates the neuron of ``ground_truth/demo/`` on Bernoulli inputs whose rates change every 10-300 ms and differ per compartment
(balanced, quiet, disinhibited and primed-compartment periods, plus synchronous volleys of 2-5 spikes and short
excitatory silences), trains Beniaguev-style Keras TCNs of different depth and width on it (spikes: binary
cross-entropy; soma and dendrites: MSE), and saves each as ``.h5`` (Keras 3 legacy HDF5, no optimizer state) +
``.pickle`` (protocol 2, plain Python types only, with the statistics of the training inputs under
``data_dict['input_regime']``, optimization/regime.py) named like the originals. Held-out spike AUC and soma RMSE go to
stdout and to ``<out-dir>/training_report.json``. Everything random is drawn from ``--seed`` and TensorFlow runs
with op determinism, so a rerun reproduces the files; the date in the file names is fixed (MODEL_DATE) so that names
do not depend on when the script ran. Takes about 9 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from fileio import atomic_paths, write_atomically, write_text_atomic  # noqa: E402
from ground_truth.demo import NeuronConfig, compartment_of_segments, simulate  # noqa: E402
from optimization.regime import REGIME_KEY, InputRegime, RegimeAccumulator  # noqa: E402

DEFAULT_SEED = 20261126
MODEL_TYPE = "SIMNMDA"
MODEL_DATE = "2026-11-26__12_00"  # fixed, so that the file names are reproducible
INPUT_WINDOW_MS = 200
TRIAL_DURATION_MS = 3000
NUM_TRIALS = {"train": 2048, "valid": 64, "test": 64}  # drawn in this order from data_generator(seed)
SIMULATION_CHUNK = 128  # trials simulated at once (bounds memory)

# Input statistics of the training data (spikes/ms per segment). Each trial is a sequence of periods with constant
# rates; a period is balanced (inhibition = excitation x ratio, near the firing threshold) unless it is one of the
# PERIOD_KINDS, which scale the balanced rates: (probability, excitation factor range, inhibition factor range).
EXC_RATE_RANGE = (0.003, 0.025)
INH_TO_EXC_RATIO_RANGE = (1.6, 2.8)  # rarely reaches 100+ Hz runs, whose spike timing no TCN predicts well
COMPARTMENT_RATE_SPREAD = 0.3  # sigma of the log-normal per-compartment rate factor
PERIOD_DURATION_RANGE_MS = (10, 300)  # log-uniform
PERIOD_KINDS = {
    "quiet": (0.15, (0.1, 0.1), (1.0, 1.0)),  # excitation cut: the neuron rides on NMDA tails
    "disinhibited": (0.15, (0.1, 0.25), (0.2, 0.6)),  # weak excitation, little inhibition
}
PRIMED_PERIOD_PROBABILITY = 0.15  # one compartment's excitation tripled: a depolarized dendrite
VOLLEYS_PER_SECOND = 5.0
VOLLEY_SIZE_RANGE = (2, 5)
GAPS_PER_SECOND = 3.0  # all excitatory input silent for a few ms, as optimized rates often are before a stimulus
GAP_DURATION_RANGE_MS = (5, 20)

# Target processing as in the original fit_CNN.py.
SOMA_CLIP_MV = -55.0
SOMA_BIAS_MV = -67.7
DENDRITIC_CLIP = 3.0


@dataclass(frozen=True)
class Architecture:
    """One TCN: filters per layer and kernel size per layer (causal Conv1D + BatchNormalization each)."""

    num_filters_per_layer: tuple[int, ...]
    filter_sizes_per_layer: tuple[int, ...]

    @property
    def depth(self) -> int:
        return len(self.filter_sizes_per_layer)

    @property
    def receptive_field(self) -> int:
        return sum(size - 1 for size in self.filter_sizes_per_layer) + 1


ARCHITECTURES = (
    Architecture((32, 32), (45, 11)),
    Architecture((24, 24, 24), (41, 11, 11)),
    Architecture((32, 32, 32, 32), (41, 13, 13, 13)),
)

# Learning schedule: stages of (learning rate, loss weights [spikes, somatic, dendritic]), each run for
# EPOCHS_PER_STAGE Keras epochs of STEPS_PER_EPOCH batches (the original's num_steps_multiplier).
STAGES = (
    (3e-3, [1.0, 0.02, 0.01]),
    (1e-3, [2.0, 0.01, 0.005]),
    (3e-4, [4.0, 0.01, 0.002]),
)
EPOCHS_PER_STAGE = 6
STEPS_PER_EPOCH = 100
BATCH_SIZE = 32
NUM_VALID_WINDOWS = 256


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def draw_trial_rates(config: NeuronConfig, duration_ms: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant rates (T, segments) for one trial, excitatory and inhibitory."""
    exc_compartment = compartment_of_segments(config.num_excitatory_segments, config.num_compartments)
    inh_compartment = compartment_of_segments(config.num_inhibitory_segments, config.num_compartments)
    exc_rates = np.empty((duration_ms, config.num_excitatory_segments))
    inh_rates = np.empty((duration_ms, config.num_inhibitory_segments))
    start = 0
    while start < duration_ms:
        stop = start + int(np.exp(rng.uniform(*np.log(PERIOD_DURATION_RANGE_MS))))
        exc_level = rng.uniform(*EXC_RATE_RANGE)
        inh_level = exc_level * rng.uniform(*INH_TO_EXC_RATIO_RANGE)
        per_compartment_exc = exc_level * rng.lognormal(0.0, COMPARTMENT_RATE_SPREAD, config.num_compartments)
        per_compartment_inh = inh_level * rng.lognormal(0.0, COMPARTMENT_RATE_SPREAD, config.num_compartments)
        per_compartment_exc, per_compartment_inh = modulate_period(per_compartment_exc, per_compartment_inh, rng)
        exc_rates[start:stop] = per_compartment_exc[exc_compartment]
        inh_rates[start:stop] = per_compartment_inh[inh_compartment]
        start = stop
    return exc_rates, inh_rates


def modulate_period(exc: np.ndarray, inh: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Turn balanced per-compartment rates into one of the PERIOD_KINDS or a primed period, at their probabilities."""
    draw = rng.random()
    for probability, exc_factor, inh_factor in PERIOD_KINDS.values():
        if draw < probability:
            return exc * rng.uniform(*exc_factor), inh * rng.uniform(*inh_factor)
        draw -= probability
    if draw < PRIMED_PERIOD_PROBABILITY:
        exc = exc.copy()
        exc[rng.integers(exc.size)] *= 3.0
    return exc, inh


def add_volleys(exc_spikes: np.ndarray, config: NeuronConfig, rng: np.random.Generator) -> None:
    """Put synchronous volleys (2-5 excitatory segments in the same ms) into one trial (T, segments), in place.

    Half of the volleys hit one compartment, half land anywhere: stimuli chosen downstream may be either.
    """
    duration_ms = exc_spikes.shape[0]
    exc_compartment = compartment_of_segments(config.num_excitatory_segments, config.num_compartments)
    for _ in range(rng.poisson(VOLLEYS_PER_SECOND * duration_ms / 1000.0)):
        if rng.random() < 0.5:
            members = np.flatnonzero(exc_compartment == rng.integers(config.num_compartments))
        else:
            members = np.arange(config.num_excitatory_segments)
        size = min(int(rng.integers(*VOLLEY_SIZE_RANGE, endpoint=True)), members.size)
        exc_spikes[rng.integers(duration_ms), rng.choice(members, size, replace=False)] = 1


def add_gaps(exc_spikes: np.ndarray, rng: np.random.Generator) -> None:
    """Silence all excitatory segments of one trial (T, segments) for a few ms at random times, in place."""
    duration_ms = exc_spikes.shape[0]
    for _ in range(rng.poisson(GAPS_PER_SECOND * duration_ms / 1000.0)):
        start = rng.integers(duration_ms)
        exc_spikes[start : start + rng.integers(*GAP_DURATION_RANGE_MS, endpoint=True)] = 0


def data_generator(seed: int) -> np.random.Generator:
    """The generator of all training data: the splits of NUM_TRIALS are drawn from it one after another."""
    return np.random.default_rng([seed, 0])


def draw_trial_inputs(config: NeuronConfig, rng: np.random.Generator):
    """One trial (T, segments) each: generator rates (excitatory, inhibitory) and input spikes (uint8, same order).

    The excitatory spikes include the volleys and gaps, which the rates do not describe.
    """
    exc_rates, inh_rates = draw_trial_rates(config, TRIAL_DURATION_MS, rng)
    exc_spikes = (rng.random(exc_rates.shape) < exc_rates).astype(np.uint8)
    inh_spikes = (rng.random(inh_rates.shape) < inh_rates).astype(np.uint8)
    add_volleys(exc_spikes, config, rng)
    add_gaps(exc_spikes, rng)
    return exc_rates, inh_rates, exc_spikes, inh_spikes


def simulate_dataset(config: NeuronConfig, num_trials: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs (N, T, segments) uint8 with excitatory first, and the neuron's spikes, soma and dendritic voltages.

    Only the inputs consume `rng`; the simulation is deterministic.
    """
    n_exc = config.num_excitatory_segments
    inputs = np.empty((num_trials, TRIAL_DURATION_MS, config.num_segments), dtype=np.uint8)
    for trial in range(num_trials):
        _, _, exc_spikes, inh_spikes = draw_trial_inputs(config, rng)
        inputs[trial, :, :n_exc] = exc_spikes
        inputs[trial, :, n_exc:] = inh_spikes
    chunks = [
        simulate(inputs[chunk, :, :n_exc], inputs[chunk, :, n_exc:], config)
        for chunk in np.array_split(np.arange(num_trials), max(1, num_trials // SIMULATION_CHUNK))
    ]
    return {
        "inputs": inputs,
        "spikes": np.concatenate([chunk.spikes for chunk in chunks]),
        "soma_v": np.concatenate([chunk.soma_v for chunk in chunks]),
        "dend_v": np.concatenate([chunk.dend_v for chunk in chunks]),
    }


def training_input_regime(config: NeuronConfig, seed: int) -> InputRegime:
    """The statistics of the train split's inputs (optimization/regime.py), redrawn from the seed trial by trial.

    The train split is the first one drawn from data_generator(seed) and only the inputs consume the generator,
    so drawing NUM_TRIALS["train"] trials' inputs reproduces the training inputs without simulating the neuron.
    """
    rng = data_generator(seed)
    accumulator = RegimeAccumulator()
    for _ in range(NUM_TRIALS["train"]):
        exc_rates, inh_rates, exc_spikes, _ = draw_trial_inputs(config, rng)
        accumulator.add(exc_rates[None], inh_rates[None], exc_spikes[None])
    return accumulator.result(
        "tools/train_demo_models.py --seed %d: the %d train trials of %d ms; rates are the generator's "
        "(without the volleys and gaps), synchrony counts the input spikes (volleys and gaps included)"
        % (seed, NUM_TRIALS["train"], TRIAL_DURATION_MS)
    )


def soma_targets(soma_v: np.ndarray) -> np.ndarray:
    """Soma voltage clipped at -55 mV (removes spikes) and shifted by +67.7 mV, as in the original training."""
    return (np.minimum(soma_v, SOMA_CLIP_MV) - SOMA_BIAS_MV).astype(np.float32)


class DendriticTargets:
    """Whitened PCA of the compartment voltages, clipped to +-3, as the original did with its dendritic traces."""

    def __init__(self, train_dend_v: np.ndarray):
        from sklearn.decomposition import PCA

        flat = train_dend_v.reshape(-1, train_dend_v.shape[-1])
        self.pca = PCA(n_components=flat.shape[1], whiten=True).fit(flat)

    def __call__(self, dend_v: np.ndarray) -> np.ndarray:
        flat = self.pca.transform(dend_v.reshape(-1, dend_v.shape[-1]))
        return np.clip(flat, -DENDRITIC_CLIP, DENDRITIC_CLIP).reshape(dend_v.shape).astype(np.float32)

    def as_plain_dict(self) -> dict:
        """PCA parameters as lists of floats, so that the pickle needs no numpy to be read."""
        return {
            "dendritic_pca_mean": self.pca.mean_.tolist(),
            "dendritic_pca_components": self.pca.components_.tolist(),
            "dendritic_pca_explained_variance": self.pca.explained_variance_.tolist(),
            "dendritic_clip": DENDRITIC_CLIP,
        }


def prepare_split(data: dict[str, np.ndarray], dendritic: DendriticTargets) -> dict[str, np.ndarray]:
    """Network inputs and the three targets of one split, aligned in time."""
    return {
        "inputs": data["inputs"],
        "spikes": data["spikes"][..., None].astype(np.float32),
        "somatic": soma_targets(data["soma_v"])[..., None],
        "dendritic": dendritic(data["dend_v"]),
    }


def window_batch(split: dict[str, np.ndarray], trials: np.ndarray, starts: np.ndarray):
    """Slice (inputs, targets) windows of INPUT_WINDOW_MS at the given trials and start times."""
    offsets = starts[:, None] + np.arange(INPUT_WINDOW_MS)

    def pick(array: np.ndarray) -> np.ndarray:
        return array[trials[:, None], offsets]

    return pick(split["inputs"]), {name: pick(split[name]) for name in ("spikes", "somatic", "dendritic")}


def random_windows(split: dict[str, np.ndarray], count: int, rng: np.random.Generator):
    """``count`` windows at uniformly random trials and start times."""
    trials = rng.integers(split["inputs"].shape[0], size=count)
    starts = rng.integers(split["inputs"].shape[1] - INPUT_WINDOW_MS + 1, size=count)
    return window_batch(split, trials, starts)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def build_model(architecture: Architecture, num_segments: int, num_dendritic: int):
    """The Beniaguev TCN: causal Conv1D -> BatchNormalization per layer; heads spikes, somatic, dendritic."""
    import keras
    from keras import initializers, layers, regularizers

    inputs = keras.Input(shape=(INPUT_WINDOW_MS, num_segments), name="input_layer")
    x = inputs
    for k, (filters, size) in enumerate(
        zip(architecture.num_filters_per_layer, architecture.filter_sizes_per_layer), start=1
    ):
        x = layers.Conv1D(
            filters,
            size,
            activation="relu",
            padding="causal",
            name="layer_%d" % k,
            kernel_initializer=initializers.TruncatedNormal(stddev=0.02),
            kernel_regularizer=regularizers.l2(1e-8),
        )(x)
        x = layers.BatchNormalization(name="layer_%d_BN" % k)(x)
    spikes = layers.Conv1D(
        1,
        1,
        activation="sigmoid",
        name="spikes",
        kernel_initializer=initializers.TruncatedNormal(stddev=0.001),
        bias_initializer=initializers.Constant(-2.0),
    )(x)
    somatic = layers.Conv1D(
        1, 1, activation="linear", name="somatic", kernel_initializer=initializers.TruncatedNormal(stddev=0.03)
    )(x)
    dendritic = layers.Conv1D(
        num_dendritic,
        1,
        activation="linear",
        name="dendritic",
        kernel_initializer=initializers.TruncatedNormal(stddev=0.05),
    )(x)
    return keras.Model(inputs, [spikes, somatic, dendritic])


def train(model, train_split, valid_windows, rng: np.random.Generator) -> dict:
    """Run the staged schedule; return the training_history_dict in the original layout."""
    import keras

    class RandomWindows(keras.utils.PyDataset):
        """Fresh random windows for every batch, drawn from the seeded generator."""

        def __len__(self):
            return STEPS_PER_EPOCH

        def __getitem__(self, index):
            return random_windows(train_split, BATCH_SIZE, rng)

    history: dict[str, list] = {}
    for stage, (learning_rate, loss_weights) in enumerate(STAGES):
        model.compile(
            optimizer=keras.optimizers.Nadam(learning_rate=learning_rate),
            loss={"spikes": "binary_crossentropy", "somatic": "mse", "dendritic": "mse"},
            loss_weights=dict(zip(("spikes", "somatic", "dendritic"), loss_weights)),
        )
        fitted = model.fit(RandomWindows(), epochs=EPOCHS_PER_STAGE, validation_data=valid_windows, verbose=0)
        stage_record = {key: [float(v) for v in values] for key, values in fitted.history.items()}
        stage_record.update(
            {
                "learning_schedule": [stage] * EPOCHS_PER_STAGE,
                "batch_size": [BATCH_SIZE] * EPOCHS_PER_STAGE,
                "learning_rate": [learning_rate] * EPOCHS_PER_STAGE,
                "loss_weights": [list(loss_weights)] * EPOCHS_PER_STAGE,
                "num_train_samples": [BATCH_SIZE * STEPS_PER_EPOCH] * EPOCHS_PER_STAGE,
                "num_train_steps": [STEPS_PER_EPOCH] * EPOCHS_PER_STAGE,
                "train_files_histogram": [{"simulated_train_trials": STEPS_PER_EPOCH * EPOCHS_PER_STAGE}],
                "valid_files_histogram": [{"simulated_valid_trials": EPOCHS_PER_STAGE}],
            }
        )
        for key, values in stage_record.items():
            history.setdefault(key, []).extend(values)
        print(
            "    stage %d: lr %.0e  loss %.4f  val_spikes_loss %.4f"
            % (stage, learning_rate, history["loss"][-1], history["val_spikes_loss"][-1]),
            flush=True,
        )
    return history


def predict_trials(model, inputs: np.ndarray, receptive_field: int) -> tuple[np.ndarray, np.ndarray]:
    """Spike probability and soma prediction for whole trials from overlapping windows.

    Every bin is taken from a window that holds its full receptive field (the first window's early bins see the
    trial start, where zero padding is the truth: no input came before).
    """
    duration = inputs.shape[1]
    stride = INPUT_WINDOW_MS - (receptive_field - 1)
    starts = list(range(0, duration - INPUT_WINDOW_MS + 1, stride))
    if starts[-1] != duration - INPUT_WINDOW_MS:
        starts.append(duration - INPUT_WINDOW_MS)
    windows = np.stack([inputs[:, s : s + INPUT_WINDOW_MS] for s in starts], axis=1)
    flat = windows.reshape(-1, INPUT_WINDOW_MS, inputs.shape[2])
    spike_pred, soma_pred, _ = model.predict(flat, batch_size=256, verbose=0)
    spike_pred = spike_pred.reshape(inputs.shape[0], len(starts), INPUT_WINDOW_MS)
    soma_pred = soma_pred.reshape(inputs.shape[0], len(starts), INPUT_WINDOW_MS)
    spikes = np.empty(inputs.shape[:2], dtype=np.float32)
    soma = np.empty(inputs.shape[:2], dtype=np.float32)
    for index, start in enumerate(starts):
        first_valid = 0 if index == 0 else receptive_field - 1
        spikes[:, start + first_valid : start + INPUT_WINDOW_MS] = spike_pred[:, index, first_valid:]
        soma[:, start + first_valid : start + INPUT_WINDOW_MS] = soma_pred[:, index, first_valid:]
    return spikes, soma


def evaluate(model, test_split, receptive_field: int) -> dict[str, float]:
    """Held-out spike AUC over 1 ms bins and soma RMSE (mV, on the clipped target)."""
    from sklearn.metrics import roc_auc_score

    spike_prob, soma_pred = predict_trials(model, test_split["inputs"], receptive_field)
    truth = test_split["spikes"][..., 0]
    return {
        "held_out_spike_auc": float(roc_auc_score(truth.ravel(), spike_prob.ravel())),
        "held_out_soma_rmse_mv": float(np.sqrt(np.mean((soma_pred - test_split["somatic"][..., 0]) ** 2))),
    }


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def model_stem(architecture: Architecture, history: dict, num_samples: int, model_id: int) -> str:
    """The original naming pattern: <type>_TCN__DxWxT_<D>x<W>x<T>__<date>__samples_<N>__LogLoss_..__ID_<n>."""
    last = slice(-7, None) if len(history["val_spikes_loss"]) >= 10 else slice(None)
    train_log_loss = 10000 * np.mean(history["spikes_loss"][last])
    valid_log_loss = 10000 * np.mean(history["val_spikes_loss"][last])
    width = int(np.mean(architecture.num_filters_per_layer))
    return "%s_TCN__DxWxT_%dx%dx%d__%s__samples_%d__LogLoss_train_%d_valid_%d__ID_%d" % (
        MODEL_TYPE,
        architecture.depth,
        width,
        architecture.receptive_field,
        MODEL_DATE,
        num_samples,
        train_log_loss,
        valid_log_loss,
        model_id,
    )


def architecture_dict(architecture: Architecture) -> dict:
    depth = architecture.depth
    return {
        "network_depth": depth,
        "input_window_size": INPUT_WINDOW_MS,
        "num_filters_per_layer": list(architecture.num_filters_per_layer),
        "initializer_per_layer": [0.02] * depth,
        "filter_sizes_per_layer": list(architecture.filter_sizes_per_layer),
        "l2_regularization_per_layer": [1e-8] * depth,
        "activation_function_per_layer": ["relu"] * depth,
        "strides_per_layer": [1] * depth,
        "dilation_rates_per_layer": [1] * depth,
    }


def learning_schedule_dict() -> dict:
    num_epochs = len(STAGES) * EPOCHS_PER_STAGE
    train_ms = NUM_TRIALS["train"] * TRIAL_DURATION_MS
    return {
        "train_file_load": STEPS_PER_EPOCH * BATCH_SIZE * INPUT_WINDOW_MS / train_ms,
        "valid_file_load": NUM_VALID_WINDOWS * INPUT_WINDOW_MS / (NUM_TRIALS["valid"] * TRIAL_DURATION_MS),
        "validation_fraction": NUM_TRIALS["valid"] / NUM_TRIALS["train"],
        "num_epochs": len(STAGES),
        "num_steps_multiplier": EPOCHS_PER_STAGE,
        "batch_size_per_epoch": [BATCH_SIZE] * len(STAGES),
        "loss_weights_per_epoch": [list(weights) for _, weights in STAGES],
        "learning_rate_per_epoch": [rate for rate, _ in STAGES],
        "num_train_steps_per_epoch": [STEPS_PER_EPOCH] * len(STAGES),
        "num_keras_epochs": num_epochs,
    }


def split_description(split: str, seed: int) -> list[str]:
    """data_dict's `<split>_files`: the original's list of data files, here a description of the simulated split."""
    return ["simulated:%s:trials_%d:duration_ms_%d:seed_%d" % (split, NUM_TRIALS[split], TRIAL_DURATION_MS, seed)]


def data_dict(
    config: NeuronConfig,
    seed: int,
    dendritic: DendriticTargets,
    output_rates_hz: dict,
    metrics: dict,
    regime: InputRegime,
) -> dict:
    return {
        "train_files": split_description("train", seed),
        "valid_files": split_description("valid", seed),
        "test_files": split_description("test", seed),
        "simulator_config": config.to_dict(),
        "num_excitatory_segments": config.num_excitatory_segments,
        "num_inhibitory_segments": config.num_inhibitory_segments,
        "input_window_size": INPUT_WINDOW_MS,
        "trial_duration_ms": TRIAL_DURATION_MS,
        "data_seed": seed,
        "output_spike_rate_hz": output_rates_hz,
        "y_soma_threshold": SOMA_CLIP_MV,
        "y_train_soma_bias": SOMA_BIAS_MV,
        **dendritic.as_plain_dict(),
        **metrics,
        REGIME_KEY: regime.to_dict(),
        "training_script": "tools/train_demo_models.py",
    }


MODEL_FILE_PATTERN = re.compile(rf"^{MODEL_TYPE}_TCN__DxWxT_\d+x\d+x\d+__.*__ID_\d+\.(h5|pickle)$")


def remove_previous_models(out_dir: Path) -> None:
    """Drop models of an earlier run (their names carry losses, so new files would not overwrite them).

    Only files named exactly like a model go; anything else in the folder (e.g. converted caches) stays.
    """
    for path in out_dir.iterdir():
        if MODEL_FILE_PATTERN.match(path.name):
            path.unlink()


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of all randomness (default %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "demo_models", help="output folder")
    args = parser.parse_args(argv)
    started = time.time()

    import absl.logging
    import keras
    import sklearn
    import tensorflow as tf

    absl.logging.set_verbosity(absl.logging.ERROR)  # silences Keras' "HDF5 is legacy" note: .h5 is what users have
    tf.get_logger().setLevel("ERROR")
    tf.config.experimental.enable_op_determinism()
    config = NeuronConfig()
    data_rng = data_generator(args.seed)
    print("simulating %s trials of %d ms ..." % (NUM_TRIALS, TRIAL_DURATION_MS), flush=True)
    raw = {split: simulate_dataset(config, count, data_rng) for split, count in NUM_TRIALS.items()}
    regime = training_input_regime(config, args.seed)
    output_rates_hz = {split: float(raw[split]["spikes"].mean() * 1000) for split in raw}
    print(
        f"  output rate (Hz): { ({k: round(v, 1) for k, v in output_rates_hz.items()}) }   [{time.time() - started:.0f} s]",
        flush=True,
    )
    dendritic = DendriticTargets(raw["train"]["dend_v"])
    splits = {split: prepare_split(raw[split], dendritic) for split in raw}
    valid_windows = random_windows(splits["valid"], NUM_VALID_WINDOWS, np.random.default_rng([args.seed, 1]))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    remove_previous_models(args.out_dir)
    reports = []
    for index, architecture in enumerate(ARCHITECTURES):
        model_started = time.time()
        keras.utils.set_random_seed(args.seed + index)
        model = build_model(architecture, config.num_segments, config.num_compartments)
        print(
            "model %d: depth %d, filters %s, kernels %s, T %d, %d parameters"
            % (
                index,
                architecture.depth,
                architecture.num_filters_per_layer,
                architecture.filter_sizes_per_layer,
                architecture.receptive_field,
                model.count_params(),
            ),
            flush=True,
        )
        history = train(model, splits["train"], valid_windows, np.random.default_rng([args.seed, 2, index]))
        metrics = evaluate(model, splits["test"], architecture.receptive_field)
        model_id = int(np.random.default_rng([args.seed, 3, index]).integers(100000))
        stem = model_stem(architecture, history, sum(history["num_train_samples"]), model_id)
        h5_path = args.out_dir / (stem + ".h5")
        pickle_path = args.out_dir / (stem + ".pickle")
        # Without optimizer state: a third of the size, and Keras 3 reloads it without compile=False.
        with atomic_paths(h5_path) as (temporary,):
            model.save(str(temporary), include_optimizer=False)
        auxiliary = {
            "data_dict": data_dict(config, args.seed, dendritic, output_rates_hz, metrics, regime),
            "architecture_dict": architecture_dict(architecture),
            "learning_schedule_dict": learning_schedule_dict(),
            "training_history_dict": history,
        }
        write_atomically(pickle_path, lambda handle: handle.write(pickle.dumps(auxiliary, protocol=2)))  # noqa: B023 (runs at once)
        report = {
            "name": stem,
            "h5_file": h5_path.name,
            "pickle_file": pickle_path.name,
            "h5_bytes": h5_path.stat().st_size,
            "pickle_bytes": pickle_path.stat().st_size,
            "network_depth": architecture.depth,
            "num_filters_per_layer": list(architecture.num_filters_per_layer),
            "filter_sizes_per_layer": list(architecture.filter_sizes_per_layer),
            "receptive_field_ms": architecture.receptive_field,
            "num_parameters": int(model.count_params()),
            **metrics,
            "final_val_spikes_loss": history["val_spikes_loss"][-1],
            "training_seconds": round(time.time() - model_started, 1),
        }
        reports.append(report)
        print(
            "  {}\n  held-out spike AUC {:.4f}, soma RMSE {:.3f} mV   [{:.0f} s]".format(
                h5_path.name,
                metrics["held_out_spike_auc"],
                metrics["held_out_soma_rmse_mv"],
                time.time() - model_started,
            ),
            flush=True,
        )

    training_report = {
        "seed": args.seed,
        "command": "python tools/train_demo_models.py --seed %d" % args.seed,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "duration_seconds": round(time.time() - started, 1),
        "data": {
            "trials": NUM_TRIALS,
            "trial_duration_ms": TRIAL_DURATION_MS,
            "output_spike_rate_hz": output_rates_hz,
            "simulator_config": config.to_dict(),
        },
        "metrics_note": "AUC over all 1 ms bins of the held-out test trials (roc_auc_score); soma RMSE in mV on the "
        "target (soma clipped at -55 mV, shifted by +67.7 mV).",
        "models": reports,
    }
    write_text_atomic(args.out_dir / "training_report.json", json.dumps(training_report, indent=2) + "\n")
    print(
        "wrote %d models and training_report.json to %s in %.0f s" % (len(reports), args.out_dir, time.time() - started)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the model of the NEURON ground-truth example on simulations of its reference cell, in NEURON.

    .venv/bin/python tools/train_neuron_example.py [--seed 20261202] [--out-dir examples/neuron_ground_truth/models]

The reference cell (examples/neuron_ground_truth/cell.hoc: an hh soma and three passive dendrites, 32 segments) is
driven through the project's own NEURON backend (ground_truth.neuron_backend, the settings of
examples/neuron_ground_truth/config.yaml): one excitatory (AMPA + NMDA) and one inhibitory (GABA-A) synapse per
segment, so 32 + 32 input channels. Inputs are drawn like the demo models' (tools/train_demo_models.py: periods of
constant rates per block of segments, volleys, excitatory gaps), with four blocks of 8 segments in the place of the
demo neuron's compartments. A Beniaguev-style Keras TCN with the heads `spikes` and `somatic` learns the cell's
spikes and clipped soma voltage; it is saved as `.h5` + `.pickle` (with `data_dict['input_regime']`) named like the
originals, and the explicit synapse map of the default placement is written beside the cell
(synapse_map.csv). Takes about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from fileio import atomic_paths, write_atomically, write_text_atomic  # noqa: E402
from ground_truth.demo import NeuronConfig  # noqa: E402
from ground_truth.neuron_backend.config import NeuronBackendConfig  # noqa: E402
from ground_truth.neuron_backend.simulator import NeuronSimulator  # noqa: E402
from ground_truth.runner import TrialRunner  # noqa: E402
from optimization.regime import REGIME_KEY, RegimeAccumulator  # noqa: E402
from tools.train_demo_models import (
    SOMA_BIAS_MV,
    SOMA_CLIP_MV,
    Architecture,
    architecture_dict,  # noqa: E402
    draw_trial_inputs,
    soma_targets,
)
from tools.train_demo_models import (
    TRIAL_DURATION_MS as TRIAL_MS,
)

EXAMPLE = REPO_ROOT / "examples" / "neuron_ground_truth"
DEFAULT_SEED = 20261202
SEGMENTS = 32  # the reference cell's segments: 32 excitatory + 32 inhibitory channels
BLOCKS = 4  # input rates vary per block of 8 segments (soma + basal[0] part, ..., apical)
WINDOW_MS = 400
TRIALS = {"train": 1024, "valid": 32, "test": 32}
ARCHITECTURE = Architecture((16, 16), (31, 11))
STAGES = ((3e-3, 5), (1e-3, 4), (3e-4, 3))  # (learning rate, epochs); the epoch of least validation loss is kept
STEPS_PER_EPOCH, BATCH_SIZE = 100, 32
SPIKE_WEIGHT, SOMA_WEIGHT = 1.0, 0.02


def backend_settings() -> NeuronBackendConfig:
    """The example config's ground_truth.neuron section (its paths relative to the config's folder)."""
    settings = yaml.safe_load((EXAMPLE / "config.yaml").read_text())["ground_truth"]["neuron"]
    settings.pop("synapse_map", None)  # this script writes it; the default placement is the same
    return NeuronBackendConfig(**{**settings, "cell": EXAMPLE / settings["cell"]})


def write_synapse_map(path: Path) -> None:
    """The default placement, explicitly: channel i (and 32 + i) on the i-th segment of `all`."""
    sections = [("soma", 1), ("basal[0]", 7), ("basal[1]", 7), ("apical", 17)]
    locations = [(name, (k + 0.5) / nseg) for name, nseg in sections for k in range(nseg)]
    rows = ["kind,section,x"] + [
        f"{kind},{name},{x:.6g}" for kind in ("excitatory", "inhibitory") for name, x in locations
    ]
    write_text_atomic(path, "\n".join(rows) + "\n")


def simulate_split(run: TrialRunner, trials: int, rng: np.random.Generator, regime: RegimeAccumulator | None):
    sizes = NeuronConfig(num_excitatory_segments=SEGMENTS, num_inhibitory_segments=SEGMENTS, num_compartments=BLOCKS)
    inputs = np.empty((trials, TRIAL_MS, 2 * SEGMENTS), dtype=bool)
    for trial in range(trials):
        exc_rates, inh_rates, exc_spikes, inh_spikes = draw_trial_inputs(sizes, rng)
        inputs[trial, :, :SEGMENTS], inputs[trial, :, SEGMENTS:] = exc_spikes, inh_spikes
        if regime is not None:
            regime.add(exc_rates[None], inh_rates[None], exc_spikes[None])
    answer = run(inputs)
    return {
        "inputs": inputs.astype(np.uint8),
        "spikes": answer.spike_bins(TRIAL_MS).astype(np.float32),
        "somatic": soma_targets(answer.soma_v),
    }


def windows(split: dict, count: int, rng: np.random.Generator):
    trials = rng.integers(len(split["inputs"]), size=count)
    starts = rng.integers(TRIAL_MS - WINDOW_MS + 1, size=count)
    index = (trials[:, None], starts[:, None] + np.arange(WINDOW_MS))
    return split["inputs"][index], {
        "spikes": split["spikes"][index][..., None],
        "somatic": split["somatic"][index][..., None],
    }


def build_model():
    import keras
    from keras import initializers, layers

    inputs = keras.Input(shape=(WINDOW_MS, 2 * SEGMENTS), name="input_layer")
    x = inputs
    for k, (filters, size) in enumerate(
        zip(ARCHITECTURE.num_filters_per_layer, ARCHITECTURE.filter_sizes_per_layer), start=1
    ):
        x = layers.Conv1D(
            filters,
            size,
            activation="relu",
            padding="causal",
            name=f"layer_{k}",
            kernel_initializer=initializers.TruncatedNormal(stddev=0.02),
        )(x)
        x = layers.BatchNormalization(name=f"layer_{k}_BN")(x)
    spikes = layers.Conv1D(1, 1, activation="sigmoid", name="spikes", bias_initializer=initializers.Constant(-2.0))(x)
    somatic = layers.Conv1D(1, 1, activation="linear", name="somatic")(x)
    return keras.Model(inputs, [spikes, somatic])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out-dir", type=Path, default=EXAMPLE / "models")
    args = parser.parse_args(argv)
    started = time.time()
    import keras
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng([args.seed, 0])
    regime = RegimeAccumulator()
    with TrialRunner(NeuronSimulator.resolve(backend_settings(), SEGMENTS, SEGMENTS)) as run:
        print(f"simulating {TRIALS} trials of {TRIAL_MS} ms in NEURON ({run.workers} workers) ...", flush=True)
        splits = {
            name: simulate_split(run, count, rng, regime if name == "train" else None) for name, count in TRIALS.items()
        }
    rates = {name: float(split["spikes"].mean() * 1000) for name, split in splits.items()}
    print(f"  output rate (Hz): { {k: round(v, 1) for k, v in rates.items()} }   [{time.time() - started:.0f} s]")

    keras.utils.set_random_seed(args.seed)
    model = build_model()
    batches = np.random.default_rng([args.seed, 1])
    valid = windows(splits["valid"], 256, np.random.default_rng([args.seed, 2]))
    history: dict[str, list] = {}
    for stage, (learning_rate, epochs) in enumerate(STAGES):
        model.compile(
            optimizer=keras.optimizers.Nadam(learning_rate=learning_rate),
            loss={"spikes": "binary_crossentropy", "somatic": "mse"},
            loss_weights={"spikes": SPIKE_WEIGHT, "somatic": SOMA_WEIGHT},
        )
        for _ in range(epochs):
            for _ in range(STEPS_PER_EPOCH):
                model.train_on_batch(*windows(splits["train"], BATCH_SIZE, batches))
            evaluated = model.evaluate(*valid, verbose=0, return_dict=True)
            trained = model.evaluate(*windows(splits["train"], 256, batches), verbose=0, return_dict=True)
            for key, value in trained.items():
                history.setdefault(key, []).append(float(value))
            for key, value in evaluated.items():
                history.setdefault(f"val_{key}", []).append(float(value))
            history.setdefault("learning_rate", []).append(learning_rate)
            if history["val_spikes_loss"][-1] == min(history["val_spikes_loss"]):
                best = model.get_weights()
        print(
            f"  stage {stage}: val_spikes_loss {history['val_spikes_loss'][-1]:.4f}   [{time.time() - started:.0f} s]",
            flush=True,
        )

    model.set_weights(best)
    test_inputs, test_targets = windows(splits["test"], 512, np.random.default_rng([args.seed, 3]))
    predicted_spikes, predicted_soma = model.predict(test_inputs, batch_size=128, verbose=0)
    valid_bins = slice(ARCHITECTURE.receptive_field - 1, None)  # bins that see their whole receptive field
    metrics = {
        "held_out_spike_auc": float(
            roc_auc_score(test_targets["spikes"][:, valid_bins].ravel(), predicted_spikes[:, valid_bins].ravel())
        ),
        "held_out_soma_rmse_mv": float(
            np.sqrt(np.mean((predicted_soma - test_targets["somatic"])[:, valid_bins] ** 2))
        ),
    }
    print(
        f"  held-out spike AUC {metrics['held_out_spike_auc']:.4f}, soma RMSE {metrics['held_out_soma_rmse_mv']:.3f} mV"
    )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for old in args.out_dir.glob("BALLSTICK_TCN__*"):
        old.unlink()
    valid_loss = 10000 * min(history["val_spikes_loss"])
    stem = (
        f"BALLSTICK_TCN__DxWxT_{ARCHITECTURE.depth}x16x{ARCHITECTURE.receptive_field}__2026-12-02__12_00__"
        f"samples_{sum(STAGES[s][1] for s in range(len(STAGES))) * STEPS_PER_EPOCH * BATCH_SIZE}__"
        f"LogLoss_valid_{valid_loss:.0f}__ID_{args.seed % 100000}"
    )
    with atomic_paths(args.out_dir / f"{stem}.h5") as (temporary,):
        model.save(str(temporary), include_optimizer=False)
    source = (
        f"tools/train_neuron_example.py --seed {args.seed}: the {TRIALS['train']} train trials of {TRIAL_MS} "
        "ms; rates are the generator's, synchrony counts the input spikes"
    )
    data = {
        "num_excitatory_segments": SEGMENTS,
        "num_inhibitory_segments": SEGMENTS,
        "input_window_size": WINDOW_MS,
        "trial_duration_ms": TRIAL_MS,
        "data_seed": args.seed,
        "output_spike_rate_hz": rates,
        "y_soma_threshold": SOMA_CLIP_MV,
        "y_train_soma_bias": SOMA_BIAS_MV,
        **metrics,
        REGIME_KEY: regime.result(source).to_dict(),
        "training_script": "tools/train_neuron_example.py",
        "simulated_cell": "examples/neuron_ground_truth/cell.hoc (NEURON, ground_truth.neuron of its config.yaml)",
    }
    auxiliary = {
        "data_dict": data,
        "architecture_dict": architecture_dict(ARCHITECTURE) | {"input_window_size": WINDOW_MS},
        "learning_schedule_dict": {"learning_rate_per_epoch": [r for r, _ in STAGES], "num_epochs": len(STAGES)},
        "training_history_dict": history,
    }
    write_atomically(args.out_dir / f"{stem}.pickle", lambda handle: handle.write(pickle.dumps(auxiliary, protocol=2)))
    write_synapse_map(EXAMPLE / "synapse_map.csv")
    report = {
        "seed": args.seed,
        "command": f"python tools/train_neuron_example.py --seed {args.seed}",
        "model": stem,
        "output_spike_rate_hz": rates,
        **metrics,
        "duration_seconds": round(time.time() - started, 1),
    }
    write_text_atomic(args.out_dir / "training_report.json", json.dumps(report, indent=2) + "\n")
    print(f"wrote {stem} to {args.out_dir} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

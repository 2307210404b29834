#!/usr/bin/env python
"""Build zoo models with real Keras, save them as .h5 and save Keras's predictions beside them.

    make_keras_model.py --flavour keras3 --model NAME --out PATH.h5 [--seed N]
    make_keras_model.py --flavour keras2 --model NAME1,NAME2 --out-dir DIR [--seed N]
    make_keras_model.py --flavour keras2 --all [--group layers|edge|neuron] --out-dir DIR
    make_keras_model.py --list [--flavour keras3]

Flavours: ``keras3`` (``import keras``, Keras 3, TensorFlow backend) and ``keras2`` (``import tf_keras``,
the Keras 2 API). Run one flavour per process: both cannot always be imported together.

For a model saved as ``PATH.h5`` this writes:
    PATH.h5            the model, ``model.save`` in the legacy HDF5 format;
    PATH.inputs.npz    the test input, one array per model input, keys ``NN_<input layer name>`` in Keras
                       input order (binary spikes at 3 % density for neuron TCNs, normal noise otherwise);
    PATH.outputs.npz   Keras's predictions of the model *reloaded from PATH.h5* (of the model as built
                       for the few zoo entries Keras cannot reload), one array per output,
                       keys ``NN_<output name>`` in Keras output order;
    PATH.json          metadata (flavour, versions, seed, names and shapes);
    PATH.pickle        for neuron TCNs only: the parameter file of fit_CNN.py (architecture_dict, ...).
A model that fails to build or save gets ``PATH.error.txt`` (the traceback) instead, the others go on,
and the exit status is 1.

Weights are non-trivial: random normal kernels (std gain/sqrt(fan_in)), non-zero biases, BatchNorm
statistics and affine parameters away from their defaults, PReLU slopes of both signs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keras_zoo import FLAVOURS, GROUPS, ZOO, KerasFlavour, ZooEntry, set_test_weights, zoo_names  # noqa: E402

SPIKE_DENSITY = 0.03


def _layer_names(tensors) -> list[str]:
    """Names of the layers that produce `tensors` (model inputs or outputs), in order."""
    return [t._keras_history[0].name for t in tensors]


def make_inputs(entry: ZooEntry, model, rng) -> list[np.ndarray]:
    arrays = []
    for tensor in model.inputs:
        shape = [entry.batch] + [entry.time if d is None else int(d) for d in tuple(tensor.shape)[1:]]
        if entry.spikes:
            arrays.append((rng.random(shape) < SPIKE_DENSITY).astype(np.float32))
        else:
            arrays.append(rng.normal(0.0, 1.0, shape).astype(np.float32))
    return arrays


def predict(model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(o, dtype=np.float32) for o in outputs]


def _train_one_step(model, inputs, rng) -> None:
    """Compile as fit_CNN.py does and take one step, so the file holds training config and optimizer."""
    targets = [rng.random(o.shape).astype(np.float32) for o in predict(model, inputs)]
    model.compile(optimizer="nadam", loss=["binary_crossentropy", "mse", "mse"], loss_weights=[1.0, 0.006, 0.002])
    model.train_on_batch(inputs if len(inputs) > 1 else inputs[0], targets)


def _params_pickle(entry: ZooEntry) -> dict:
    """The `.pickle` written beside each model by fit_CNN.py (protocol 2)."""
    arch = entry.neuron
    num_segments = arch["num_segments"]
    return {
        "architecture_dict": {k: v for k, v in arch.items() if k not in ("num_segments", "num_DVT_components")},
        "data_dict": {
            "num_segments_exc": num_segments // 2,
            "num_segments_inh": num_segments - num_segments // 2,
            "num_DVT_components": arch["num_DVT_components"],
            "train_files": [],
            "valid_files": [],
            "test_files": [],
            "v_threshold": -55.0,
            "y_soma_shift": 67.7,
            "DVT_PCA_model": None,
        },
        "learning_schedule_dict": {
            "train_file_load": 0.2,
            "valid_file_load": 0.2,
            "num_steps_multiplier": 10,
            "batch_size_per_epoch": [8],
            "learning_rate_per_epoch": [0.0001],
            "loss_weights_per_epoch": [[1.0, 0.006, 0.002]],
            "num_epochs": 1,
        },
        "training_history_dict": {
            "loss": [1.0],
            "spikes_loss": [0.5],
            "somatic_loss": [40.0],
            "dendritic_loss": [60.0],
            "val_loss": [1.1],
            "val_spikes_loss": [0.55],
            "val_somatic_loss": [41.0],
            "val_dendritic_loss": [61.0],
            "batch_size": [8],
            "learning_rate": [0.0001],
            "loss_weights": [[1.0, 0.006, 0.002]],
            "num_train_samples": [64],
            "num_train_steps": [8],
        },
    }


def make_model(flavour: KerasFlavour, entry: ZooEntry, out: Path, base_seed: int) -> dict:
    """Build, weight, save and predict one zoo model; returns its metadata."""
    stem = out.with_suffix("")
    rng = np.random.default_rng(entry.seed(base_seed))
    model = entry.build(flavour)
    inputs = make_inputs(entry, model, rng)
    if entry.train_step:
        _train_one_step(model, inputs, rng)
    set_test_weights(model, rng, entry.gain)
    in_memory = predict(model, inputs)

    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    if entry.keras_reloads:
        reloaded = flavour.keras.models.load_model(str(out), compile=False)
        outputs = predict(reloaded, inputs)
        reload_diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(in_memory, outputs))
        if reload_diff > 1e-6:
            raise RuntimeError(
                f"Keras itself does not reproduce {entry.name} from {out}: "
                f"max diff {reload_diff:g} between the built and the reloaded model"
            )
    else:  # Keras cannot load this file back: the model as built is the reference
        reloaded, outputs = model, in_memory

    input_names = _layer_names(reloaded.inputs)
    output_names = _layer_names(reloaded.outputs)  # Keras 3 Sequential has no `output_names`
    np.savez(f"{stem}.inputs.npz", **{f"{i:02d}_{n}": a for i, (n, a) in enumerate(zip(input_names, inputs))})
    np.savez(f"{stem}.outputs.npz", **{f"{i:02d}_{n}": a for i, (n, a) in enumerate(zip(output_names, outputs))})
    if entry.neuron is not None:
        with open(f"{stem}.pickle", "wb") as f:
            pickle.dump(_params_pickle(entry), f, protocol=2)
    meta = {
        "model": entry.name,
        "group": entry.group,
        "flavour": flavour.name,
        "keras_version": flavour.version,
        "seed": base_seed,
        "layer_names": [layer.name for layer in reloaded.layers],
        "input_names": input_names,
        "input_shapes": [list(a.shape) for a in inputs],
        "input_config_shapes": [[None if d is None else int(d) for d in tuple(t.shape)[1:]] for t in reloaded.inputs],
        "output_names": output_names,
        "output_shapes": [list(a.shape) for a in outputs],
        "output_max_abs": [float(np.max(np.abs(a))) if a.size else 0.0 for a in outputs],
    }
    Path(f"{stem}.json").write_text(json.dumps(meta, indent=1))
    return meta


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavour", choices=FLAVOURS, help="Keras 3 (keras) or Keras 2 (tf_keras)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="zoo model name, or several separated by commas")
    which.add_argument("--all", action="store_true", help="every zoo model of the flavour (see --group)")
    which.add_argument("--list", action="store_true", help="print the zoo model names and exit")
    parser.add_argument("--group", choices=GROUPS, help="with --all/--list: only this group")
    parser.add_argument("--out", type=Path, help="output .h5 path (one model only)")
    parser.add_argument("--out-dir", type=Path, help="output folder: writes <DIR>/<model>.h5 ...")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    args = parser.parse_args(argv)

    if args.list:
        return args
    if not args.flavour:
        parser.error("--flavour is required")
    if args.all:
        args.names = zoo_names(args.flavour, args.group)
    elif args.model:
        args.names = [n.strip() for n in args.model.split(",") if n.strip()]
    else:
        parser.error("give --model NAME[,NAME...], --all or --list")
    unknown = [n for n in args.names if n not in ZOO]
    if unknown:
        parser.error(f"unknown zoo model(s): {', '.join(unknown)}; see --list")
    unavailable = [n for n in args.names if args.flavour not in ZOO[n].flavours]
    if unavailable:
        parser.error(f"not in the {args.flavour} zoo: {', '.join(unavailable)}")
    if (args.out is None) == (args.out_dir is None):
        parser.error("give exactly one of --out PATH.h5 and --out-dir DIR")
    if args.out is not None and len(args.names) != 1:
        parser.error("--out takes one model; use --out-dir for several")
    return args


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.list:
        for flavour in [args.flavour] if args.flavour else FLAVOURS:
            print(f"{flavour}: {' '.join(zoo_names(flavour, args.group))}")
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    flavour = KerasFlavour(args.flavour)

    failed = 0
    for name in args.names:
        out = args.out if args.out is not None else args.out_dir / f"{name}.h5"
        error_file = Path(f"{out.with_suffix('')}.error.txt")
        error_file.unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            make_model(flavour, ZOO[name], out, args.seed)
            print(f"ok     {args.flavour} {name} ({time.perf_counter() - start:.2f} s) -> {out}", flush=True)
        except Exception:
            failed += 1
            error_file.parent.mkdir(parents=True, exist_ok=True)
            error_file.write_text(traceback.format_exc())
            print(f"FAILED {args.flavour} {name}: see {error_file}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

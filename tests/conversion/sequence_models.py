#!/usr/bin/env python
"""Build models with sequence layers (Embedding, RepeatVector, TimeDistributed, Bidirectional, LSTM, GRU,
SimpleRNN) and keras-tcn's example models, with real Keras, and save them in every container.

    sequence_models.py --flavour keras3|keras2 --out-dir DIR [--seed N]

For each model NAME of the flavour this writes
    NAME.h5                          model.save, legacy HDF5 (both flavours);
    NAME.keras                       model.save, Keras 3 archive (keras3 only);
    NAME.json + NAME.weights.h5      model.to_json() and model.save_weights (both flavours; tf_keras writes
                                     its object layout, as Keras 3 does, for this suffix);
    NAME_weights.h5                  model.save_weights in the legacy HDF5 layout (keras2 only), as
                                     keras-tcn's save/reload example writes it;
    NAME.npz                         the test inputs `in_<i>` and Keras's predictions `out_<i>` of the built model;
or NAME.error.txt with the traceback (exit status 1). Weights are random and away from Keras's initial values
(recurrent kernels included), token inputs are integers in [0, vocabulary), with runs of 0 (padding) for the
models whose Embedding masks them. keras2 builds keras-tcn with tf_keras (TF_USE_LEGACY_KERAS=1).

Importing this module imports neither TensorFlow nor keras-tcn: the tests read MODELS to parametrize.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FLAVOURS = ("keras3", "keras2")
BATCH = 4


@dataclass(frozen=True)
class SequenceModel:
    name: str
    build: Callable[[Any, Any, Any], Any]  # (keras, layers, TCN) -> model
    # (kind: tokens|padded|fractional|signed_fractions|unsigned_fractions|normal, shape w/o batch, vocabulary)
    inputs: tuple[tuple[str, tuple[int, ...], int], ...]
    refused: str = ""  # a fragment of the refusal every container must get; "" = converts exactly
    flavours: tuple[str, ...] = FLAVOURS


MODELS: dict[str, SequenceModel] = {}


def _model(name: str, inputs, **options):
    def register(build):
        MODELS[name] = SequenceModel(name, build, tuple(inputs), **options)
        return build

    return register


def model_names(flavour: str) -> list[str]:
    return [m.name for m in MODELS.values() if flavour in m.flavours]


# ----------------------------------------------------------------------------------------------------------------
# Recurrent layers and wrappers
# ----------------------------------------------------------------------------------------------------------------


@_model("lstm_stack", [("normal", (10, 5), 0)])
def _lstm_stack(keras, L, TCN):
    x = keras.Input((10, 5), name="series")
    y = L.LSTM(6, return_sequences=True, activation="relu")(x)
    y = L.LSTM(4, go_backwards=True)(y)
    return keras.Model(x, L.Dense(2)(y))


@_model("gru_simple_rnn_variants", [("normal", (10, 5), 0)])
def _gru_variants(keras, L, TCN):
    x = keras.Input((None, 5), name="series")
    a = L.GRU(4, return_sequences=True)(x)
    b = L.GRU(3, reset_after=False, return_sequences=True, go_backwards=True)(x)
    c = L.SimpleRNN(3, activation="relu", return_sequences=True, use_bias=False)(x)
    y = L.Concatenate()([a, b, c])
    y = L.GRU(2, recurrent_activation="hard_sigmoid", use_bias=False)(y)
    return keras.Model(x, y)


@_model("recurrent_states", [("normal", (9, 4), 0)])
def _recurrent_states(keras, L, TCN):
    x = keras.Input((9, 4), name="series")
    sequence, h, c = L.LSTM(5, return_sequences=True, return_state=True)(x)
    g, gh = L.GRU(3, return_state=True)(sequence)
    s, sh = L.SimpleRNN(2, return_state=True, go_backwards=True)(sequence)
    return keras.Model(x, [L.Dense(2)(sequence), h, c, g, gh, L.Add()([s, sh])])


@_model("bidirectional_merge_modes", [("normal", (8, 5), 0)])
def _bidirectional_modes(keras, L, TCN):
    x = keras.Input((8, 5), name="series")
    y = L.Bidirectional(L.LSTM(3, return_sequences=True), merge_mode="sum")(x)
    y = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode="mul")(y)
    y = L.Bidirectional(L.SimpleRNN(2, return_sequences=True), merge_mode="ave")(y)
    back = L.LSTM(2, return_sequences=True, go_backwards=True, name="custom_backward")
    y = L.Bidirectional(L.LSTM(2, return_sequences=True), backward_layer=back)(y)
    first, second = L.Bidirectional(L.GRU(2), merge_mode=None)(y)
    return keras.Model(x, [L.Dense(1)(L.Concatenate()([first, second])), second])


@_model("bidirectional_states", [("normal", (7, 3), 0)])
def _bidirectional_states(keras, L, TCN):
    x = keras.Input((7, 3), name="series")
    y, forward_h, forward_c, backward_h, backward_c = L.Bidirectional(L.LSTM(3, return_state=True))(x)
    return keras.Model(x, [y, forward_h, backward_c])


def _seq2seq_initial_state(keras, L, TCN):
    encoder_input = keras.Input((8, 4), name="source")
    decoder_input = keras.Input((5, 3), name="target")
    _, h, c = L.LSTM(4, return_state=True)(encoder_input)
    decoded = L.LSTM(4, return_sequences=True)(decoder_input, initial_state=[h, c])
    return keras.Model([encoder_input, decoder_input], L.Dense(2)(decoded))


# Keras 2 stores the states as extra inputs of the call, Keras 3 as the keyword argument initial_state
_model("seq2seq_initial_state", [("normal", (8, 4), 0), ("normal", (5, 3), 0)])(_seq2seq_initial_state)


@_model("time_distributed", [("normal", (6, 8, 3), 0)])
def _time_distributed(keras, L, TCN):
    x = keras.Input((6, 8, 3), name="frames")
    y = L.TimeDistributed(L.Conv1D(4, 3, activation="relu"))(x)
    y = L.TimeDistributed(L.Flatten())(y)
    y = L.TimeDistributed(L.Dense(5, activation="tanh"))(y)
    y = L.TimeDistributed(L.BatchNormalization())(y)
    return keras.Model(x, L.LSTM(3)(y))


@_model("repeat_vector_seq2seq", [("normal", (10, 4), 0)])
def _repeat_vector(keras, L, TCN):
    x = keras.Input((10, 4), name="series")
    y = L.RepeatVector(6)(L.LSTM(5)(x))
    y = L.LSTM(4, return_sequences=True)(y)
    return keras.Model(x, L.TimeDistributed(L.Dense(2))(y))


@_model("embedding_rnn", [("tokens", (12,), 40)])
def _embedding_rnn(keras, L, TCN):
    x = keras.Input((12,), dtype="int32", name="tokens")
    y = L.Embedding(40, 6)(x)
    y = L.Bidirectional(L.LSTM(4, return_sequences=True))(y)
    return keras.Model(x, L.Dense(1, activation="sigmoid")(L.GRU(3)(y)))


@_model("embedding_mask", [("padded", (12,), 40)])
def _embedding_mask(keras, L, TCN):
    x = keras.Input((12,), dtype="int32", name="tokens")
    y = L.Embedding(40, 6, mask_zero=True)(x)
    y = L.Dense(5, activation="relu")(L.Dropout(0.3)(y))
    y = L.LSTM(4, return_sequences=True)(y)
    y = L.Bidirectional(L.GRU(3))(y)
    return keras.Model(x, L.Dense(1)(y))


@_model("embedding_mask_sequences", [("padded", (11,), 30)])
def _embedding_mask_sequences(keras, L, TCN):
    x = keras.Input((None,), dtype="int32", name="tokens")
    y = L.Embedding(30, 5, mask_zero=True)(x)
    y = L.SimpleRNN(3, return_sequences=True, go_backwards=True)(y)
    y = L.Bidirectional(L.LSTM(2, return_sequences=True), merge_mode="sum")(y)
    return keras.Model(x, L.GRU(2, return_sequences=True)(y))


@_model("embedding_mask_initial_state", [("padded", (10,), 20), ("padded", (8,), 20)])
def _embedding_mask_initial_state(keras, L, TCN):
    """Keras 2 masks the decoder's steps; Keras 3 passes no mask to a layer given an initial_state."""
    source, target = keras.Input((10,), dtype="int32"), keras.Input((8,), dtype="int32")
    _, h, c = L.LSTM(4, return_state=True)(L.Embedding(20, 6, mask_zero=True)(source))
    decoded = L.LSTM(4, return_sequences=True)(L.Embedding(20, 6, mask_zero=True)(target), initial_state=[h, c])
    return keras.Model([source, target], [decoded, h, c])


def _fractional_tokens(dtype: str):
    """Token ids given as floats with fractions: the declared input dtype decides whether the mask sees them
    truncated (an int32 Input casts them) or as given (a float32 Input; the Embedding still truncates)."""

    def build(keras, L, TCN):
        x = keras.Input((9,), dtype=dtype, name="tokens")
        y = L.LSTM(3, return_sequences=True)(L.Embedding(12, 4, mask_zero=True)(x))
        return keras.Model(x, L.GRU(2)(y))

    return build


_model("fractional_tokens_int32_input", [("fractional", (9,), 12)])(_fractional_tokens("int32"))
_model("fractional_tokens_float32_input", [("fractional", (9,), 12)])(_fractional_tokens("float32"))


@_model("float16_input", [("normal", (7, 3), 0)])
def _float16_input(keras, L, TCN):
    """A float16 Input rounds what it is given to 16 bits; the float32 layers after it compute on that."""
    x = keras.Input((7, 3), dtype="float16", name="series")
    return keras.Model(x, L.Dense(2)(L.Conv1D(4, 3, padding="causal")(x)))


@_model(
    "integer_inputs",
    [("signed_fractions", (4, 3), 0), ("unsigned_fractions", (4, 3), 0), ("signed_fractions", (4, 3), 0)],
)
def _integer_inputs(keras, L, TCN):
    """Real values given to int8, uint8 and int64 Inputs feeding Dense layers: Keras truncates them."""
    inputs = [keras.Input((4, 3), dtype=dtype, name=dtype) for dtype in ("int8", "uint8", "int64")]
    return keras.Model(inputs, L.Add()([L.Dense(2)(x) for x in inputs]))


@_model("mixed_precision", [("normal", (8, 3), 0)], refused="under the dtype policy 'mixed_float16', in Keras not")
def _mixed_precision(keras, L, TCN):
    """A model trained under mixed precision: layers compute in float16, the head in float32."""
    x = keras.Input((8, 3), name="series")
    y = L.Conv1D(4, 3, padding="causal", dtype="mixed_float16")(x)
    y = L.LSTM(3, dtype="mixed_float16")(y)
    return keras.Model(x, L.Dense(1, dtype="float32")(y))


@_model("bfloat16_layer", [("normal", (5, 3), 0)], refused="is stored as bfloat16")
def _bfloat16_layer(keras, L, TCN):
    """A layer under the bfloat16 policy stores its variables in bfloat16."""
    x = keras.Input((5, 3), name="series")
    return keras.Model(x, L.Dense(2)(L.Dense(4, dtype="bfloat16")(x)))


@_model("time_distributed_embedding", [("tokens", (3, 5), 10)])
def _time_distributed_embedding(keras, L, TCN):
    x = keras.Input((3, 5), dtype="int32", name="sentences")
    y = L.TimeDistributed(L.Embedding(10, 3))(x)
    return keras.Model(x, L.TimeDistributed(L.LSTM(2))(y))


@_model("time_distributed_embedding_mask", [("padded", (3, 5), 10)], refused="has mask_zero=True")
def _time_distributed_embedding_mask(keras, L, TCN):
    x = keras.Input((3, 5), dtype="int32", name="sentences")
    y = L.TimeDistributed(L.Embedding(10, 3, mask_zero=True))(x)
    return keras.Model(x, L.TimeDistributed(L.LSTM(2))(y))


def _bidirectional_mixed_states(keras, L, TCN):
    x = keras.Input((6, 3), name="series")
    backward = L.GRU(3, return_sequences=True, return_state=True, go_backwards=True)
    outputs = L.Bidirectional(L.LSTM(3, return_sequences=True, return_state=True), backward_layer=backward)(x)
    return keras.Model(x, list(outputs))


# an LSTM forward and a GRU backward with return_state: Keras 2 returns [y, h, c, h']; Keras 3 declares five
# outputs, computes four and cannot run the model (test_an_output_no_layer_returns_is_refused: such a file)
_model("bidirectional_mixed_states", [("normal", (6, 3), 0)], flavours=("keras2",))(_bidirectional_mixed_states)


@_model("embedding_mask_into_pooling", [("padded", (10,), 30)], refused="receives the mask of Embedding")
def _embedding_mask_pooling(keras, L, TCN):
    x = keras.Input((10,), dtype="int32", name="tokens")
    y = L.GlobalAveragePooling1D()(L.Embedding(30, 4, mask_zero=True)(x))
    return keras.Model(x, L.Dense(1)(y))


@_model("nested_model_output", [("normal", (6, 3), 0)], refused="'inner' (Functional): unknown layer class")
def _nested_model_output(keras, L, TCN):
    """A model used as a layer, its output the model's: Keras numbers that call after the inner model's own."""
    x = keras.Input((6, 3))
    inner = keras.Model(x, L.GRU(2)(x), name="inner")
    outer_input = keras.Input((6, 3), name="series")
    return keras.Model(outer_input, inner(outer_input))


@_model("stateful_lstm", [("normal", (5, 3), 0)], refused="stateful=True is not supported")
def _stateful(keras, L, TCN):
    x = keras.Input(batch_shape=(BATCH, 5, 3), name="series")
    return keras.Model(x, L.LSTM(2, stateful=True)(x))


# ----------------------------------------------------------------------------------------------------------------
# keras-tcn's example models (tasks/ of keras-tcn), as they build them, sizes shrunk
# ----------------------------------------------------------------------------------------------------------------


@_model("tcn_imdb", [("tokens", (20,), 50)])
def _tcn_imdb(keras, L, TCN):
    """imdb_tcn.py: Sequential Embedding (input_shape given to it) → TCN → Dense(sigmoid)."""
    return keras.Sequential(
        [
            L.Embedding(50, 8, input_shape=(20,)),
            TCN(nb_filters=6, kernel_size=6, dilations=(1, 2, 4)),
            L.Dense(1, activation="sigmoid"),
        ]
    )


@_model("tcn_sequential", [("tokens", (20,), 50)])
def _tcn_sequential(keras, L, TCN):
    """sequential.py: Sequential Embedding → TCN → Dropout → Dense(sigmoid)."""
    return keras.Sequential(
        [
            keras.Input((20,)),
            L.Embedding(50, 8),
            TCN(nb_filters=6, kernel_size=6, dilations=(1, 2, 4)),
            L.Dropout(0.5),
            L.Dense(1, activation="sigmoid"),
        ]
    )


@_model("tcn_save_reload_sequential", [("tokens", (20,), 50)])
def _tcn_save_reload_sequential(keras, L, TCN):
    """save_reload_sequential_model.py (written as to_json() + save_weights, as every model here)."""
    return keras.Sequential(
        [
            L.Embedding(50, 8, input_shape=(20,)),
            TCN(nb_filters=5, dropout_rate=0.5, kernel_size=6, dilations=(1, 2, 4)),
            L.Dense(units=1, activation="sigmoid"),
        ]
    )


@_model("tcn_save_reload", [("tokens", (20,), 50)])
def _tcn_save_reload(keras, L, TCN):
    """save_reload_model.py: the Functional form, dropout inside and after the TCN."""
    i = keras.Input((20,))
    x = L.Embedding(50, 8)(i)
    x = TCN(nb_filters=5, dropout_rate=0.5, kernel_size=3, dilations=(1, 2, 4))(x)
    x = L.Dropout(0.5)(x)
    return keras.Model(inputs=[i], outputs=[L.Dense(1, activation="sigmoid")(x)])


@_model("tcn_word_ptb", [("tokens", (16,), 60)])
def _tcn_word_ptb(keras, L, TCN):
    """word_ptb/train.py (its TCN branch): layer-normalized TCN and a softmax over the vocabulary."""
    tcn = TCN(nb_filters=7, kernel_size=3, dilations=(1, 2, 4), use_skip_connections=True, use_layer_norm=True)
    return keras.Sequential(
        [keras.Input((16,)), L.Embedding(60, 10), L.Dropout(0.2), tcn, L.Dense(60, activation="softmax")]
    )


@_model("tcn_bidirectional", [("tokens", (15,), 50)])
def _tcn_bidirectional(keras, L, TCN):
    """bidirect_tcn.py: Bidirectional(TCN) after an Embedding on inputs of any length."""
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = L.Embedding(50, 8)(inputs)
    x = L.Bidirectional(TCN(6, kernel_size=3, dilations=(1, 2)))(x)
    return keras.Model(inputs, L.Dense(1, activation="sigmoid")(x))


@_model("tcn_many_to_many", [("normal", (24, 8), 0)])
def _tcn_many_to_many(keras, L, TCN):
    """many_to_many.py: TCN → RepeatVector → Dense on each repeated step."""
    return keras.Sequential(
        [keras.Input((24, 8)), TCN(nb_filters=6, kernel_size=3, dilations=(1, 2, 4)), L.RepeatVector(6), L.Dense(2)]
    )


# ----------------------------------------------------------------------------------------------------------------


def random_weights(model, rng) -> None:
    """Every variable away from its initial value: kernels ~ N(0, 1/fan_in), biases and embeddings non-zero,
    normalization statistics and scales positive."""
    for variable in model.weights:
        name = getattr(variable, "path", None) or variable.name
        shape = tuple(int(d) for d in variable.shape)
        if "moving_variance" in name or "gamma" in name:
            value = rng.uniform(0.5, 1.5, shape)
        elif "kernel" in name and len(shape) > 1:
            value = rng.normal(0.0, 1.2 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0.0, 0.4, shape)
        variable.assign(value.astype("float32"))


def make_inputs(spec: SequenceModel, rng) -> list[np.ndarray]:
    arrays = []
    for kind, shape, vocabulary in spec.inputs:
        if kind == "normal":
            arrays.append(rng.normal(0.0, 1.0, (BATCH, *shape)).astype("float32"))
            continue
        if kind.endswith("_fractions"):  # reals whose truncation an integer Input can hold
            arrays.append(
                rng.uniform(-9.9 if kind == "signed_fractions" else 0.0, 9.9, (BATCH, *shape)).astype("float32")
            )
            continue
        tokens = rng.integers(1, vocabulary, (BATCH, *shape))
        if kind == "padded":  # pad_sequences' leading zeros, of another length per sample, and some zeros inside
            for row, pad in enumerate(rng.integers(0, shape[0] // 2, BATCH)):
                tokens[row, :pad] = 0
            tokens[rng.random(tokens.shape) < 0.1] = 0
        if kind == "fractional":  # every id plus a fraction, so that padding holds values in (0, 1)
            tokens[:, :3] = 0
            arrays.append((tokens + rng.uniform(0.05, 0.95, tokens.shape)).astype("float32"))
            continue
        arrays.append(tokens.astype("int32"))
    return arrays


def save_all(flavour: str, model, stem: Path) -> None:
    model.save(f"{stem}.h5")
    if flavour == "keras3":
        model.save(f"{stem}.keras")
    Path(f"{stem}.json").write_text(model.to_json())
    model.save_weights(f"{stem}.weights.h5")
    if flavour == "keras2":
        model.save_weights(f"{stem}_weights.h5")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavour", choices=FLAVOURS, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.flavour == "keras2":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"  # keras-tcn then builds with tf_keras
        import tf_keras as keras
    else:
        import keras
    from tcn import TCN

    args.out_dir.mkdir(parents=True, exist_ok=True)
    status = 0
    for index, name in enumerate(model_names(args.flavour)):
        spec, stem = MODELS[name], args.out_dir / name
        try:
            rng = np.random.default_rng(args.seed * 1000 + index)
            model = spec.build(keras, keras.layers, TCN)
            random_weights(model, rng)
            inputs = make_inputs(spec, rng)
            outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            save_all(args.flavour, model, stem)
            arrays = {f"in_{i}": a for i, a in enumerate(inputs)}
            arrays.update({f"out_{i}": np.asarray(o, dtype="float32") for i, o in enumerate(outputs)})
            np.savez(f"{stem}.npz", **arrays)
            Path(f"{stem}.meta.json").write_text(json.dumps({"keras": keras.__version__, "outputs": len(outputs)}))
        except Exception:
            Path(f"{stem}.error.txt").write_text(traceback.format_exc())
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

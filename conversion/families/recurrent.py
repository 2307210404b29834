"""LSTM, GRU and SimpleRNN → models.sequence.Recurrent, with Keras's kernels as they are (input, gates·units).

The weights are the cell's: `<layer>/<cell>/kernel`, `recurrent_kernel` and `bias` (GRU with `reset_after`: a
(2, 3·units) bias, the input's and the recurrent one's). A stateful layer carries states from one batch to the
next, which a file does not hold: refused. `time_major` (Keras 2) takes another input layout: refused.
"""

from __future__ import annotations

from conversion.families.activations import activation_name, layer_activation
from conversion.families.common import refuse_unknown_options
from conversion.families.sequence import positive
from conversion.registry import ConvertedLayer, KerasLayer, LayerProblem, bare_class_name, register_layer_converter

RECURRENT_KINDS = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
# The options Keras 2 and 3 write for these layers; initializers, regularizers, constraints, dropout, unroll
# and the implementation choices do not change what a trained layer computes at inference
RECURRENT_OPTIONS = {
    "units",
    "activation",
    "use_bias",
    "return_sequences",
    "return_state",
    "go_backwards",
    "stateful",
    "time_major",
    "unroll",
    "zero_output_for_mask",
    "implementation",
    "use_cudnn",
    "seed",
    "dropout",
    "recurrent_dropout",
    *(
        f"{weight}_{role}"
        for weight in ("kernel", "recurrent", "bias")
        for role in ("initializer", "regularizer", "constraint")
    ),
    "activity_regularizer",
}
KIND_OPTIONS = {
    "lstm": RECURRENT_OPTIONS | {"recurrent_activation", "unit_forget_bias"},
    "gru": RECURRENT_OPTIONS | {"recurrent_activation", "reset_after"},
    "simple_rnn": RECURRENT_OPTIONS,
}


@register_layer_converter(*RECURRENT_KINDS)
def convert_recurrent(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    kind = RECURRENT_KINDS[bare_class_name(layer.class_name)]
    refuse_unknown_options(c, KIND_OPTIONS[kind], "Keras")
    for option, why in (
        ("stateful", "its states carry over from one batch to the next, and the file does not hold them"),
        ("time_major", "it takes (time, batch, features) inputs"),
    ):
        if c.get(option):
            raise LayerProblem(f"{option}=True is not supported: {why}")
    units = positive(c.get("units"), "units")
    width = GATES[kind] * units
    kernel = layer.weights.take("kernel", (None, width))
    recurrent_kernel = layer.weights.take("recurrent_kernel", (units, width))
    params = {"kernel": kernel, "recurrent_kernel": recurrent_kernel}
    use_bias = bool(c.get("use_bias", True))
    # Keras <= 2.2 files have no `reset_after` key (those GRUs did not reset after): the stored bias's shape tells
    stored_bias = layer.weights.shape_of("bias")
    reset_after = kind == "gru" and bool(c.get("reset_after", stored_bias is not None and len(stored_bias) == 2))
    if use_bias:
        params["bias"] = layer.weights.take("bias", (2, width) if reset_after else (width,))
    return ConvertedLayer(
        "recurrent",
        {
            "kind": kind,
            "input_size": int(kernel.shape[0]),
            "units": units,
            "activation": layer_activation(layer, default="tanh"),
            "recurrent_activation": activation_name(c.get("recurrent_activation", "sigmoid"), layer.keras_major),
            "use_bias": use_bias,
            "reset_after": reset_after,
            "return_sequences": bool(c.get("return_sequences", False)),
            "return_state": bool(c.get("return_state", False)),
            "go_backwards": bool(c.get("go_backwards", False)),
            "zero_output_for_mask": bool(c.get("zero_output_for_mask", False)),
        },
        params,
    )

"""Keras model zoo for the converter parity tests.

Every entry is a small Keras model built from a named builder. Importing this module does NOT import
TensorFlow or Keras: the builders receive a :class:`KerasFlavour` that wraps the Keras module chosen at
run time (Keras 3 = ``keras``, Keras 2 = ``tf_keras``). The models themselves are built and saved in a
subprocess by ``make_keras_model.py``; the tests only need the names listed here.

Groups:
    ``layers``  models covering every layer and activation the converter supports;
    ``edge``    legal Keras models outside the supported list, or with unusual options: the converter may
                refuse them with a clear error, but must never return different numbers;
    ``neuron``  Beniaguev-style neuron TCNs (causal Conv1D + activation, BatchNormalization, three heads).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FLAVOURS = ("keras3", "keras2")
GROUPS = ("layers", "edge", "neuron")

# The activations the converter supports, as strings of the `activation` argument / Activation layer.
ACTIVATIONS = (
    "linear",
    "relu",
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
)
# Pre-activation spread per activation: wide enough to reach the saturating/negative regions
# (hard_sigmoid saturates at |x| = 2.5 in Keras 2 and 3 in Keras 3), small for `exponential`.
_ACTIVATION_GAIN = {"exponential": 0.4, "hard_sigmoid": 3.0}


class KerasFlavour:
    """The Keras API of one flavour; imports Keras when constructed."""

    def __init__(self, name: str):
        if name == "keras3":
            import keras
        elif name == "keras2":
            import tf_keras as keras
        else:
            raise ValueError(f"unknown Keras flavour {name!r}; expected one of {FLAVOURS}")
        self.name = name
        self.keras = keras
        self.layers = keras.layers

    @property
    def version(self) -> str:
        return self.keras.__version__

    def leaky_relu(self, slope: float, **kwargs):
        """LeakyReLU layer; the slope argument is `negative_slope` in Keras 3 and `alpha` in Keras 2."""
        key = "negative_slope" if self.name == "keras3" else "alpha"
        return self.layers.LeakyReLU(**{key: slope}, **kwargs)

    def model(self, inputs, outputs, name: str):
        return self.keras.Model(inputs=inputs, outputs=outputs, name=name)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    group: str
    build: Callable[[KerasFlavour], Any]
    flavours: tuple[str, ...] = FLAVOURS
    time: int = 29  # length of the test input where the model's time axis is None
    batch: int = 3
    gain: float = 1.5  # kernel std = gain / sqrt(fan_in)
    neuron: dict | None = None  # architecture of a neuron TCN (inputs are binary spikes)
    train_step: bool = False  # compile and run one training step (writes optimizer weights)
    keras_reloads: bool = True  # False: Keras cannot load its own file; the reference is the built model
    notes: str = ""

    @property
    def spikes(self) -> bool:
        return self.neuron is not None

    def seed(self, base_seed: int) -> int:
        return (base_seed * 1_000_003 + zlib.crc32(self.name.encode())) % 2**32


ZOO: dict[str, ZooEntry] = {}


def _register(name: str, group: str = "layers", **options):
    def decorator(build):
        if name in ZOO:
            raise ValueError(f"duplicate zoo model {name!r}")
        ZOO[name] = ZooEntry(name=name, group=group, build=build, **options)
        return build

    return decorator


def zoo_names(flavour: str, group: str | None = None) -> list[str]:
    """Names of the zoo models available in `flavour` (optionally only one group), in registry order."""
    return [e.name for e in ZOO.values() if flavour in e.flavours and (group is None or e.group == group)]


# --------------------------------------------------------------------------------------------------
# Layer coverage
# --------------------------------------------------------------------------------------------------


@_register("seq_conv_paddings", time=32)
def _seq_conv_paddings(k: KerasFlavour):
    """Sequential: Conv1D causal/same/valid, even kernels, dilation, strides, use_bias=False."""
    L = k.layers
    return k.keras.Sequential(
        [
            k.keras.Input(shape=(32, 5)),
            L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu", name="causal_d2"),
            L.Conv1D(6, 4, padding="same", name="same_k4"),  # TF pads the extra element right
            L.Conv1D(8, 3, padding="same", dilation_rate=3, activation="tanh", name="same_d3"),
            L.Conv1D(8, 5, padding="same", strides=2, name="same_s2"),  # 32 -> 16, pads 1 left, 2 right
            L.Conv1D(6, 3, padding="valid", strides=2, use_bias=False, name="valid_s2_nobias"),
            L.Conv1D(4, 2, padding="causal", name="causal_k2"),
        ],
        name="seq_conv_paddings",
    )


@_register("conv_strides_groups", time=29)
def _conv_strides_groups(k: KerasFlavour):
    """Functional with an unknown time length (input of odd length): strided same/causal, groups."""
    L = k.layers
    x_in = k.keras.Input(shape=(None, 4), name="x")
    a = L.Conv1D(6, 4, strides=3, padding="same", name="same_k4_s3")(x_in)  # 29 -> 10
    a = L.Conv1D(6, 5, strides=2, padding="same", activation="elu", name="same_k5_s2")(a)  # 10 -> 5
    b = L.Conv1D(6, 3, strides=2, padding="causal", name="causal_s2")(x_in)
    b = L.Conv1D(6, 3, padding="same", groups=2, name="same_groups2")(b)
    b = L.Conv1D(9, 3, padding="causal", dilation_rate=2, groups=3, use_bias=False, name="causal_groups3_d2")(b)
    c = L.Conv1D(4, 7, strides=3, padding="valid", name="valid_k7_s3")(x_in)
    return k.model(x_in, [a, b, c], name="conv_strides_groups")


@_register("batchnorm_variants", time=24)
def _batchnorm_variants(k: KerasFlavour):
    """Sequential: BatchNormalization with several epsilons and center/scale flags."""
    L = k.layers
    return k.keras.Sequential(
        [
            k.keras.Input(shape=(24, 6)),
            L.Conv1D(6, 3, padding="same", name="conv"),
            L.BatchNormalization(name="bn_default"),
            L.BatchNormalization(epsilon=0.01, center=False, name="bn_eps_nocenter"),
            L.BatchNormalization(epsilon=1e-5, scale=False, name="bn_eps_noscale"),
            L.BatchNormalization(epsilon=0.1, center=False, scale=False, name="bn_stats_only"),
            L.Dense(5, name="dense_3d"),
            L.BatchNormalization(epsilon=0.002, name="bn_after_dense"),
        ],
        name="batchnorm_variants",
    )


@_register("layernorm_dense", time=20)
def _layernorm_dense(k: KerasFlavour):
    """LayerNormalization variants and Dense on 3-D tensors (with and without bias)."""
    L = k.layers
    x_in = k.keras.Input(shape=(20, 7), name="x")
    x = L.LayerNormalization(name="ln_default")(x_in)
    x = L.Dense(6, activation="relu", name="dense_relu")(x)
    x = L.LayerNormalization(epsilon=1e-5, center=False, name="ln_nocenter")(x)
    x = L.Dense(6, use_bias=False, name="dense_nobias")(x)
    x = L.LayerNormalization(epsilon=0.05, scale=False, name="ln_noscale")(x)
    y = L.LayerNormalization(center=False, scale=False, name="ln_plain")(x)
    return k.model(x_in, y, name="layernorm_dense")


def _activation_builder(activation: str):
    def build(k: KerasFlavour):
        L = k.layers
        x_in = k.keras.Input(shape=(None, 4), name="x")
        x = L.Conv1D(6, 3, padding="causal", activation=activation, name="conv_act")(x_in)
        x = L.Dense(5, name="dense")(x)
        y = L.Activation(activation, name="act_layer")(x)
        return k.model(x_in, y, name=f"act_{activation}")

    return build


for _activation in ACTIVATIONS:
    _register(
        f"act_{_activation}",
        time=26,
        gain=_ACTIVATION_GAIN.get(_activation, 2.0),
        notes=f"'{_activation}' as Conv1D activation argument and as Activation layer",
    )(_activation_builder(_activation))


@_register("relu_layers", time=24, gain=2.0)
def _relu_layers(k: KerasFlavour):
    """ReLU layer variants; one output each."""
    L = k.layers
    x_in = k.keras.Input(shape=(24, 5), name="x")
    x = L.Conv1D(6, 3, padding="same", name="conv")(x_in)
    outputs = [
        L.ReLU(name="relu_plain")(x),
        L.ReLU(max_value=1.5, name="relu_max_value")(x),
        L.ReLU(negative_slope=0.1, name="relu_negative_slope")(x),
        L.ReLU(threshold=0.4, name="relu_threshold")(x),
        L.ReLU(max_value=2.0, negative_slope=0.2, threshold=0.3, name="relu_all_options")(x),
    ]
    return k.model(x_in, outputs, name="relu_layers")


@_register("leaky_elu_prelu", time=24, gain=2.0)
def _leaky_elu_prelu(k: KerasFlavour):
    """LeakyReLU (default and 0.25), ELU (default and alpha), PReLU (per element, shared axes)."""
    L = k.layers
    x_in = k.keras.Input(shape=(24, 5), name="x")
    x = L.Conv1D(6, 3, padding="same", name="conv")(x_in)
    outputs = [
        L.LeakyReLU(name="leaky_default")(x),
        k.leaky_relu(0.25, name="leaky_025")(x),
        L.ELU(name="elu_default")(x),
        L.ELU(alpha=0.7, name="elu_07")(x),
        L.PReLU(name="prelu_full")(x),  # alpha of shape (time, channels)
        L.PReLU(shared_axes=[1], name="prelu_shared_time")(x),  # alpha of shape (1, channels)
        L.PReLU(shared_axes=[1, 2], name="prelu_shared_all")(x),
    ]
    return k.model(x_in, outputs, name="leaky_elu_prelu")


@_register("noise_dropout", time=24)
def _noise_dropout(k: KerasFlavour):
    """Sequential: Dropout, SpatialDropout1D, GaussianNoise (identities at inference)."""
    L = k.layers
    return k.keras.Sequential(
        [
            k.keras.Input(shape=(24, 4)),
            L.Conv1D(5, 3, padding="causal", name="conv"),
            L.Dropout(0.4, name="dropout"),
            L.SpatialDropout1D(0.3, name="spatial_dropout"),
            L.GaussianNoise(0.7, name="gaussian_noise"),
            L.Dense(3, name="dense"),
            L.Dropout(0.2, name="dropout_last"),
        ],
        name="noise_dropout",
    )


@_register("merge_ops", time=22)
def _merge_ops(k: KerasFlavour):
    """Add, Subtract, Multiply, Average (2 and 3 operands), Concatenate along channels and time."""
    L = k.layers
    x_in = k.keras.Input(shape=(22, 5), name="x")
    a = L.Conv1D(6, 3, padding="same", name="branch_a")(x_in)
    b = L.Conv1D(6, 1, name="branch_b")(x_in)
    c = L.Dense(6, activation="tanh", name="branch_c")(x_in)
    d = L.Conv1D(3, 2, padding="causal", name="branch_d")(x_in)
    outputs = [
        L.Add(name="add3")([a, b, c]),
        L.Subtract(name="subtract")([a, b]),
        L.Multiply(name="multiply3")([a, b, c]),
        L.Average(name="average2")([a, c]),
        L.Average(name="average3")([a, b, c]),
        L.Concatenate(name="concat_last")([a, d, c]),
        L.Concatenate(axis=1, name="concat_time")([a, b]),
        L.Concatenate(axis=2, name="concat_axis2")([d, a]),
        L.Concatenate(axis=-2, name="concat_minus2")([c, a]),
    ]
    return k.model(x_in, outputs, name="merge_ops")


@_register("reshape_ops", time=20)
def _reshape_ops(k: KerasFlavour):
    """ZeroPadding1D, Cropping1D, Permute, Flatten, Dense on 2-D, Reshape (with -1)."""
    L = k.layers
    x_in = k.keras.Input(shape=(20, 4), name="x")
    x = L.ZeroPadding1D(2, name="zeropad_2")(x_in)  # 24
    x = L.ZeroPadding1D((1, 3), name="zeropad_1_3")(x)  # 28
    x = L.Conv1D(5, 3, padding="same", name="conv_a")(x)
    x = L.Cropping1D(3, name="crop_3")(x)  # 22
    x = L.Cropping1D((2, 1), name="crop_2_1")(x)  # 19
    p = L.Permute((2, 1), name="permute")(x)  # (5, 19)
    p = L.Dense(7, name="dense_over_time")(p)  # (5, 7)
    p = L.Permute((2, 1), name="permute_back")(p)  # (7, 5)
    f = L.Flatten(name="flatten")(p)  # 35
    f = L.Dense(12, activation="relu", name="dense_2d")(f)
    r = L.Reshape((4, 3), name="reshape")(f)
    r = L.Reshape((-1, 2), name="reshape_minus1")(r)  # (6, 2)
    r = L.Conv1D(3, 2, name="conv_after_reshape")(r)
    return k.model(x_in, [f, r, p], name="reshape_ops")


@_register("pooling", time=27)
def _pooling(k: KerasFlavour):
    """Max/Average pooling (valid/same, strides) and global pooling on an odd, unknown length."""
    L = k.layers
    x_in = k.keras.Input(shape=(None, 4), name="x")
    x = L.Conv1D(6, 3, padding="same", name="conv")(x_in)  # negative values: max-pool pads -inf
    gap = L.GlobalAveragePooling1D(name="global_avg")(x)
    gmp = L.GlobalMaxPooling1D(name="global_max")(x)
    outputs = [
        L.MaxPooling1D(2, name="max_valid")(x),
        L.MaxPooling1D(3, strides=2, padding="same", name="max_same_s2")(x),
        L.MaxPooling1D(4, strides=1, padding="same", name="max_same_s1")(x),
        L.AveragePooling1D(3, strides=2, name="avg_valid_s2")(x),
        L.AveragePooling1D(4, strides=3, padding="same", name="avg_same_s3")(x),  # pads not counted
        L.AveragePooling1D(2, padding="same", name="avg_same_k2")(x),
        gap,
        gmp,
        L.Dense(3, activation="sigmoid", name="dense_2d")(L.Concatenate(name="concat")([gap, gmp])),
    ]
    return k.model(x_in, outputs, name="pooling")


@_register("multi_io", time=30)
def _multi_io(k: KerasFlavour):
    """Two inputs and three outputs, each listed in an order differing from creation order."""
    L = k.layers
    in_a = k.keras.Input(shape=(30, 6), name="in_a")
    in_b = k.keras.Input(shape=(30, 3), name="in_b")
    a = L.Conv1D(8, 5, padding="causal", activation="relu", name="conv_a")(in_a)
    b = L.Conv1D(8, 3, padding="causal", activation="tanh", name="conv_b")(in_b)
    m = L.Add(name="merge")([a, b])
    prob = L.Conv1D(1, 1, activation="sigmoid", name="out_prob")(m)
    vec = L.Dense(4, name="out_vec")(L.GlobalAveragePooling1D(name="pool")(m))
    b_only = L.Conv1D(2, 1, name="out_b_only")(b)
    return k.model([in_b, in_a], [vec, prob, b_only], name="multi_io")


@_register("seq_dense_head", time=16)
def _seq_dense_head(k: KerasFlavour):
    """Sequential ending in Dense layers on a 2-D tensor."""
    L = k.layers
    return k.keras.Sequential(
        [
            k.keras.Input(shape=(16, 3)),
            L.Conv1D(4, 3, activation="elu", name="conv"),
            L.Flatten(name="flatten"),
            L.Dense(8, activation="relu", name="dense_relu"),
            L.Dense(2, activation="softsign", name="dense_softsign"),
        ],
        name="seq_dense_head",
    )


@_register("seq_input_shape_kwarg", time=18)
def _seq_input_shape_kwarg(k: KerasFlavour):
    """Sequential in the Keras 2 style: no Input, `input_shape` given to the first layer."""
    L = k.layers
    return k.keras.Sequential(
        [
            L.Conv1D(5, 4, padding="causal", activation="selu", input_shape=(18, 3), name="conv_first"),
            L.BatchNormalization(epsilon=0.005, name="bn"),
            L.Activation("softplus", name="softplus"),
            L.Conv1D(2, 1, name="head"),
        ],
        name="seq_input_shape_kwarg",
    )


# --------------------------------------------------------------------------------------------------
# Edge cases: a clear refusal is acceptable, different numbers are not
# --------------------------------------------------------------------------------------------------


@_register("edge_bn_time_axis", group="edge", time=12)
def _edge_bn_time_axis(k: KerasFlavour):
    L = k.layers
    x_in = k.keras.Input(shape=(12, 4), name="x")
    y = L.BatchNormalization(axis=1, name="bn_time")(x_in)  # statistics per time step
    return k.model(x_in, y, name="edge_bn_time_axis")


# Keras 3.15 writes gamma/beta of shape (12, 4) here but cannot load them back (expects (4,)).
@_register("edge_layernorm_axes", group="edge", time=12, flavours=("keras2",))
def _edge_layernorm_axes(k: KerasFlavour):
    L = k.layers
    x_in = k.keras.Input(shape=(12, 4), name="x")
    y = L.LayerNormalization(axis=[1, 2], name="ln_time_channels")(x_in)
    return k.model(x_in, y, name="edge_layernorm_axes")


@_register("edge_global_pool_keepdims", group="edge", time=15)
def _edge_global_pool_keepdims(k: KerasFlavour):
    L = k.layers
    x_in = k.keras.Input(shape=(15, 4), name="x")
    a = L.GlobalAveragePooling1D(keepdims=True, name="gap_keepdims")(x_in)
    b = L.GlobalMaxPooling1D(keepdims=True, name="gmp_keepdims")(x_in)
    return k.model(x_in, [a, b], name="edge_global_pool_keepdims")


@_register("edge_softmax", group="edge", time=10)
def _edge_softmax(k: KerasFlavour):
    L = k.layers
    x_in = k.keras.Input(shape=(10, 4), name="x")
    y = L.Dense(5, activation="softmax", name="dense_softmax")(x_in)
    return k.model(x_in, y, name="edge_softmax")


@_register("edge_shared_layer", group="edge", time=14)
def _edge_shared_layer(k: KerasFlavour):
    """One Dense layer called on two tensors (a second inbound node)."""
    L = k.layers
    x_in = k.keras.Input(shape=(14, 4), name="x")
    shared = L.Dense(4, activation="tanh", name="shared_dense")
    a = shared(x_in)
    b = shared(L.Conv1D(4, 3, padding="causal", name="conv")(x_in))
    c = shared(a)
    y = L.Add(name="add")([a, b, c])
    return k.model(x_in, y, name="edge_shared_layer")


@_register("edge_channels_first", group="edge", time=16)
def _edge_channels_first(k: KerasFlavour):
    """Pooling layers with data_format='channels_first': the time axis is the last one."""
    L = k.layers
    x_in = k.keras.Input(shape=(6, 16), name="x")  # (channels, time)
    a = L.MaxPooling1D(2, data_format="channels_first", name="max_cf")(x_in)
    b = L.AveragePooling1D(3, strides=2, padding="same", data_format="channels_first", name="avg_cf")(x_in)
    c = L.GlobalAveragePooling1D(data_format="channels_first", name="gap_cf")(x_in)
    d = L.GlobalMaxPooling1D(data_format="channels_first", name="gmp_cf")(x_in)
    return k.model(x_in, [a, b, c, d], name="edge_channels_first")


@_register("edge_nested_model", group="edge", time=20)
def _edge_nested_model(k: KerasFlavour):
    """A Sequential block used as a layer inside a Functional model."""
    L = k.layers
    block = k.keras.Sequential(
        [
            k.keras.Input(shape=(20, 4)),
            L.Conv1D(4, 3, padding="causal", activation="relu", name="inner_conv"),
            L.BatchNormalization(name="inner_bn"),
        ],
        name="inner_block",
    )
    x_in = k.keras.Input(shape=(20, 4), name="x")
    y = L.Dense(3, name="outer_dense")(block(x_in))
    return k.model(x_in, y, name="edge_nested_model")


@_register(
    "edge_lambda_lrelu",
    group="edge",
    time=30,
    keras_reloads=False,
    notes="fit_CNN.py's 'lrelu': a lambda around LeakyReLU(0.25) as the Conv1D activation",
)
def _edge_lambda_lrelu(k: KerasFlavour):
    """The original 'lrelu' form. Both Keras versions save the lambda as marshalled bytecode
    (`{"value": [...]}`) that neither can load back; a converter must refuse it, not guess."""
    L = k.layers
    # LeakyReLU(0.25) written without a closure (Keras must serialize the lambda; a captured layer class or
    # module breaks its serializer): max(t, 0.25 t) = 0.625 t + 0.375 |t|.
    lrelu = lambda t: 0.625 * t + 0.375 * abs(t)  # noqa: E731
    x_in = k.keras.Input(shape=(30, 12), name="input_layer")
    x = L.Conv1D(6, 5, padding="causal", activation=lrelu, name="layer_1")(x_in)
    x = L.BatchNormalization(name="layer_1_BN")(x)
    y = L.Conv1D(1, 1, activation="sigmoid", name="spikes")(x)
    return k.model(x_in, y, name="edge_lambda_lrelu")


# --------------------------------------------------------------------------------------------------
# Neuron TCNs (Beniaguev, Segev & London 2021; SelfishGene/neuron_as_deep_net fit_CNN.py)
# --------------------------------------------------------------------------------------------------


def neuron_architecture(
    window: int,
    segments: int,
    filters: list[int],
    kernels: list[int],
    activations: list[str],
    num_dvt: int,
    dilations: list[int] | None = None,
    strides: list[int] | None = None,
) -> dict:
    depth = len(filters)
    return {
        "network_depth": depth,
        "input_window_size": window,
        "num_segments": segments,
        "num_filters_per_layer": list(filters),
        "initializer_per_layer": [0.002] * depth,
        "filter_sizes_per_layer": list(kernels),
        "l2_regularization_per_layer": [1e-8] * depth,
        "activation_function_per_layer": list(activations),
        "strides_per_layer": list(strides or [1] * depth),
        "dilation_rates_per_layer": list(dilations or [1] * depth),
        "num_DVT_components": num_dvt,
    }


def build_neuron_tcn(k: KerasFlavour, arch: dict, name: str):
    """The network of fit_CNN.py: per layer Conv1D(causal, activation) then BatchNormalization.

    The original 'lrelu' is a Python lambda around LeakyReLU(0.25) passed as the activation; here it is
    the lambda-free form: a linear Conv1D followed by a LeakyReLU(0.25) layer, then the BN.
    """
    L = k.layers
    regularizer = k.keras.regularizers.l2
    x_in = k.keras.Input(shape=(arch["input_window_size"], arch["num_segments"]), name="input_layer")
    x = x_in
    for i in range(arch["network_depth"]):
        activation = arch["activation_function_per_layer"][i]
        x = L.Conv1D(
            arch["num_filters_per_layer"][i],
            arch["filter_sizes_per_layer"][i],
            activation="linear" if activation == "lrelu" else activation,
            kernel_initializer="lecun_uniform",
            kernel_regularizer=regularizer(arch["l2_regularization_per_layer"][i]),
            strides=arch["strides_per_layer"][i],
            dilation_rate=arch["dilation_rates_per_layer"][i],
            padding="causal",
            name=f"layer_{i + 1}",
        )(x)
        if activation == "lrelu":
            x = k.leaky_relu(0.25, name=f"layer_{i + 1}_lrelu")(x)
        x = L.BatchNormalization(name=f"layer_{i + 1}_BN")(x)
    spikes = L.Conv1D(
        1,
        1,
        activation="sigmoid",
        kernel_initializer="lecun_uniform",
        kernel_regularizer=regularizer(1e-8),
        padding="causal",
        name="spikes",
    )(x)
    somatic = L.Conv1D(
        1,
        1,
        activation="linear",
        kernel_initializer="lecun_uniform",
        kernel_regularizer=regularizer(1e-8),
        padding="causal",
        name="somatic",
    )(x)
    dendritic = L.Conv1D(
        arch["num_DVT_components"],
        1,
        activation="linear",
        kernel_initializer="lecun_uniform",
        kernel_regularizer=regularizer(1e-8),
        padding="causal",
        name="dendritic",
    )(x)
    return k.model(x_in, [spikes, somatic, dendritic], name=name)


def _register_neuron(name: str, arch: dict, **options):
    def build(k: KerasFlavour):
        return build_neuron_tcn(k, arch, name)

    _register(name, group="neuron", batch=2, neuron=arch, **options)(build)


_register_neuron(
    "tcn_1278_d3_lrelu",
    neuron_architecture(
        window=80, segments=1278, filters=[16, 12, 12], kernels=[35, 9, 9], activations=["lrelu"] * 3, num_dvt=20
    ),
    train_step=True,
    notes="realistic input width, 'lrelu' as LeakyReLU(0.25) layers, trained one step",
)
_register_neuron(
    "tcn_1278_fcn_relu",
    neuron_architecture(window=64, segments=1278, filters=[8], kernels=[43], activations=["relu"], num_dvt=30),
    notes="FCN-style single layer, AMPA-like 30 DVT components",
)
_register_neuron(
    "tcn_1279_d2_elu",
    neuron_architecture(window=48, segments=1279, filters=[6, 6], kernels=[21, 5], activations=["elu"] * 2, num_dvt=20),
    notes="639 + 640 segments",
)
_register_neuron(
    "tcn_d4_elu_dilated",
    neuron_architecture(
        window=48,
        segments=50,
        filters=[10, 10, 10, 10],
        kernels=[9, 5, 5, 5],
        activations=["elu"] * 4,
        num_dvt=5,
        dilations=[1, 2, 2, 1],
    ),
)
_register_neuron(
    "tcn_d7_tanh",
    neuron_architecture(
        window=40, segments=30, filters=[6] * 7, kernels=[7, 3, 3, 3, 3, 3, 3], activations=["tanh"] * 7, num_dvt=4
    ),
)
_register_neuron(
    "tcn_d2_relu_strided",
    neuron_architecture(
        window=40, segments=24, filters=[8, 8], kernels=[5, 3], activations=["relu"] * 2, num_dvt=3, strides=[1, 2]
    ),
)
_register_neuron(
    "tcn_d3_mixed",
    neuron_architecture(
        window=36, segments=20, filters=[7, 5, 9], kernels=[11, 4, 2], activations=["relu", "lrelu", "tanh"], num_dvt=2
    ),
)


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def _weight_value(rng, kind: str, shape: tuple[int, ...], gain: float):
    """A non-trivial value for one weight, chosen by its Keras name (kernel, bias, gamma, ...)."""
    import numpy as np

    if kind in ("kernel", "depthwise_kernel"):
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        return rng.normal(0.0, gain / np.sqrt(fan_in), shape)
    if kind == "bias":
        return rng.normal(0.0, 0.3, shape)
    if kind == "gamma":
        return rng.uniform(0.5, 1.5, shape)
    if kind == "beta":
        return rng.normal(0.0, 0.3, shape)
    if kind == "moving_mean":
        return rng.normal(0.0, 0.4, shape)
    if kind == "moving_variance":
        return rng.uniform(0.3, 2.0, shape)
    if kind == "alpha":  # PReLU slopes, some negative
        return rng.uniform(-0.2, 0.6, shape)
    raise ValueError(f"no test value defined for weight kind {kind!r}")


def set_test_weights(model, rng, gain: float) -> None:
    """Give every layer non-trivial weights (random kernels, non-zero biases, BN statistics)."""
    for layer in model.layers:
        weights = layer.weights
        if not weights:
            continue
        values = []
        for w in weights:
            kind = w.name.split("/")[-1].split(":")[0]
            values.append(_weight_value(rng, kind, tuple(w.shape), gain).astype("float32"))
        layer.set_weights(values)

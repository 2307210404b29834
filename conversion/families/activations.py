"""Activation functions (the `activation` argument of layers) and activation layers."""

from __future__ import annotations

from typing import Any

from conversion.families.common import number
from conversion.registry import ConvertedLayer, KerasLayer, LayerProblem, register_layer_converter
from models.activations import KERAS_NAMES, ActivationSpec

ALIASES = {"swish": "silu"}


def activation_name(value: Any, keras_major: int) -> str:
    """The module-side name of a Keras activation as stored in a config (a string, or a Keras 3 dict).

    A Python function stored as bytecode (a dict without a name) cannot be rebuilt: conversion.lambdas resolves
    such activations from the training record before the layers are converted, and refuses the rest.
    """
    if value is None:
        return "linear"
    if isinstance(value, dict):
        if not isinstance(value.get("config"), str):
            raise LayerProblem(f"the activation is stored as {str(value)[:80]}, which names no Keras activation")
        value = value["config"]
    name = ALIASES.get(value, value)
    if name not in KERAS_NAMES:
        raise LayerProblem(f"activation {value!r} is not supported; supported: {', '.join(KERAS_NAMES)}, swish")
    if name == "hard_sigmoid" and keras_major < 3:
        name = "hard_sigmoid_keras2"  # Keras 2: clip(0.2·x + 0.5); Keras 3: clip(x/6 + 0.5)
    return name


def layer_activation(layer: KerasLayer, default: Any = None) -> ActivationSpec:
    """The activation a layer computes: the one resolved from the training record where its stored activation
    is a Python function (conversion.lambdas), else the name in its config."""
    if layer.resolved_activation is not None:
        return layer.resolved_activation
    return activation_name(layer.config.get("activation", default), layer.keras_major)


@register_layer_converter("Activation")
def convert_activation(layer: KerasLayer) -> ConvertedLayer:
    return ConvertedLayer("activation", {"activation": layer_activation(layer)})


@register_layer_converter("ReLU")
def convert_relu(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    max_value = None if c.get("max_value") is None else number(c, "max_value", 0.0)
    return ConvertedLayer(
        "relu",
        {
            "negative_slope": number(c, "negative_slope", 0.0),
            "max_value": max_value,
            "threshold": number(c, "threshold", 0.0),
        },
    )


@register_layer_converter("LeakyReLU")
def convert_leaky_relu(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    key = "negative_slope" if "negative_slope" in c else "alpha"  # Keras 3 / Keras 2 name
    return ConvertedLayer("leaky_relu", {"negative_slope": number(c, key, 0.3)})


@register_layer_converter("ELU")
def convert_elu(layer: KerasLayer) -> ConvertedLayer:
    return ConvertedLayer("elu", {"alpha": number(layer.config, "alpha", 1.0)})


@register_layer_converter("PReLU")
def convert_prelu(layer: KerasLayer) -> ConvertedLayer:
    alpha = layer.weights.take("alpha")
    return ConvertedLayer("prelu", {"alpha_shape": list(alpha.shape)}, {"alpha": alpha})


@register_layer_converter(
    "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization"
)
def convert_training_only(layer: KerasLayer) -> ConvertedLayer:
    """These layers act only during training: identity at inference."""
    return ConvertedLayer("identity", {})

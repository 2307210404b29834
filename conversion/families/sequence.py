"""Embedding (token indices → vectors) and RepeatVector (one vector → a sequence)."""

from __future__ import annotations

from conversion.families.common import refuse_unknown_options
from conversion.registry import ConvertedLayer, KerasLayer, LayerProblem, register_layer_converter

# Keras 2 and 3's options; sparse and LoRA change training only (a LoRA table is saved merged), a quantized
# table is stored as other weights, which are then refused as unexpected
EMBEDDING_OPTIONS = {
    "input_dim",
    "output_dim",
    "mask_zero",
    "input_length",
    "embeddings_initializer",
    "embeddings_regularizer",
    "embeddings_constraint",
    "activity_regularizer",
    "sparse",
    "lora_rank",
    "lora_alpha",
    "quantization_config",
}


def positive(value: object, what: str) -> int:
    """A size from a layer config: a positive integer (a bool or a float is not one)."""
    if type(value) is not int or value < 1:
        raise LayerProblem(f"{what} {value!r} is not a positive integer")
    return value


@register_layer_converter("Embedding")
def convert_embedding(layer: KerasLayer) -> ConvertedLayer:
    """The mask of `mask_zero` is not the layer's business here: conversion.masks follows it through the graph."""
    c = layer.config
    refuse_unknown_options(c, EMBEDDING_OPTIONS, "Keras")
    input_dim, output_dim = positive(c.get("input_dim"), "input_dim"), positive(c.get("output_dim"), "output_dim")
    table = layer.weights.take("embeddings", (input_dim, output_dim))
    return ConvertedLayer("embedding", {"input_dim": input_dim, "output_dim": output_dim}, {"weight": table})


@register_layer_converter("RepeatVector")
def convert_repeat_vector(layer: KerasLayer) -> ConvertedLayer:
    refuse_unknown_options(layer.config, {"n"}, "Keras")
    return ConvertedLayer("repeat_vector", {"n": positive(layer.config.get("n"), "n")})

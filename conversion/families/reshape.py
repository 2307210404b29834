"""Layers that move, pad, crop or pool values along the time axis, or reshape the tensor."""

from __future__ import annotations

from conversion.families.common import pair, require_channels_last, single
from conversion.registry import ConvertedLayer, KerasLayer, LayerProblem, register_layer_converter

POOLS = {"MaxPooling1D": "max", "MaxPool1D": "max", "AveragePooling1D": "avg", "AvgPool1D": "avg"}
GLOBAL_POOLS = {
    "GlobalAveragePooling1D": "avg",
    "GlobalAvgPool1D": "avg",
    "GlobalMaxPooling1D": "max",
    "GlobalMaxPool1D": "max",
}


@register_layer_converter("ZeroPadding1D")
def convert_zero_padding(layer: KerasLayer) -> ConvertedLayer:
    left, right = pair(layer.config.get("padding", 1))
    return ConvertedLayer("time_pad", {"left": left, "right": right})


@register_layer_converter("Cropping1D")
def convert_cropping(layer: KerasLayer) -> ConvertedLayer:
    left, right = pair(layer.config.get("cropping", (1, 1)))
    return ConvertedLayer("time_pad", {"left": -left, "right": -right})


@register_layer_converter("Flatten")
def convert_flatten(layer: KerasLayer) -> ConvertedLayer:
    require_channels_last(layer.config)
    return ConvertedLayer("reshape", {"target_shape": [-1]})


@register_layer_converter("Reshape")
def convert_reshape(layer: KerasLayer) -> ConvertedLayer:
    return ConvertedLayer("reshape", {"target_shape": [int(s) for s in layer.config["target_shape"]]})


@register_layer_converter("Permute")
def convert_permute(layer: KerasLayer) -> ConvertedLayer:
    return ConvertedLayer("reshape", {"permute": [int(d) for d in layer.config["dims"]]})


@register_layer_converter(*POOLS)
def convert_pool(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    require_channels_last(c)
    padding = str(c.get("padding", "valid")).lower()
    if padding not in ("valid", "same"):
        raise LayerProblem(f"padding {padding!r} is not supported (valid, same)")
    pool_size = single(c.get("pool_size", 2), "pool_size")
    strides = c.get("strides")
    return ConvertedLayer(
        "pool1d",
        {
            "kind": POOLS[layer.class_name],
            "pool_size": pool_size,
            "stride": pool_size if strides is None else single(strides, "strides"),
            "padding": padding,
        },
    )


@register_layer_converter(*GLOBAL_POOLS)
def convert_global_pool(layer: KerasLayer) -> ConvertedLayer:
    require_channels_last(layer.config)
    return ConvertedLayer(
        "global_pool1d", {"kind": GLOBAL_POOLS[layer.class_name], "keepdims": bool(layer.config.get("keepdims", False))}
    )

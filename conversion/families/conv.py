"""Conv1D and Dense: Keras kernels (k, in, out) / (in, out) become torch weights (out, in, k) / (out, in)."""

from __future__ import annotations

from conversion.families.activations import layer_activation
from conversion.families.common import require_channels_last, single
from conversion.registry import ConvertedLayer, KerasLayer, LayerProblem, register_layer_converter

CONV_PADDINGS = {"causal", "same", "valid"}


@register_layer_converter("Conv1D", "Convolution1D")
def convert_conv1d(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    require_channels_last(c)
    padding = str(c.get("padding", "valid")).lower()
    if padding not in CONV_PADDINGS:
        raise LayerProblem(f"padding {padding!r} is not supported ({', '.join(sorted(CONV_PADDINGS))})")
    kernel_size, filters = single(c["kernel_size"], "kernel_size"), int(c["filters"])
    groups = int(c.get("groups", 1))
    stride, dilation = single(c.get("strides", 1), "strides"), single(c.get("dilation_rate", 1), "dilation_rate")
    sizes = {
        "kernel_size": kernel_size,
        "filters": filters,
        "groups": groups,
        "strides": stride,
        "dilation_rate": dilation,
    }
    if min(sizes.values()) < 1 or filters % groups:
        raise LayerProblem(f"{sizes} are not positive sizes with groups dividing filters")
    kernel = layer.weights.take("kernel", (kernel_size, None, filters))
    params = {"weight": kernel.transpose(2, 1, 0).copy()}
    use_bias = bool(c.get("use_bias", True))
    if use_bias:
        params["bias"] = layer.weights.take("bias", (filters,))
    return ConvertedLayer(
        "conv1d",
        {
            "in_channels": kernel.shape[1] * groups,
            "out_channels": filters,
            "kernel_size": kernel_size,
            "stride": stride,
            "dilation": dilation,
            "groups": groups,
            "padding": padding,
            "bias": use_bias,
            "activation": layer_activation(layer),
        },
        params,
    )


@register_layer_converter("Dense")
def convert_dense(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    units = int(c["units"])
    if units < 1:
        raise LayerProblem(f"units {units} is not a positive size")
    kernel = layer.weights.take("kernel", (None, units))
    params = {"weight": kernel.T.copy()}
    use_bias = bool(c.get("use_bias", True))
    if use_bias:
        params["bias"] = layer.weights.take("bias", (units,))
    return ConvertedLayer(
        "dense",
        {
            "in_features": kernel.shape[0],
            "out_features": units,
            "bias": use_bias,
            "activation": layer_activation(layer),
        },
        params,
    )

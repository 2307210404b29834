"""BatchNormalization (inference: moving statistics) and LayerNormalization, with the file's epsilon."""

from __future__ import annotations

from conversion.families.common import axis_list, number
from conversion.registry import ConvertedLayer, KerasLayer, LayerProblem, register_layer_converter

KERAS_NORM_EPSILON = 1e-3


@register_layer_converter("BatchNormalization")
def convert_batch_norm(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    if c.get("renorm"):
        raise LayerProblem("batch renormalization (renorm=True) is not supported")
    axes = axis_list(c.get("axis", -1))
    if len(axes) != 1:
        raise LayerProblem(f"normalization over several axes {axes} is not supported")
    mean = layer.weights.take("moving_mean", (None,))
    size = mean.shape[0]
    params = {"running_mean": mean, "running_var": layer.weights.take("moving_variance", (size,))}
    center, scale = bool(c.get("center", True)), bool(c.get("scale", True))
    if scale:
        params["weight"] = layer.weights.take("gamma", (size,))
    if center:
        params["bias"] = layer.weights.take("beta", (size,))
    return ConvertedLayer(
        "batch_norm",
        {
            "num_features": size,
            "axis": axes[0],
            "epsilon": number(c, "epsilon", KERAS_NORM_EPSILON, minimum=0),
            "center": center,
            "scale": scale,
        },
        params,
    )


@register_layer_converter("LayerNormalization")
def convert_layer_norm(layer: KerasLayer) -> ConvertedLayer:
    c = layer.config
    center, scale = bool(c.get("center", True)), bool(c.get("scale", True))
    rms_scaling = bool(c.get("rms_scaling", False))
    params = {}
    if scale or rms_scaling:
        params["weight"] = layer.weights.take("gamma")
    if center and not rms_scaling:
        params["bias"] = layer.weights.take("beta")
    shape = list(next(iter(params.values())).shape) if params else [1]
    return ConvertedLayer(
        "layer_norm",
        {
            "axes": axis_list(c.get("axis", -1)),
            "shape": shape,
            "epsilon": number(c, "epsilon", KERAS_NORM_EPSILON, minimum=0),
            "center": center and not rms_scaling,
            "scale": scale or rms_scaling,
            "rms_scaling": rms_scaling,
        },
        params,
    )

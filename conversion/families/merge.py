"""Merge layers: element-wise Add, Subtract, Multiply, Average, Maximum, Minimum, and Concatenate."""
from __future__ import annotations

from conversion.registry import ConvertedLayer, KerasLayer, register_layer_converter

MERGE_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
             "Maximum": "maximum", "Minimum": "minimum"}


@register_layer_converter(*MERGE_OPS)
def convert_elementwise(layer: KerasLayer) -> ConvertedLayer:
    return ConvertedLayer("merge", {"op": MERGE_OPS[layer.class_name.split(">")[-1]]})


@register_layer_converter("Concatenate")
def convert_concatenate(layer: KerasLayer) -> ConvertedLayer:
    return ConvertedLayer("merge", {"op": "concatenate", "axis": int(layer.config.get("axis", -1))})

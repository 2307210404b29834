"""Merge layers: element-wise Add, Subtract, Multiply, Average, Maximum, Minimum, and Concatenate."""

from __future__ import annotations

from conversion.registry import ConvertedLayer, KerasLayer, bare_class_name, register_layer_converter

MERGE_OPS = {
    "Add": "add",
    "Subtract": "subtract",
    "Multiply": "multiply",
    "Average": "average",
    "Maximum": "maximum",
    "Minimum": "minimum",
}


@register_layer_converter(*MERGE_OPS)
def convert_elementwise(layer: KerasLayer) -> ConvertedLayer:
    return ConvertedLayer("merge", {"op": MERGE_OPS[bare_class_name(layer.class_name)]})


@register_layer_converter("Concatenate")
def convert_concatenate(layer: KerasLayer) -> ConvertedLayer:
    return ConvertedLayer("merge", {"op": "concatenate", "axis": int(layer.config.get("axis", -1))})

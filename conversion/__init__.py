"""Keras model files → PyTorch: reading (no TensorFlow), per-layer converters, verification against Keras."""

CONVERTER_VERSION = "1.0.0"

"""Keras model files → PyTorch: reading (no TensorFlow), per-layer converters, verification against Keras."""

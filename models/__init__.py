"""Torch modules with Keras semantics and the `.pth` format of converted models."""

from models.checkpoint import load_converted_model
from models.graph import KerasGraphModule

__all__ = ["KerasGraphModule", "load_converted_model"]

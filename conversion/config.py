"""The `conversion:` section of the configuration: how the chosen model's PyTorch file is found or made."""
from __future__ import annotations

from pydantic import Field

from config_base import Section

DEFAULT_LOCK_TIMEOUT_S = 600.0  # how long a job waits for another converting the same model


class ConversionConfig(Section):
    """How the chosen model's PyTorch file is found or made."""

    verify: bool = Field(True, description="Compare a new conversion with Keras when TensorFlow is installed.")
    trust_pickles: bool = Field(
        False, description="Load parameter pickles with the unrestricted unpickler (runs code: trusted files only).")
    lock_timeout_s: float = Field(DEFAULT_LOCK_TIMEOUT_S, gt=0, le=7 * 86400,
                                  description="Wait at most this long for another job converting the model.")

"""The `conversion:` section of the configuration: how the chosen model's PyTorch file is found or made, and in
which form it is stored (`ExportConfig`, also the converter's API and command-line options)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from config_base import Section

DEFAULT_LOCK_TIMEOUT_S = 600.0  # how long a job waits for another converting the same model


class ExportConfig(Section):
    """How the converted weights are stored. Anything but float32 without quantization or pruning changes the
    model's outputs a little: that cost is measured against the float32 conversion and recorded."""

    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="Precision of the stored floating-point weights (the model computes in float32)."
    )
    quantize: Literal["int8"] | None = Field(
        default=None, description="int8: conv/dense weights as int8 with one float32 scale per output channel."
    )
    prune: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Set this fraction of the conv/dense weights to zero, smallest magnitude "
        "first, and store them sparse.",
    )
    prune_scope: Literal["layer", "global"] = Field(
        default="layer",
        description="layer: prune each weight tensor by the fraction; global: one magnitude threshold for all of them.",
    )
    max_error: float | None = Field(
        default=None,
        gt=0,
        description="Refuse the export when an output's error (max abs diff to the float32 conversion "
        "÷ max(1, its largest |value|)) exceeds this.",
    )

    @model_validator(mode="after")
    def _options_that_apply(self) -> ExportConfig:
        """`max_error` only with an export that is not exact float32; `prune_scope: global` only with `prune`."""
        if self.exact and self.max_error is not None:
            raise ValueError(
                "max_error bounds the cost of an export (dtype float16/bfloat16, quantize, prune); the "
                "float32 conversion is exact"
            )
        if self.prune is None and self.prune_scope != "layer":
            raise ValueError("prune_scope applies to pruning: give prune too")
        return self

    @property
    def exact(self) -> bool:
        """The float32 conversion itself: nothing to measure."""
        return self.dtype == "float32" and self.quantize is None and self.prune is None

    def describe(self) -> str:
        """A short name: 'float32', 'int8', 'pruned 50 % (layer), int8', 'float16'."""
        parts = [f"pruned {self.prune * 100:.10g} % ({self.prune_scope})"] if self.prune else []
        parts += [self.quantize] if self.quantize else []
        if self.dtype != "float32" or not parts:
            parts.append(self.dtype)
        return ", ".join(parts)

    def short(self) -> str:
        """The same in one word, for tables: 'float32', 'int8', 'pruned50%+int8', 'pruned30%global+float16'."""
        parts = (
            [f"pruned{self.prune * 100:.10g}%" + ("global" if self.prune_scope == "global" else "")]
            if self.prune
            else []
        )
        parts += [self.quantize] if self.quantize else []
        return "+".join(parts + ([self.dtype] if self.dtype != "float32" or not parts else []))


class ConversionConfig(Section):
    """How the chosen model's PyTorch file is found or made."""

    verify: bool = Field(default=True, description="Compare a new conversion with Keras when TensorFlow is installed.")
    trust_pickles: bool = Field(
        default=False,
        description="Load parameter pickles with the unrestricted unpickler (runs code: trusted files only).",
    )
    lock_timeout_s: float = Field(
        default=DEFAULT_LOCK_TIMEOUT_S,
        gt=0,
        le=7 * 86400,
        description="Wait at most this long for another job converting the model.",
    )
    export: ExportConfig = Field(
        default_factory=ExportConfig, description="How the converted weights are stored (float32: exactly)."
    )

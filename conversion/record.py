"""The conversion record (the `.pth` metadata and its info pickle) and the verification result, as typed records
with their serialization in one place.

A `.pth` stores the record as a plain dict, so that `torch.load(..., weights_only=True)` reads it and so that a
converted module's `metadata` stays a dict for its users; code that needs the fields reads them through these
classes (`ConversionRecord.from_dict(model.metadata)`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """Numpy values, dtypes, sets and tuples as plain Python types, so that metadata loads with
    weights_only=True (a pickle's nesting depth is bounded when it is read: safe_pickle.check_plain_structure)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.dtype, type, complex)):
        return str(value)
    return value


@dataclass
class OutputParity:
    """One model output against Keras."""

    max_abs_diff: float
    mean_abs_diff: float
    max_abs_value: float
    passed: bool


@dataclass
class Verification:
    """A comparison of the converted model with Keras, or why none was made (`skipped`)."""

    outputs: dict[str, OutputParity] = field(default_factory=dict)
    keras: str = ""
    keras_model: str = "loaded from the file"  # or how it was rebuilt (conversion.verify.KerasRebuild)
    input: str = ""
    input_shapes: list[list[int]] = field(default_factory=list)
    tolerance: float = 0.0
    rtol: float = 0.0
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is None and bool(self.outputs) and all(o.passed for o in self.outputs.values())

    def worst(self) -> tuple[str, float] | None:
        """(output name, max abs diff) of the output furthest from Keras; None when nothing was compared."""
        if not self.outputs:
            return None
        name = max(self.outputs, key=lambda output: self.outputs[output].max_abs_diff)
        return name, self.outputs[name].max_abs_diff

    def to_dict(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {"skipped": self.skipped}
        record = dataclasses.asdict(self)
        del record["skipped"]
        return {**record, "passed": self.passed}

    @classmethod
    def from_dict(cls, data: Any) -> Verification | None:
        """The record's `verification` entry (None when there is none; unknown keys are ignored)."""
        if not isinstance(data, dict):
            return None
        if "skipped" in data:
            return cls(skipped=str(data["skipped"]))
        outputs = {
            str(name): OutputParity(
                **{key: value[key] for key in ("max_abs_diff", "mean_abs_diff", "max_abs_value", "passed")}
            )
            for name, value in (data.get("outputs") or {}).items()
        }
        names = {f.name for f in dataclasses.fields(cls)} - {"outputs", "skipped"}
        return cls(outputs=outputs, **{key: data[key] for key in names if key in data})


@dataclass
class OutputCost:
    """One output of an export against the float32 conversion; `error` = max_abs_diff / max(1, max_abs_value),
    what `max_error` bounds."""

    max_abs_diff: float
    mean_abs_diff: float
    max_abs_value: float
    error: float


@dataclass
class SpikeCost:
    """The spike output of an export against the float32 conversion (conversion.export.spike_cost)."""

    auc_float32: float | None
    auc_export: float | None
    auc_change: float | None
    threshold: float
    trials: int
    spiking_float32: int
    spiking_export: int
    verdicts_changed: int
    bins_above_float32: int
    bins_above_export: int


def _figure(entry: dict[str, Any], key: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"the export record's {key} is {value!r:.40}, not a finite number ≥ 0")
    return float(value)


@dataclass
class ExportRecord:
    """How a conversion was stored when not as float32 weights (conversion.export), and what that costs."""

    options: dict[str, Any]
    folded: list[dict[str, Any]] = field(default_factory=list)
    not_folded: list[dict[str, Any]] = field(default_factory=list)
    overflowed: list[str] = field(default_factory=list)
    sparsity: dict[str, float] = field(default_factory=dict)
    weight_bytes: int = 0
    float32_weight_bytes: int = 0
    input: str = ""
    outputs: dict[str, OutputCost] = field(default_factory=dict)
    spikes: SpikeCost | None = None

    def worst(self) -> tuple[str, float] | None:
        """(output, error) of the output the export changed most, relative to its scale."""
        if not self.outputs:
            return None
        name = max(self.outputs, key=lambda output: self.outputs[output].error)
        return name, self.outputs[name].error

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ExportRecord | None:
        """The record's `export` entry (None for the float32 conversion); TypeError/ValueError when it is not one
        this converter writes: a cost for at least one output, every figure a finite number ≥ 0."""
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
            raise TypeError(f"the export record is not a dict with options ({type(data).__name__})")
        outputs, spikes = data.get("outputs"), data.get("spikes")
        if not isinstance(outputs, dict) or not outputs or not all(isinstance(v, dict) for v in outputs.values()):
            raise ValueError("the export record holds no cost per output")
        costs = {
            str(name): OutputCost(**{key: _figure(value, key) for key in _FIELDS[OutputCost]})
            for name, value in outputs.items()
        }
        if spikes is not None and not isinstance(spikes, dict):
            raise TypeError("the export record's spike cost is not a dict")
        names = {f.name for f in dataclasses.fields(cls)} - {"outputs", "spikes"}
        return cls(
            outputs=costs,
            spikes=SpikeCost(**{key: spikes[key] for key in _FIELDS[SpikeCost]}) if spikes is not None else None,
            **{key: data[key] for key in names if key in data},
        )


_FIELDS = {kind: [f.name for f in dataclasses.fields(kind)] for kind in (OutputCost, SpikeCost)}


@dataclass
class ConversionRecord:
    """What a conversion records: its source, the Keras file's facts, the layer table, the verification."""

    converter_version: str
    format_version: int
    source_path: str
    source_sha256: str
    keras_version: str
    backend: str
    model_class: str | None
    converted_at: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    shapes_traced_with_length: int
    layers: list[dict[str, Any]]
    weights_only: bool = False  # the architecture came from the params pickle
    dtype: str = "float32"
    resolved_activations: list[dict[str, Any]] = field(default_factory=list)  # conversion.lambdas
    architecture_dict: dict[str, Any] | None = None
    verification: Verification | None = None
    export: ExportRecord | None = None  # None: the float32 conversion itself
    params_pickle: str | None = None
    params_sha256: str | None = None
    weights_path: str | None = None  # a model given as to_json() text (source_path) + this save_weights file
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record["verification"] = self.verification.to_dict() if self.verification is not None else None
        record["export"] = self.export.to_dict() if self.export is not None else None
        return plain(record)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionRecord:
        """A record read back from a `.pth` (KeyError/TypeError when it is not one)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in fields}
        values["verification"] = Verification.from_dict(data.get("verification"))
        values["export"] = ExportRecord.from_dict(data.get("export"))
        return cls(**values)

    @property
    def needs_params(self) -> bool:
        """The params pickle supplied part of the model (a weights-only file's architecture, lambda activations):
        the conversion belongs to that pickle as much as to the Keras file."""
        return bool(self.weights_only or self.resolved_activations)

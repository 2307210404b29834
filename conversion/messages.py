"""What the converter tells its user about one conversion: the lines the CLI prints (reporting kept apart from
the conversion itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from conversion.config import ExportConfig
from conversion.record import ConversionRecord


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters, as Keras counts them: BatchNormalization's moving statistics included."""
    trainable = sum(p.numel() for p in model.parameters())
    return trainable + sum(b.numel() for b in model.buffers()), trainable


def outcome_lines(outcome: Any, source: Path) -> list[str]:  # a conversion.cache.ConversionOutcome
    """`converted X -> Y (...)` or `up to date: ...`, then the verification: its figures, or why it is missing."""
    record = ConversionRecord.from_dict(outcome.model.metadata)
    if outcome.cached:
        lines = [f"up to date: {source} -> {outcome.path} (cached)"]
    else:
        if record.export is None:
            total, trainable = parameter_counts(outcome.model)
            counts = f"{total:,} parameters, {trainable:,} trainable"
        else:  # the exported module may have fewer (folded BatchNorms): the count of the Keras model
            counts = f"{sum(layer['parameters'] for layer in record.layers):,} parameters in Keras"
        stored = f", stored as {stored_as(record)}" if record.export is not None else ""
        lines = [f"converted {source} -> {outcome.path} ({len(record.layers)} layers, {counts}{stored})"]
    verification = record.verification
    if verification is not None and verification.skipped is None:
        figures = ", ".join(f"{name} {o.max_abs_diff:.2g}" for name, o in verification.outputs.items())
        rebuilt = verification.keras_model
        lines.append(
            f"verified against {verification.keras}: max abs diff {figures}"
            + (f" (against {rebuilt})" if rebuilt.startswith("a Keras model") else "")
        )
    elif verification is not None:
        lines.append(f"not verified: {verification.skipped}")
    return lines + export_cost_lines(outcome.model.metadata)


def stored_as(record: ConversionRecord, short: bool = False) -> str:
    """How the record's weights are stored: 'float32', 'pruned 50 % (layer), int8' (short: 'pruned50%+int8')."""
    export = ExportConfig(**{**(record.export.options if record.export else {}), "dtype": record.dtype})
    return export.short() if short else export.describe()


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.3g} MB"


def export_cost_lines(metadata: dict[str, Any]) -> list[str]:
    """The measured cost of a stored form other than float32 (nothing for the float32 conversion itself)."""
    record = ConversionRecord.from_dict(metadata)
    export = record.export
    if export is None:
        return []
    figures = ", ".join(
        f"{name} {cost.max_abs_diff:.2g} (mean {cost.mean_abs_diff:.2g})" for name, cost in export.outputs.items()
    )
    lines = [f"{stored_as(record)}: max abs diff to the float32 conversion {figures}, on {export.input}"]
    spikes = export.spikes
    if spikes is not None:
        auc = f"AUC {spikes.auc_float32:.4f} -> {spikes.auc_export:.4f}; " if spikes.auc_float32 is not None else ""
        lines.append(
            f"spikes: {auc}trials reaching {spikes.threshold:g}: {spikes.spiking_float32} -> "
            f"{spikes.spiking_export} of {spikes.trials} ({spikes.verdicts_changed} changed)"
        )
    folded = "; ".join(f"{f['batch_norm']} into {', '.join(f['into'])}" for f in export.folded)
    lines.append(
        f"weights {_megabytes(export.float32_weight_bytes)} -> {_megabytes(export.weight_bytes)}"
        + (f"; BatchNorm folded: {folded}" if folded else "")
        + (f"; {len(export.not_folded)} BatchNorm not folded" if export.not_folded else "")
    )
    return lines

"""What the converter tells its user about one conversion: the lines the CLI prints (reporting kept apart from
the conversion itself)."""
from __future__ import annotations

from pathlib import Path

from conversion.cache import ConversionOutcome
from conversion.record import ConversionRecord


def parameter_counts(model) -> tuple[int, int]:
    """(all, trainable) parameters, as Keras counts them: BatchNormalization's moving statistics included."""
    trainable = sum(p.numel() for p in model.parameters())
    return trainable + sum(b.numel() for b in model.buffers()), trainable


def outcome_lines(outcome: ConversionOutcome, source: Path) -> list[str]:
    """`converted X -> Y (...)` or `up to date: ...`, then the verification: its figures, or why it is missing."""
    record = ConversionRecord.from_dict(outcome.model.metadata)
    if outcome.cached:
        lines = [f"up to date: {source} -> {outcome.path} (cached)"]
    else:
        total, trainable = parameter_counts(outcome.model)
        stored = f", stored as {record.dtype}" if record.dtype != "float32" else ""
        lines = [f"converted {source} -> {outcome.path} ({len(record.layers)} layers, {total:,} parameters, "
                 f"{trainable:,} trainable{stored})"]
    verification = record.verification
    if verification is not None and verification.skipped is None:
        figures = ", ".join(f"{name} {o.max_abs_diff:.2g}" for name, o in verification.outputs.items())
        rebuilt = verification.keras_model
        lines.append(f"verified against {verification.keras}: max abs diff {figures}"
                     + (f" (against {rebuilt})" if rebuilt.startswith("a Keras model") else ""))
    elif verification is not None:
        lines.append(f"not verified: {verification.skipped}")
    return lines

"""The `selection:` section of the configuration: how the best model is chosen from the results table."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from config_base import COUNT_END, Section


class SelectionConfig(Section):
    """How the best model is chosen from the results table."""

    metric: str = Field(default="val_spikes_loss", description="Key of training_history_dict used to rank models.")
    reduction: Literal["min", "max", "last", "mean_last_k"] = Field(
        default="min",
        description="How the per-epoch metric becomes one number: min, max, last, or the mean of the last k.",
    )
    last_k: int = Field(default=5, ge=1, lt=COUNT_END, description="k of mean_last_k.")
    goal: Literal["minimize", "maximize"] = Field(default="minimize", description="Lower is better (losses) or higher.")
    results_table: Path | None = Field(
        default=None, description="A CSV table of candidates (columns below) instead of scanning models_dir."
    )
    csv_model_column: str = Field(default="model_path", description="CSV column with the .h5 (or .pth) path.")
    csv_metric_column: str = Field(default="metric", description="CSV column with the selection value.")
    show_top: int = Field(default=10, ge=1, lt=COUNT_END, description="Rows of the ranked table printed.")
    fallback: Literal["stop", "next"] = Field(
        default="stop",
        description="When the best model cannot be used (its conversion is refused, its file is "
        "unusable): stop, naming the cause and the next usable candidate, or take the next usable one.",
    )

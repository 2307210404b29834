"""The results table: one row per candidate model with its files, its selection value, and why it is unusable.

Rows come from the `.pickle` files in a models folder (metric from `training_history_dict`) or from a CSV
table. Rows without a usable value or model file stay in the table with a reason and are never selected.
Ranking: by value (ascending when minimizing, descending when maximizing), ties broken by the model stem in
alphabetical order, so the same table always gives the same choice.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conversion.pairing import (
    CONVERTED_INFO_SUFFIX,
    PARAMS_SUFFIX,
    find_params_pickles,
    keras_files_for,
    model_stem,
    pytorch_candidates,
)
from errors import PickleFileError, SelectionError, listed
from fileio import real_path, regular_file_size
from safe_pickle import load_pickle
from selection.config import SelectionConfig

log = logging.getLogger(__name__)
COLUMNS = [
    "rank",
    "stem",
    "value",
    "usable",
    "reason",
    "note",
    "keras_file",
    "pth_candidates",
    "params",
    "finite_epochs",
    "stem_path",
]


@dataclass(frozen=True)
class MetricValue:
    """A per-epoch metric reduced to the selection value, with what was left out and why."""

    value: float  # NaN when there is no usable value
    finite_epochs: int
    reason: str | None = None  # why the model is unusable
    note: str = ""  # what was left out (non-finite epochs inside the history)


def _epochs(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i) + 1) for i in indices[:8])
    return shown + (", ..." if indices.size > 8 else "")


def _epoch_values(values: Any) -> np.ndarray | None:
    """A per-epoch metric as floats: a list, tuple or 1-D array of real numbers (not booleans, strings or
    nested lists); None for anything else."""
    if isinstance(values, np.ndarray):
        return values.astype(float) if values.ndim == 1 and values.dtype.kind in "fiu" else None
    if not isinstance(values, (list, tuple)):
        return None
    if not all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in values
    ):
        return None
    return np.asarray(values, dtype=float)


def reduce_history(values: Any, metric: str, reduction: str, last_k: int) -> MetricValue:
    """The selection value of a per-epoch metric (epochs are counted from 1).

    A history that ends in non-finite values diverged: the model saved at its end is unusable, whatever its
    early epochs say. Non-finite epochs inside a history are dropped and counted in the note.
    """
    array = _epoch_values(values)
    if array is None:
        return MetricValue(math.nan, 0, f"'{metric}' is not a list of numbers (one per epoch)")
    finite = np.isfinite(array)
    if not finite.any():
        return MetricValue(
            math.nan, 0, f"'{metric}' has no finite value" + (f" ({reduction})" if array.size else " (empty history)")
        )
    last_finite = int(np.flatnonzero(finite)[-1])
    if last_finite < array.size - 1:
        return MetricValue(
            math.nan, int(finite.sum()), f"diverged: {metric} non-finite from epoch {last_finite + 2} of {array.size}"
        )
    dropped = np.flatnonzero(~finite)
    note = f"{dropped.size} non-finite epoch(s) of {metric} dropped (epoch {_epochs(dropped)})" if dropped.size else ""
    kept = array[finite]
    value = {"min": kept.min, "max": kept.max, "last": lambda: kept[-1], "mean_last_k": lambda: kept[-last_k:].mean()}[
        reduction
    ]()
    return MetricValue(float(value), int(kept.size), None, note)


@dataclass(frozen=True)
class Candidate:
    """One row of the results table. `rank` is set by `rank` (None for unusable rows); the table's CSV form
    (results_table.csv) is `to_row`, read back by `from_row`."""

    stem: str
    value: float
    reason: str  # why the row is unusable; "" when usable
    stem_path: Path
    keras_file: Path | None = None
    pth_candidates: tuple[Path, ...] = ()
    params: Path | None = None
    finite_epochs: int | None = None
    note: str = ""
    rank: int | None = None

    @property
    def usable(self) -> bool:
        return not self.reason

    def to_row(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "stem": self.stem,
            "value": self.value,
            "usable": self.usable,
            "reason": self.reason,
            "note": self.note,
            "keras_file": str(self.keras_file) if self.keras_file else "",
            "pth_candidates": ";".join(str(p) for p in self.pth_candidates),
            "params": str(self.params) if self.params else "",
            "finite_epochs": self.finite_epochs,
            "stem_path": str(self.stem_path),
        }

    @classmethod
    def from_row(cls, row: Any) -> Candidate:
        """From a row of the table, in memory or read back from its CSV (where empty cells are NaN)."""

        def text(value: Any) -> str:
            return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

        def path(value: Any) -> Path | None:
            return Path(text(value)) if text(value) else None

        def whole(value: Any) -> int | None:
            return None if pd.isna(value) else int(value)

        return cls(
            stem=text(row["stem"]),
            value=float(row["value"]),
            reason=text(row["reason"]),
            stem_path=Path(text(row["stem_path"])),
            keras_file=path(row["keras_file"]),
            pth_candidates=tuple(Path(p) for p in text(row["pth_candidates"]).split(";") if p),
            params=path(row["params"]),
            finite_epochs=whole(row["finite_epochs"]),
            note=text(row["note"]),
            rank=whole(row["rank"]),
        )


def _candidate(
    stem_path: Path, value: float, reason: str | None, params: Path | None, finite_epochs: int | None, note: str = ""
) -> Candidate:
    keras_files = keras_files_for(stem_path)
    pth = pytorch_candidates(stem_path)
    if reason is None and len(keras_files) > 1:
        reason = (
            f"several Keras files for one model ({', '.join(p.name for p in keras_files)}): keep one, "
            "so that it is clear which one was trained with this pickle"
        )
    if reason is None and not keras_files and not pth:
        reason = "no model file beside it (.h5, .keras, .weights.h5, .pth or .pt)"
    return Candidate(
        stem=stem_path.name,
        value=value,
        reason=reason or "",
        stem_path=stem_path,
        keras_file=keras_files[0] if keras_files else None,
        pth_candidates=tuple(pth),
        params=params,
        finite_epochs=finite_epochs,
        note=note,
    )


def _candidate_from_pickle(pickle_path: Path, config: SelectionConfig, trust: bool) -> Candidate:
    stem_path = pickle_path.with_name(pickle_path.name.removesuffix(PARAMS_SUFFIX))
    try:
        params = load_pickle(pickle_path, trust=trust)
    except PickleFileError as exc:
        return _candidate(stem_path, math.nan, f"unreadable pickle: {exc}", pickle_path, None)
    history = params.get("training_history_dict") if isinstance(params, dict) else None
    if not isinstance(history, dict):
        return _candidate(stem_path, math.nan, "no training_history_dict in the pickle", pickle_path, None)
    if config.metric not in history:
        return _candidate(stem_path, math.nan, f"no '{config.metric}' in training_history_dict", pickle_path, None)
    reduced = reduce_history(history[config.metric], config.metric, config.reduction, config.last_k)
    return _candidate(stem_path, reduced.value, reduced.reason, pickle_path, reduced.finite_epochs, reduced.note)


def table_from_models_dir(models_dir: Path, config: SelectionConfig, trust_pickles: bool = False) -> pd.DataFrame:
    if not models_dir.is_dir():
        problem = (
            "models_dir names something that is not a folder"
            if os.path.lexists(models_dir)
            else "the models folder does not exist"
        )
        raise SelectionError(f"{models_dir}: {problem}.")
    pickles = find_params_pickles(models_dir)
    for other in sorted(set(models_dir.glob("*" + PARAMS_SUFFIX)) - set(pickles)):
        if not other.name.startswith(".") and not other.stem.endswith(CONVERTED_INFO_SUFFIX):
            log.warning("skipping %s: not a regular file (a FIFO, socket, device or folder is never opened)", other)
    if not pickles:
        raise SelectionError(f"{models_dir}: no model parameter pickles (*.pickle) in the models folder.")
    return rank([_candidate_from_pickle(p, config, trust_pickles) for p in pickles], config)


def _candidate_from_csv_row(csv_path: Path, path_text: Any, raw: Any) -> Candidate:
    """One row of a results table; a path the system cannot use (too long, a link loop, no permission) makes
    the row unusable rather than the table unreadable."""
    model_path = Path(str(path_text))
    if not model_path.is_absolute():
        model_path = real_path(csv_path.parent / model_path)
    value = pd.to_numeric(raw, errors="coerce")
    value = float(value) if pd.notna(value) else math.nan
    stem_path = model_path.with_name(model_stem(model_path))
    reason = None if math.isfinite(value) else "metric missing or not a number"
    try:
        params = stem_path.with_name(stem_path.name + PARAMS_SUFFIX)
        return _candidate(stem_path, value, reason, params if params.is_file() else None, None)
    except OSError as exc:
        name = stem_path.name if len(stem_path.name) <= 120 else stem_path.name[:120] + "…"
        return Candidate(
            stem=name,
            value=value,
            reason=f"the model path cannot be used ({exc.strerror or exc})",
            stem_path=stem_path,
            keras_file=None,
            pth_candidates=(),
            params=None,
            finite_epochs=None,
        )


def table_from_csv(csv_path: Path, config: SelectionConfig) -> pd.DataFrame:
    regular_file_size(csv_path, SelectionError, "results table")
    try:
        frame = pd.read_csv(csv_path)
    except (OSError, ValueError) as exc:
        raise SelectionError(f"{csv_path}: cannot read the results table ({exc}).") from None
    missing = [c for c in (config.csv_model_column, config.csv_metric_column) if c not in frame.columns]
    if missing:
        raise SelectionError(f"{csv_path}: the results table lacks column(s) {missing}; it has {list(frame.columns)}.")
    rows = [
        _candidate_from_csv_row(csv_path, path_text, raw)
        for path_text, raw in zip(frame[config.csv_model_column], frame[config.csv_metric_column])
    ]
    if not rows:
        raise SelectionError(f"{csv_path}: the results table has no rows.")
    return rank(rows, config)


def rank(candidates: list[Candidate], config: SelectionConfig) -> pd.DataFrame:
    """The results table: usable rows first, best value first, ties by stem; ranks 1, 2, ... on usable rows."""
    direction = 1.0 if config.goal == "minimize" else -1.0
    ordered = sorted(
        candidates,
        key=lambda c: (
            not c.usable,
            math.isnan(c.value),
            direction * c.value if not math.isnan(c.value) else 0.0,
            c.stem,
        ),
    )
    ranked = [replace(c, rank=i + 1 if c.usable else None) for i, c in enumerate(ordered)]
    frame = pd.DataFrame([c.to_row() for c in ranked], columns=COLUMNS)
    for column in ("rank", "finite_epochs"):  # whole numbers beside gaps
        frame[column] = pd.array(frame[column], dtype="Int64")
    return frame


def usable_candidates(frame: pd.DataFrame) -> list[Candidate]:
    """The usable rows of the results table, in rank order."""
    return [Candidate.from_row(row) for row in frame[frame["usable"]].to_dict("records")]


def mark_unusable(frame: pd.DataFrame, stem: str, reason: str) -> None:
    """A ranked row found unusable only when its files were opened (its conversion refused, say)."""
    frame.loc[frame["stem"] == stem, ["usable", "reason"]] = [False, reason]


def best_candidate(frame: pd.DataFrame, source: str) -> Candidate:
    usable = usable_candidates(frame)
    if not usable:
        reasons = listed((f"{r.stem}: {r.reason}" for r in frame.itertuples()), most=10, separator="; ")
        raise SelectionError(f"{source}: no usable model among {len(frame)} candidate(s) ({reasons}).")
    return usable[0]


def ranking_text(frame: pd.DataFrame, top: int) -> str:
    """The top rows, stems in full (their tails, LogLoss_... and ID_..., tell the published models apart), then
    why each unusable row is unusable and what was left out of the others."""
    rows = [("rank", "value", "finite epochs", "model", "unusable because / note")]
    for row in frame.head(top).itertuples():
        rows.append(
            (
                "-" if pd.isna(row.rank) else str(int(row.rank)),
                "-" if pd.isna(row.value) else f"{row.value:.6g}",
                "-" if pd.isna(row.finite_epochs) else str(int(row.finite_epochs)),
                row.stem,
                row.reason or row.note or "",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    text = "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(r[:4], widths)), r[4]]).rstrip() for r in rows)
    hidden = len(frame) - (len(rows) - 1)
    return text + (f"\n... and {hidden} more row(s) in the saved table" if hidden > 0 else "")

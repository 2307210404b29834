"""The results table: one row per candidate model with its files, its selection value, and why it is unusable.

Rows come from the `.pickle` files in a models folder (metric from `training_history_dict`) or from a CSV
table. Rows without a usable value or model file stay in the table with a reason and are never selected.
Ranking: by value (ascending when minimizing, descending when maximizing), ties broken by the model stem in
alphabetical order, so the same table always gives the same choice.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from errors import PickleFileError, SelectionError
from fileio import load_pickle
from pipeline.config import SelectionConfig

CONVERTER_INFO_SUFFIX = "_converted_info"
PYTORCH_SUFFIXES = (".pth", ".pt")
COLUMNS = ["rank", "stem", "value", "usable", "reason", "h5", "pth_candidates", "params", "epochs", "stem_path"]


def reduce_history(values: Any, reduction: str, last_k: int) -> tuple[float, int]:
    """(selected value, number of finite epochs) of a per-epoch metric; NaN when there is none."""
    array = np.asarray(values, dtype=float).ravel()
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return math.nan, 0
    if reduction == "min":
        return float(finite.min()), finite.size
    if reduction == "max":
        return float(finite.max()), finite.size
    if reduction == "last":
        return (float(array[-1]) if np.isfinite(array[-1]) else math.nan), finite.size
    return float(finite[-last_k:].mean()), finite.size


def pytorch_candidates(stem_path: Path) -> list[Path]:
    """The PyTorch files that may belong to a model, in the order they are tried."""
    return [p for p in (stem_path.with_suffix(".pth"), stem_path.with_suffix(".pt"),
                        stem_path.with_name(stem_path.name + "_converted.pth")) if p.is_file()]


def _row(stem_path: Path, value: float, reason: str | None, params: Path | None, epochs: int | None) -> dict:
    h5 = stem_path.with_suffix(".h5")
    pth = pytorch_candidates(stem_path)
    if reason is None and not h5.is_file() and not pth:
        reason = "no model file (.h5 or .pth) beside it"
    return {"stem": stem_path.name, "value": value, "usable": reason is None, "reason": reason or "",
            "h5": str(h5) if h5.is_file() else "", "pth_candidates": ";".join(str(p) for p in pth),
            "params": str(params) if params else "", "epochs": epochs, "stem_path": str(stem_path)}


def _row_from_pickle(pickle_path: Path, config: SelectionConfig, trust: bool) -> dict:
    stem_path = pickle_path.with_suffix("")
    try:
        params = load_pickle(pickle_path, trust=trust)
    except PickleFileError as exc:
        return _row(stem_path, math.nan, f"unreadable pickle: {exc}", pickle_path, None)
    history = params.get("training_history_dict") if isinstance(params, dict) else None
    if not isinstance(history, dict):
        return _row(stem_path, math.nan, "no training_history_dict in the pickle", pickle_path, None)
    if config.metric not in history:
        return _row(stem_path, math.nan, f"no '{config.metric}' in training_history_dict", pickle_path, None)
    try:
        value, epochs = reduce_history(history[config.metric], config.reduction, config.last_k)
    except (TypeError, ValueError):
        return _row(stem_path, math.nan, f"'{config.metric}' is not a list of numbers", pickle_path, None)
    reason = None if math.isfinite(value) else f"'{config.metric}' has no finite value ({config.reduction})"
    return _row(stem_path, value, reason, pickle_path, epochs)


def table_from_models_dir(models_dir: Path, config: SelectionConfig, trust_pickles: bool = False) -> pd.DataFrame:
    if not models_dir.is_dir():
        raise SelectionError(f"{models_dir}: the models folder does not exist.")
    # Hidden files are other programs' temporaries (e.g. what a killed writer leaves), never candidates.
    pickles = sorted(p for p in models_dir.glob("*.pickle")
                     if not p.stem.endswith(CONVERTER_INFO_SUFFIX) and not p.name.startswith("."))
    if not pickles:
        raise SelectionError(f"{models_dir}: no model parameter pickles (*.pickle) in the models folder.")
    return rank([_row_from_pickle(p, config, trust_pickles) for p in pickles], config)


def table_from_csv(csv_path: Path, config: SelectionConfig) -> pd.DataFrame:
    try:
        frame = pd.read_csv(csv_path)
    except (OSError, ValueError) as exc:
        raise SelectionError(f"{csv_path}: cannot read the results table ({exc}).") from None
    missing = [c for c in (config.csv_model_column, config.csv_metric_column) if c not in frame.columns]
    if missing:
        raise SelectionError(f"{csv_path}: the results table lacks column(s) {missing}; it has {list(frame.columns)}.")
    rows = []
    for path_text, raw in zip(frame[config.csv_model_column], frame[config.csv_metric_column]):
        model_path = Path(str(path_text))
        if not model_path.is_absolute():
            model_path = (csv_path.parent / model_path).resolve()
        value = pd.to_numeric(raw, errors="coerce")
        value = float(value) if pd.notna(value) else math.nan
        stem_path = model_path.with_suffix("")
        params = stem_path.with_suffix(".pickle")
        reason = None if math.isfinite(value) else "metric missing or not a number"
        rows.append(_row(stem_path, value, reason, params if params.is_file() else None, None))
    if not rows:
        raise SelectionError(f"{csv_path}: the results table has no rows.")
    return rank(rows, config)


def rank(rows: list[dict], config: SelectionConfig) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["_key"] = frame["value"] if config.goal == "minimize" else -frame["value"]
    frame = frame.sort_values(["usable", "_key", "stem"], ascending=[False, True, True], na_position="last")
    frame = frame.drop(columns="_key").reset_index(drop=True)
    frame.insert(0, "rank", [i + 1 if usable else None for i, usable in enumerate(frame["usable"])])
    return frame[COLUMNS]


def best_row(frame: pd.DataFrame, source: str) -> pd.Series:
    usable = frame[frame["usable"]]
    if usable.empty:
        reasons = "; ".join(f"{r.stem}: {r.reason}" for r in frame.itertuples())
        raise SelectionError(f"{source}: no usable model among {len(frame)} candidate(s) ({reasons}).")
    return usable.iloc[0]


def format_table(frame: pd.DataFrame, top: int) -> str:
    shown = frame.head(top)[["rank", "stem", "value", "epochs", "reason"]].copy()
    shown["rank"] = shown["rank"].map(lambda r: "-" if pd.isna(r) else str(int(r)))
    shown["stem"] = shown["stem"].map(lambda s: s if len(s) <= 70 else s[:67] + "...")
    text = shown.to_string(index=False, na_rep="-")
    hidden = len(frame) - len(shown)
    return text + (f"\n... and {hidden} more row(s) in the saved table" if hidden > 0 else "")

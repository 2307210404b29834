"""Which section(x) each input channel drives, read from a CSV or .npy and checked against the model's channels.

CSV: a header `kind,section,x` and one row per input channel in channel order; kind is `excitatory` or
`inhibitory` (or e / i), section a section's name as NEURON prints it (with or without the cell's prefix, e.g.
`dend[3]`) or its index in the order of ground_truth.neuron.section_lists, x in [0, 1]. NPY: a numeric array
(channels, 3) of kind (0 excitatory, 1 inhibitory), section index, x. Excitatory channels come first, as in the
model's input.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np

from errors import ConfigError
from fileio import regular_file_size

MAX_MAP_BYTES = 64 << 20
MAX_CHANNELS = 1_000_000
KINDS = {"excitatory": 0, "e": 0, "exc": 0, "0": 0, "inhibitory": 1, "i": 1, "inh": 1, "1": 1}

Entry = tuple[int, "int | str", float]  # kind, section (index or name), x


def _from_csv(path: Path, text: str) -> list[Entry]:
    rows = list(csv.reader(io.StringIO(text)))
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if header != ["kind", "section", "x"]:
        raise ConfigError(
            f"{path}: the first line must be the header kind,section,x; found {rows[0][:5] if rows else 'nothing'}."
        )
    entries: list[Entry] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 3:
            raise ConfigError(f"{path}, line {line}: {len(row)} fields; expected kind,section,x.")
        kind, section, x = (cell.strip() for cell in row)
        if kind.lower() not in KINDS:
            raise ConfigError(f"{path}, line {line}: kind {kind[:40]!r} is neither excitatory nor inhibitory.")
        try:
            position = float(x)
        except ValueError:
            raise ConfigError(f"{path}, line {line}: x {x[:40]!r} is not a number.") from None
        index = re.fullmatch(r"[0-9]{1,9}", section)
        entries.append((KINDS[kind.lower()], int(section) if index else section[:200], position))
        if len(entries) > MAX_CHANNELS:
            raise ConfigError(f"{path}: more than {MAX_CHANNELS} channels.")
    return entries


def _from_npy(path: Path) -> list[Entry]:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: not a numeric .npy array ({' '.join(str(exc).split())[:200]}).") from None
    if array.ndim != 2 or array.shape[1] != 3 or array.dtype.kind not in "iuf":
        raise ConfigError(
            f"{path}: expected a real-valued array of shape (channels, 3), got {array.dtype} {array.shape}."
        )
    if array.shape[0] > MAX_CHANNELS:
        raise ConfigError(f"{path}: more than {MAX_CHANNELS} channels.")
    values = np.asarray(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ConfigError(f"{path}: holds NaN or Inf.")
    kinds, sections = values[:, 0], values[:, 1]
    if (
        not np.isin(kinds, (0, 1)).all()
        or (sections != np.round(sections)).any()
        or (sections < 0).any()
        or (sections >= MAX_CHANNELS).any()
    ):
        raise ConfigError(
            f"{path}: column 0 must be 0 (excitatory) or 1 (inhibitory), column 1 a section index "
            f"in [0, {MAX_CHANNELS})."
        )
    return [(int(k), int(s), float(x)) for k, s, x in values]


def read_synapse_map(path: Path, channels: int, excitatory: int) -> list[Entry]:
    """The map's entries, checked: one per model input channel, the `excitatory` excitatory ones first, x in
    [0, 1]; a ConfigError naming the file and the first problem otherwise."""
    size = regular_file_size(path, ConfigError, "synapse map")
    if size > MAX_MAP_BYTES:
        raise ConfigError(f"{path}: {size} bytes, more than a synapse map of {MAX_CHANNELS} channels needs.")
    if path.suffix.lower() == ".npy":
        entries = _from_npy(path)
    elif path.suffix.lower() == ".csv":
        try:
            entries = _from_csv(path, path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text CSV.") from None
    else:
        raise ConfigError(f"{path}: a synapse map is a .csv or a .npy file.")
    if len(entries) != channels:
        raise ConfigError(
            f"{path}: {len(entries)} synapses, but the model takes {channels} input channels; one row per channel."
        )
    kinds = [kind for kind, _, _ in entries]
    if kinds != [0] * excitatory + [1] * (channels - excitatory):
        raise ConfigError(
            f"{path}: the model's input is {excitatory} excitatory channels, then "
            f"{channels - excitatory} inhibitory; the map has {kinds.count(0)} excitatory and "
            f"{kinds.count(1)} inhibitory{'' if kinds.count(0) != excitatory else ', not in that order'}."
        )
    bad = next((i for i, (_, _, x) in enumerate(entries) if not (math.isfinite(x) and 0 <= x <= 1)), None)
    if bad is not None:
        raise ConfigError(f"{path}: channel {bad}'s x = {entries[bad][2]} is not in [0, 1].")
    return entries

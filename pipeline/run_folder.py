"""Run folders and logging: console from the start, the run log from the first record once the folder exists."""
from __future__ import annotations

import datetime as dt
import logging
import re
import sys
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class _Buffer(logging.Handler):
    """Keeps records until the run folder exists, then hands them to the run log."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup_logging(quiet: bool, verbose: bool) -> _Buffer:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    buffer = _Buffer()
    buffer.setLevel(logging.DEBUG)
    root.addHandler(console)
    root.addHandler(buffer)
    for noisy in ("matplotlib", "PIL", "h5py", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return buffer


def attach_run_log(buffer: _Buffer, log_path: Path) -> None:
    handler = logging.FileHandler(log_path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for record in buffer.records:
        handler.handle(record)
    root = logging.getLogger()
    root.removeHandler(buffer)
    root.addHandler(handler)


def short_model_name(stem: str) -> str:
    """`NMDA_TCN__DxWxT_7x128x153__2020-...__ID_42` → `NMDA_TCN_7x128x153_ID42`; other names cut to 40 chars."""
    parts = stem.split("__")
    size = next((p.split("_")[-1] for p in parts if p.startswith("DxWxT_")), None)
    ident = next((p.replace("_", "") for p in parts if p.startswith("ID_")), None)
    name = "_".join(x for x in (parts[0], size, ident) if x) if size else stem
    return re.sub(r"[^\w.-]", "_", name)[:40]


def create_run_folder(output_dir: Path, model_stem: str) -> Path:
    """`output_dir/<timestamp>_<model>/`, never an existing folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    base = f"{dt.datetime.now():%Y%m%d-%H%M%S}_{short_model_name(model_stem)}"
    for attempt in range(1, 1000):
        folder = output_dir / (base if attempt == 1 else f"{base}_{attempt}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{output_dir}: cannot create a new run folder named {base}_*")

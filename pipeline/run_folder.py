"""Run folders and logging: console from the start, the run log from the first record once the folder exists."""
from __future__ import annotations

import copy
import datetime as dt
import logging
import re
import sys
from pathlib import Path

import yaml

from errors import OutputError

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
    """`output_dir/<timestamp>_<model>/`, never an existing folder; OutputError when it cannot be created."""
    return new_folder(output_dir, f"{dt.datetime.now():%Y%m%d-%H%M%S}_{short_model_name(model_stem)}")


def new_folder(parent: Path, base: str) -> Path:
    """`parent/base`, else `base_2`, `base_3`, ...: a folder this process created, which no other run uses;
    OutputError naming the parent when none can be created."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 1000):
            folder = parent / (base if attempt == 1 else f"{base}_{attempt}")
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue  # another run's, even if still empty: jobs started in the same second must not share
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create a run folder there ({exc.strerror or exc}); "
                          "it must be a writable folder.") from None
    raise OutputError(f"{parent}: cannot create a new run folder named {base}_*: 999 exist already.")


def find_interrupted_run(output_dir: Path, model_stem: str, config: dict) -> Path | None:
    """The newest run folder of this model that a killed job left: a checkpoint, no summary, the same config.

    A scheduled job that was killed is then continued by its next start instead of starting over. The configs
    may differ only in how far to go (`optimization.loop.max_iterations`, counted across resumes).
    """
    if not output_dir.is_dir():
        return None
    wanted = _resumable_part(config)
    for folder in sorted(output_dir.glob(f"*_{short_model_name(model_stem)}*"), key=lambda f: f.name, reverse=True):
        if ((folder / "checkpoint.pt").is_file() and not (folder / "summary.json").exists()
                and _resumable_part(_read_yaml(folder / "config.yaml")) == wanted):
            return folder
    return None


def _resumable_part(config: dict | None) -> dict | None:
    if not isinstance(config, dict):
        return None
    config = copy.deepcopy(config)
    loop = config.get("optimization", {}).get("loop", {})
    loop.pop("max_iterations", None)
    loop.pop("resume_from", None)
    return config


def _read_yaml(path: Path) -> dict | None:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None

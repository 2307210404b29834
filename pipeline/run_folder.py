"""Run folders and logging: every file name of a run folder (RunFiles), claiming a folder, finding an interrupted
run, and the logs (console from the start, the run log from the first record once the folder exists)."""

from __future__ import annotations

import copy
import datetime as dt
import fcntl
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from errors import ConfigError, OutputError
from fileio import open_lock_file, regular_file_size
from optimization.report import FILE_NAMES
from pipeline.config import AppConfig, parse_yaml

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


@dataclass(frozen=True)
class RunFiles:
    """The files of one run folder, by what they hold (the optimization writes its own: optimization.report)."""

    folder: Path

    def __getattr__(self, name: str) -> Path:
        if name in RUN_FILE_NAMES:
            return self.folder / RUN_FILE_NAMES[name]
        raise AttributeError(name)


# Everything a run folder holds; the optimization's rates, history, evaluation, checkpoint and plots among them.
RUN_FILE_NAMES = {
    "config": "config.yaml",
    "table": "results_table.csv",
    "log": "run.log",
    "summary": "summary.json",
    "report_md": "report.md",
    "report_html": "report.html",
    "failed": "failed.txt",
    "lock": ".running.lock",
    "simulations": "simulations",  # the ground truth's and the refinement's simulated trials (ground_truth.runner)
    **FILE_NAMES,
}


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
    handler = run_log_handler(log_path)
    for record in buffer.records:
        handler.handle(record)
    root = logging.getLogger()
    root.removeHandler(buffer)
    root.addHandler(handler)


class RunLogHandler(logging.FileHandler):
    """A run log that cannot be written (full disk, file-size limit) says so once on stderr, then stays quiet,
    instead of a traceback for every record."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            error = sys.exc_info()[1]
            sys.stderr.write(
                f"warning: cannot write the log {self.baseFilename} ({error}); it misses the records from here on.\n"
            )


def run_log_handler(path: Path) -> logging.Handler:
    """The handler of a run log (or a sweep log): every record, DEBUG and up, with its time and level."""
    try:
        handler = RunLogHandler(path)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot create the log ({exc.strerror or exc}); the folder must be writable."
        ) from None
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def short_model_name(stem: str) -> str:
    """`NMDA_TCN__DxWxT_7x128x153__2020-...__ID_42` → `NMDA_TCN_7x128x153_ID42`; other names cut to 40 chars."""
    parts = stem.split("__")
    size = next((p.split("_")[-1] for p in parts if p.startswith("DxWxT_")), None)
    ident = next((p.replace("_", "") for p in parts if p.startswith("ID_")), None)
    name = "_".join(x for x in (parts[0], size, ident) if x) if size else stem
    return re.sub(r"[^\w.-]", "_", name)[:40]


def check_output_dir(output_dir: Path) -> None:
    """output_dir is a writable folder, or could be created as one: checked (without creating anything) before
    any model is converted, so that a typo there fails at once rather than after minutes of work."""
    existing = output_dir
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "names" if existing == output_dir else f"would be inside {existing}, which is"
        raise OutputError(f"{output_dir}: output_dir {what} a file, not a folder; choose a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"{output_dir}: output_dir cannot be created or written ({existing} is not writable by "
            "this user); choose another output_dir."
        )


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
        raise OutputError(
            f"{parent}: cannot create a run folder there ({exc.strerror or exc}); it must be a writable folder."
        ) from None
    raise OutputError(f"{parent}: cannot create a new run folder named {base}_*: 999 exist already.")


# `lock` is held by the process working in a run folder (the kernel drops it when that dies); `failed` marks a
# run that stopped on an error, which is never continued automatically.


def claim_run_folder(folder: Path) -> IO | None:
    """Lock `folder` for this process (returned handle; keep it open for the run), or None when another
    live process holds it."""
    try:
        handle = open_lock_file(RunFiles(folder).lock)
    except OSError:  # not a folder we can lock (something else named like the lock, no write access): not ours
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def find_interrupted_run(output_dir: Path, model_stem: str, config: dict) -> tuple[Path, IO] | None:
    """The newest run folder of this model that a killed job left, claimed: a checkpoint, no summary, no
    failure mark, the same config, and no live process working in it.

    A scheduled job that was killed is then continued by its next start instead of starting over. The configs
    may differ only in how far to go (`optimization.loop.max_iterations`, counted across resumes).
    """
    if not output_dir.is_dir():
        return None
    wanted = _resumable_part(config)
    for folder in sorted(output_dir.glob(f"*_{short_model_name(model_stem)}*"), key=lambda f: f.name, reverse=True):
        files = RunFiles(folder)
        if (
            files.checkpoint.is_file()
            and not files.summary.exists()
            and not files.failed.exists()
            and _resumable_part(_read_yaml(files.config)) == wanted
        ):
            handle = claim_run_folder(folder)
            if handle is None:
                continue
            if files.summary.exists() or files.failed.exists():
                handle.close()  # the job that held it finished while we looked
                continue
            return folder, handle
    return None


@contextmanager
def working_in(folder: Path, claim: IO) -> Iterator[None]:
    """Keep `folder` claimed while this process works in it; remove the lock file when done (a killed job
    leaves it behind, unheld, which is harmless)."""
    try:
        yield
    finally:
        RunFiles(folder).lock.unlink(missing_ok=True)
        claim.close()


def _resumable_part(config: dict | None) -> dict | None:
    if not isinstance(config, dict):
        return None
    config = copy.deepcopy(config)
    loop = config.get("optimization", {}).get("loop", {})
    loop.pop("max_iterations", None)
    loop.pop("resume_from", None)
    return config


def _read_yaml(path: Path) -> dict | None:
    """A run folder's config.yaml, or None when it is missing or unreadable (that folder is then not resumed)."""
    try:
        regular_file_size(path, ConfigError)
        return parse_yaml(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError, ConfigError):
        return None


@contextmanager
def claimed_run_folder(config: AppConfig, model_stem: str, log_buffer: _Buffer) -> Iterator[tuple[RunFiles, AppConfig]]:
    """The folder a run of `model_stem` works in, claimed for this process and with the run log attached: the
    newest interrupted run of the same job (with `resume_interrupted`; the config yielded then resumes from its
    checkpoint), else a new `output_dir/<timestamp>_<model>/`."""
    interrupted = (
        find_interrupted_run(config.output_dir, model_stem, config.model_dump(mode="json"))
        if config.resume_interrupted and config.optimization.loop.resume_from is None
        else None
    )
    if interrupted is not None:
        folder, claim = interrupted
        config = config.model_copy(deep=True)
        config.optimization.loop.resume_from = RunFiles(folder).checkpoint
        attach_run_log(log_buffer, RunFiles(folder).log)
        logging.getLogger(__name__).info("continuing the interrupted run %s from its checkpoint", folder)
    else:
        folder = create_run_folder(config.output_dir, model_stem)
        claim = claim_run_folder(folder)
        attach_run_log(log_buffer, RunFiles(folder).log)
    with working_in(folder, claim):  # no other job continues this folder meanwhile (released even on SIGKILL)
        yield RunFiles(folder), config

"""The simulator interface of the ground-truth check: binary spike trains in, somatic spike times out.

A simulator receives trials x segments x time (bool, 1 ms bins, excitatory segments first, in the model's input
channel order; a spike in bin k arrives at k ms) and returns, per trial, the somatic spike times in ms from the start
of the trials; where it records one, also the somatic voltage at the end of each ms (the refinement's somatic term
learns from it). A simulator is described by a small picklable object (`Simulator`), opened in the process that
runs it: the main process for the demo neuron, worker processes for NEURON and for user functions (run_trials).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from errors import SimulatorError, ToolError
from limits import MAX_SIMULATED_MS

log = logging.getLogger(__name__)

MAX_SPIKES_PER_MS = 1.0  # a soma spikes at most once per ms: more returned spike times are not a neuron's output

SimulateFunction = Callable[[np.ndarray], "SimulatedTrials"]


@dataclass(frozen=True)
class SimulatedTrials:
    """A simulator's answer for N trials of T ms."""

    spike_times: tuple[np.ndarray, ...]  # per trial: float64 ms from the start of the trial, sorted
    soma_v: np.ndarray | None = None  # (N, T) float32 mV at the end of each ms, when the simulator records it

    def spike_bins(self, duration_ms: int) -> np.ndarray:
        """(N, T) uint8: 1 where the soma spiked during that millisecond (spikes outside [0, T) are dropped)."""
        bins = np.zeros((len(self.spike_times), duration_ms), dtype=np.uint8)
        for trial, times in enumerate(self.spike_times):
            kept = np.floor(times[(times >= 0) & (times < duration_ms)]).astype(np.int64)
            bins[trial, kept] = 1
        return bins

    def fired_between(self, start_ms: float, end_ms: float) -> np.ndarray:
        """(N,) bool: at least one spike in [start, end)."""
        return np.array([bool(((times >= start_ms) & (times < end_ms)).any()) for times in self.spike_times])

    @staticmethod
    def concatenate(parts: Sequence[SimulatedTrials], who: str) -> SimulatedTrials:
        times = tuple(t for part in parts for t in part.spike_times)
        voltages = [part.soma_v for part in parts]
        if any(v is None for v in voltages) and any(v is not None for v in voltages):
            raise SimulatorError(f"{who} returned soma_v for some calls and not for others.")
        soma_v = np.concatenate(voltages) if parts and voltages[0] is not None else None
        return SimulatedTrials(times, soma_v)


MAX_SOMA_MV = 1e4  # beyond any membrane potential: a unit or sign error


def _spike_times(value: Any, trial: int, duration_ms: int, who: str) -> np.ndarray:
    try:
        array = (
            np.asarray(value)
            if isinstance(value, (np.ndarray, Sequence)) and not isinstance(value, (str, bytes))
            else None
        )
    except (TypeError, ValueError):  # ragged, or items numpy cannot hold
        array = None
    if array is None or array.dtype.kind not in "iuf" and not (array.size == 0 and array.dtype.kind in "OU"):
        raise SimulatorError(
            f"{who}: trial {trial}'s spike times are not an array of numbers "
            f"({type(value).__name__}{'' if array is None else ' of ' + str(array.dtype)})."
        )
    array = array.astype(np.float64).reshape(-1)
    if array.size > int(MAX_SPIKES_PER_MS * duration_ms) + 1:
        raise SimulatorError(
            f"{who}: trial {trial} has {array.size} spike times in {duration_ms} ms; a soma spikes at most once per ms."
        )
    if not np.isfinite(array).all():
        raise SimulatorError(f"{who}: trial {trial}'s spike times include NaN or Inf.")
    if array.size and (array.min() < 0 or array.max() >= duration_ms):
        raise SimulatorError(
            f"{who}: trial {trial} has a spike at {array.min() if array.min() < 0 else array.max():g}"
            f" ms; spike times are ms from the start of the trial, in [0, {duration_ms})."
        )
    return np.sort(array)


def checked_output(returned: Any, trials: int, duration_ms: int, who: str) -> SimulatedTrials:
    """What a simulator returned, as SimulatedTrials, or a SimulatorError saying what is wrong with it.

    Accepted: a sequence of `trials` 1-D arrays of spike times (ms in [0, duration)), or a mapping with key
    'spike_times' (that sequence) and optionally 'soma_v' ((trials, time) mV)."""
    soma_v = None
    if isinstance(returned, SimulatedTrials):
        returned, soma_v = returned.spike_times, returned.soma_v
    elif isinstance(returned, Mapping):
        keys = list(itertools.islice(returned, 10))
        if any(key not in ("spike_times", "soma_v") for key in keys) or "spike_times" not in keys:
            raise SimulatorError(
                f"{who} returned a mapping with keys {sorted(str(k)[:40] for k in keys)[:5]}; "
                "expected 'spike_times' and optionally 'soma_v'."
            )
        returned, soma_v = returned["spike_times"], returned.get("soma_v")
    if isinstance(returned, (str, bytes)) or not isinstance(returned, (Sequence, np.ndarray)):
        raise SimulatorError(
            f"{who} returned {type(returned).__name__}; expected one array of somatic spike times "
            f"(ms) per trial ({trials} trials)."
        )
    items = list(itertools.islice(iter(returned), trials + 1))  # what it holds, whatever its len() says
    if len(items) != trials:
        raise SimulatorError(
            f"{who} returned {'more than ' + str(trials) if len(items) > trials else len(items)} "
            f"spike-time arrays for {trials} trials."
        )
    times = tuple(_spike_times(value, trial, duration_ms, who) for trial, value in enumerate(items))
    if soma_v is not None:
        soma_v = np.asarray(soma_v)
        if soma_v.dtype.kind not in "iuf":
            raise SimulatorError(f"{who}: soma_v is not an array of numbers ({soma_v.dtype}).")
        if soma_v.shape != (trials, duration_ms):
            raise SimulatorError(
                f"{who}: soma_v has shape {soma_v.shape}; expected ({trials}, {duration_ms}) "
                "(mV at the end of each ms)."
            )
        if not np.isfinite(soma_v).all() or np.abs(soma_v).max(initial=0) > MAX_SOMA_MV:
            raise SimulatorError(f"{who}: soma_v includes NaN, Inf or values beyond {MAX_SOMA_MV:g} mV.")
        soma_v = soma_v.astype(np.float32)
    return SimulatedTrials(times, soma_v)


MAX_FOLDER_FILES = 20_000


def folder_fingerprint(folder: Path) -> str:
    """Name, size and modification time of every file under `folder` (a cell's or a simulator module's: the files
    it may load), so that editing any of them changes the simulator's fingerprint. Hidden folders, __pycache__ and
    run folders (a run.log beside a config.yaml) are left out; beyond MAX_FOLDER_FILES files, a fingerprint that
    matches nothing (nothing stored is reused)."""
    entries = []
    for root, folders, files in os.walk(folder):
        if {"run.log", "config.yaml"} <= set(files) and Path(root) != folder:
            folders[:] = []
            continue
        folders[:] = sorted(name for name in folders if not name.startswith(".") and name != "__pycache__")
        for name in sorted(files):
            with contextlib.suppress(OSError):
                status = os.stat(os.path.join(root, name))
                entries.append(
                    f"{os.path.relpath(os.path.join(root, name), folder)}|{status.st_size}|{status.st_mtime_ns}"
                )
        if len(entries) > MAX_FOLDER_FILES:
            log.warning(
                "%s holds more than %d files: simulations stored in the run folder will not be reused",
                folder,
                MAX_FOLDER_FILES,
            )
            return f"unbounded:{uuid.uuid4().hex}"
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


class Simulator(ABC):
    """A picklable description of a simulator; `open` builds the function that simulates, where it runs."""

    name: str  # for logs, reports and errors: what simulates
    chunk_trials: int = 16  # trials per call (the unit of progress, of parallel work and of the cache)
    in_process: bool = False  # may run in the main process (a vectorized, pure-numpy simulator)

    @abstractmethod
    def fingerprint(self) -> str:
        """Everything that determines the answers (settings, the files' hashes): the cache's key."""

    @abstractmethod
    def open(self) -> SimulateFunction:
        """The function that simulates: (N, segments, T) bool -> SimulatedTrials, checked."""

    def check_work(self, trials: int, duration_ms: int, subject: str, error: type[ToolError]) -> None:
        """Refuse (with `error`) simulating `trials` trials of `duration_ms` beyond the simulation budget."""
        MAX_SIMULATED_MS.check(trials * duration_ms, subject, error, " simulated ms")

"""Simulate many trials with one simulator: in chunks, in worker processes, each chunk's answer cached on disk.

NEURON is single-threaded and keeps global state (hoc templates cannot be defined twice, a crash takes the process
with it), so simulators that are not pure numpy run in worker processes started for the purpose (spawn: nothing of
this process's state is inherited); their answers come back in chunk order, so the figures do not depend on the
number of workers. With a cache folder (the run folder's), every chunk's answer is stored under a hash of the
simulator's fingerprint and the chunk's spikes: a resumed run, or a refinement round done again, simulates nothing
twice.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import hashlib
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from errors import SimulatorError
from fileio import write_atomically
from ground_truth.interface import SimulatedTrials, SimulateFunction, Simulator, checked_output

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8
DEFAULT_STALL_TIMEOUT_S = 1800.0
STOP_GRACE_S = 5.0

_OPENED: dict[str, SimulateFunction] = {}  # per process: the simulators opened there, by fingerprint


def auto_workers(simulator: Simulator, requested: int | None) -> int:
    """The worker count to use: as requested, else 1 for in-process simulators and one per core (at most 8)."""
    if requested is not None:
        return requested
    return 1 if simulator.in_process else max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


def _opened(simulator: Simulator) -> SimulateFunction:
    key = simulator.fingerprint()
    if key not in _OPENED:
        _OPENED[key] = simulator.open()
    return _OPENED[key]


_IN_WORKER = False  # set in worker processes: every exception there comes from the simulator


def _simulate(simulator: Simulator, spikes: np.ndarray) -> SimulatedTrials:
    """One chunk, (N, segments, T) bool, in the process that runs it; any failure becomes one SimulatorError
    (in a worker even SystemExit and KeyboardInterrupt: they can only come from the simulator's code)."""
    try:
        return checked_output(_opened(simulator)(spikes), len(spikes), spikes.shape[2], simulator.name)
    except SimulatorError:
        raise
    except BaseException as exc:  # a user's function or NEURON: its own error type may not even pickle
        if not _IN_WORKER and not isinstance(exc, Exception):
            raise
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        raise SimulatorError(
            f"{simulator.name} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}{where}"
        ) from None


def _simulate_packed(simulator: Simulator, packed: np.ndarray, shape: tuple[int, int, int]) -> SimulatedTrials:
    return _simulate(simulator, np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).astype(bool))


def _start_worker(parent: int) -> None:
    """Ctrl-C reaches the whole process group; the main process decides and stops the workers. A worker whose
    main process died (kill -9) ends too: at once on Linux (the kernel's parent-death signal), else at its next
    check."""
    global _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class TrialRunner:
    """Runs `simulator` on batches of trials; use as a context manager (the worker processes live inside it)."""

    def __init__(
        self,
        simulator: Simulator,
        workers: int | None = None,
        cache_dir: Path | None = None,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    ):
        self.simulator = simulator
        self.workers = auto_workers(simulator, workers)
        self.cache_dir = cache_dir
        self.stall_timeout_s = stall_timeout_s
        self._fingerprint = simulator.fingerprint()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> TrialRunner:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(abandon=exc_type is not None)

    def close(self, abandon: bool = False) -> None:
        """Stop the workers; `abandon`: at once (an error or an interruption), without finishing their chunk."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor offers no kill
        if abandon:
            for process in processes:
                process.terminate()
            deadline = time.monotonic() + STOP_GRACE_S
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
                if process.is_alive():  # ignores SIGTERM, or stuck in C code
                    process.kill()
                    process.join(STOP_GRACE_S)
        pool.shutdown(wait=not abandon, cancel_futures=True)

    @property
    def in_process(self) -> bool:
        return self.simulator.in_process and self.workers == 1

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
        return self._pool

    def __call__(self, spikes: np.ndarray, on_simulated: Callable[[int], None] | None = None) -> SimulatedTrials:
        """The simulator's answer for `spikes` (N, T, segments) bool, in trial order; `on_simulated(trials)` after
        each chunk."""
        spikes = np.asarray(spikes, dtype=bool)
        size = self.simulator.chunk_trials
        chunks = [
            np.ascontiguousarray(spikes[start : start + size].transpose(0, 2, 1))
            for start in range(0, len(spikes), size)
        ]
        answers: list[SimulatedTrials | None] = [None] * len(chunks)
        keys = [self._key(chunk) for chunk in chunks]
        for index, chunk in enumerate(chunks):
            answers[index] = self._cached(keys[index], chunk.shape)
            if answers[index] is not None and on_simulated is not None:
                on_simulated(len(chunk))
        todo = [index for index, answer in enumerate(answers) if answer is None]
        if len(todo) < len(chunks):
            cached = sum(len(chunk) for index, chunk in enumerate(chunks) if index not in set(todo))
            log.info(
                "%s: %d of %d trials answered from the simulations stored in %s",
                self.simulator.name,
                cached,
                len(spikes),
                self.cache_dir,
            )

        def finished(index: int, answer: SimulatedTrials) -> None:
            answers[index] = answer
            self._store(keys[index], answer)
            if on_simulated is not None:
                on_simulated(len(chunks[index]))

        if self.in_process:
            for index in todo:
                finished(index, _simulate(self.simulator, chunks[index]))
        elif todo:
            self._in_workers(todo, chunks, finished)
        return SimulatedTrials.concatenate([answer for answer in answers if answer is not None], self.simulator.name)

    def _in_workers(
        self, todo: list[int], chunks: list[np.ndarray], finished: Callable[[int, SimulatedTrials], None]
    ) -> None:
        pool = self._executor()
        futures = {
            pool.submit(_simulate_packed, self.simulator, np.packbits(chunks[index]), chunks[index].shape): index
            for index in todo
        }
        pending = set(futures)
        try:
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, timeout=self.stall_timeout_s, return_when=concurrent.futures.FIRST_COMPLETED
                )
                if not done:
                    raise SimulatorError(
                        f"{self.simulator.name}: no chunk of {self.simulator.chunk_trials} trials finished within "
                        f"{self.stall_timeout_s:g} s (ground_truth.stall_timeout_s): the simulator hangs, or one "
                        "chunk takes longer than that; the workers were stopped."
                    )
                for future in sorted(done, key=futures.get):
                    finished(futures[future], future.result())
        except BrokenProcessPool:
            self.close(abandon=True)
            raise SimulatorError(
                f"{self.simulator.name}: a simulator worker process died (crashed or was killed) "
                "while simulating; its output, if any, is above. NEURON ends the process on some "
                "errors in hoc code."
            ) from None
        except BaseException:
            self.close(abandon=True)
            raise

    def _key(self, chunk: np.ndarray) -> str:
        digest = hashlib.sha256(self._fingerprint.encode())
        digest.update(repr(chunk.shape).encode())
        digest.update(np.packbits(chunk).tobytes())
        return digest.hexdigest()[:40]

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.npz"

    def _cached(self, key: str, shape: tuple[int, ...]) -> SimulatedTrials | None:
        """A stored answer for this chunk, when there is one that fits it; anything else is simulated again."""
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            trials, duration = shape[0], shape[2]
            most = trials * duration * (4 + 8) + trials * 8 + 64 * 1024  # soma_v, spike times, counts, headers
            if path.stat().st_size > most:
                raise ValueError("larger than any answer for this chunk")
            with zipfile.ZipFile(path) as archive:  # what np.load would unpack, before it allocates
                if sum(member.file_size for member in archive.infolist()) > most:
                    raise ValueError("it declares more data than an answer for this chunk holds")
            with np.load(path, allow_pickle=False) as stored:
                times, counts = stored["spike_times"], stored["counts"].astype(np.int64)
                soma_v = stored["soma_v"] if "soma_v" in stored.files else None
            if counts.shape != (shape[0],) or (counts < 0).any() or counts.sum() != times.size:
                raise ValueError("its spike counts do not fit the chunk")
            split = tuple(np.split(times, np.cumsum(counts)[:-1]))
            return checked_output({"spike_times": split, "soma_v": soma_v}, shape[0], shape[2], str(path))
        except Exception as exc:  # damaged or foreign: never used
            log.warning(
                "ground truth: the cached simulation %s cannot be used (%s); simulating again",
                path,
                " ".join(str(exc).split())[:200],
            )
            return None

    def _store(self, key: str, answer: SimulatedTrials) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "spike_times": np.concatenate(answer.spike_times) if answer.spike_times else np.zeros(0),
            "counts": np.array([len(times) for times in answer.spike_times], dtype=np.int64),
        }
        if answer.soma_v is not None:
            arrays["soma_v"] = answer.soma_v
        write_atomically(path, lambda handle: np.savez(handle, **arrays))

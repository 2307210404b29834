"""Where the runs of a sweep execute. Every backend has one signature:

    backend(tasks, config, on_done)

runs each `RunTask` once and calls `on_done(task, result)` in this process as each finishes (in any order),
with the result dict of `run_task` (a run that crashes its worker comes back as a failed result).

- sequential: one after the other in this process.
- local: worker processes on this machine: one per visible GPU when the device is auto or cuda; one on the
  named GPU for cuda:N (more when sweep.max_workers asks); else up to one per core.
- ray: Ray tasks on an existing cluster (`sweep.ray.address`) or on a local Ray started for the sweep.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import multiprocessing
import os
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from errors import ConfigError, SweepError
from pipeline.config import AppConfig
from pipeline.sweep_worker import RunTask, failed_result, run_task, run_task_in_worker

log = logging.getLogger("sweep")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "neuron-tcn"  # the name in pyproject.toml
OnDone = Callable[[RunTask, dict[str, Any]], None]


def run_sequential(tasks: list[RunTask], config: AppConfig, on_done: OnDone) -> None:
    for task in tasks:
        on_done(task, run_task(task))


def gpu_names(count: int, inherited: str | None) -> list[str]:
    """CUDA_VISIBLE_DEVICES values for the first `count` GPUs this process sees: their entries in the inherited
    CUDA_VISIBLE_DEVICES (a cluster's allocation, such as "2,3", is numbered from 0 inside it), else 0, 1, ..."""
    if inherited is None:
        return [str(index) for index in range(count)]
    return [entry.strip() for entry in inherited.split(",")][:count]


def plan_local_workers(
    device: str, runs: int, max_workers: int | None, cores: int, visible_gpus: int, inherited: str | None
) -> tuple[int, list[str] | None]:
    """(worker processes, the GPU of each as its CUDA_VISIBLE_DEVICES, or None: the environment as it is).

    auto or cuda with GPUs: one worker per GPU (fewer with max_workers). cuda:N: the runs name their GPU, so
    the workers keep this process's numbering and share it: one, unless max_workers asks for more. Otherwise
    up to one per core.
    """
    if device in ("auto", "cuda") and visible_gpus:
        workers = min(runs, max_workers or visible_gpus, visible_gpus)
        return workers, gpu_names(workers, inherited)
    if device.startswith("cuda:"):
        return min(runs, max_workers or 1), None
    return min(runs, max_workers or cores, cores), None


def _start_local_worker(gpu_queue: multiprocessing.Queue | None, threads: int) -> None:
    """Pin this worker process to one GPU (before CUDA starts in it) and to its share of the cores."""
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()
    torch.set_num_threads(threads)


def run_local(tasks: list[RunTask], config: AppConfig, on_done: OnDone) -> None:
    if not tasks:
        return
    cores = os.cpu_count() or 1
    workers, gpus = plan_local_workers(
        config.device,
        len(tasks),
        config.sweep.max_workers,
        cores,
        torch.cuda.device_count(),
        os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads or CUDA state
    queue = None
    if gpus:
        queue = context.Queue()
        for name in gpus:
            queue.put(name)
    log.info("local backend: %d worker process(es)%s", workers, f", one GPU each ({','.join(gpus)})" if gpus else "")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_local_worker, initargs=(queue, max(1, cores // workers))
    ) as pool:
        futures = {pool.submit(run_task_in_worker, task): task for task in tasks}
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool:  # a worker was killed: the pool stops, and every unfinished run with it
                result = failed_result(
                    SweepError(
                        "a worker process died (killed by a signal, often for lack of memory) and stopped the pool; "
                        "this run did not finish — start the sweep again to retry it."
                    )
                )
            except Exception as exc:  # the task or its result could not cross between the processes
                result = failed_result(exc)
            on_done(futures[future], result)


def check_backend(backend: str) -> None:
    """What the backend needs, checked before the sweep folder is made. Ray workers start fresh interpreters
    that import this project as an installed package (`pip install -e .`, which `make venv` does), not from
    the driver's folder: it must be installed, and be this checkout (not an older copy installed earlier)."""
    if backend != "ray":
        return
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "sweep.backend 'ray' needs the ray package: pip install ray==2.60.0 (the other "
            "backends, sequential and local, do without)."
        )
    how = f"pip install --no-deps -e {PROJECT_ROOT} (make venv does this)"
    # Every record of the name: the build's own neuron_tcn.egg-info in the checkout is one too, but only an
    # installed one says (PEP 610 direct_url.json) where it points.
    installed = [_installed_location(d) for d in importlib.metadata.distributions(name=DISTRIBUTION)]
    if PROJECT_ROOT in installed:
        return
    if not installed:
        raise ConfigError(
            f"sweep.backend 'ray' needs this project installed in the Python environment that Ray's "
            f"workers use, so that they can import it: {how}."
        )
    where = next((str(path) for path in installed if path is not None), "installed without -e (a copy)")
    raise ConfigError(
        f"sweep.backend 'ray': the installed {DISTRIBUTION} is {where}, not this checkout "
        f"{PROJECT_ROOT}, so Ray's workers would run other code: {how}."
    )


def _installed_location(distribution: importlib.metadata.Distribution) -> Path | None:
    """The checkout an editable install points at (PEP 610 direct_url.json), or None."""
    try:
        record = json.loads(distribution.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    url = record.get("url", "")
    if not (record.get("dir_info", {}).get("editable") and url.startswith("file://")):
        return None
    return Path(urllib.parse.unquote(url.removeprefix("file://"))).resolve()


def run_ray(tasks: list[RunTask], config: AppConfig, on_done: OnDone) -> None:
    if not tasks:
        return
    import ray  # present: check_backend

    settings = config.sweep.ray
    try:
        if settings.address:
            ray.init(address=settings.address, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=settings.num_cpus or config.sweep.max_workers or os.cpu_count(),
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at sweep.ray.address {settings.address!r}" if settings.address else "a local Ray"
        raise SweepError(f"cannot start or join {where} ({exc}).") from None
    try:
        resources = ray.cluster_resources()
        gpus = settings.gpus_per_run
        if gpus is None:
            gpus = 1 if config.device != "cpu" and resources.get("GPU", 0) >= 1 else 0
        log.info(
            "ray backend: cluster with %g CPU(s), %g GPU(s); each run requests %g CPU(s), %g GPU(s)",
            resources.get("CPU", 0),
            resources.get("GPU", 0),
            settings.cpus_per_run,
            gpus,
        )
        if not settings.address and (settings.cpus_per_run > resources.get("CPU", 0) or gpus > resources.get("GPU", 0)):
            raise SweepError(
                f"sweep.ray: each run requests {settings.cpus_per_run:g} CPU(s) and {gpus:g} GPU(s), "
                f"more than the local Ray has ({resources.get('CPU', 0):g} CPU(s), "
                f"{resources.get('GPU', 0):g} GPU(s)); no run could ever start."
            )
        remote = ray.remote(run_task_in_worker).options(num_cpus=settings.cpus_per_run, num_gpus=gpus, max_retries=0)
        pending = {remote.remote(task): task for task in tasks}
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for reference in finished:
                task = pending.pop(reference)
                try:
                    result = ray.get(reference)
                except Exception as exc:  # the task's worker died, or the node left the cluster
                    result = failed_result(exc)
                on_done(task, result)
    finally:
        ray.shutdown()


BACKENDS: dict[str, Callable[[list[RunTask], AppConfig, OnDone], None]] = {
    "sequential": run_sequential,
    "local": run_local,
    "ray": run_ray,
}

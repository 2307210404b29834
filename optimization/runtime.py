"""Device choice, seeds, precision and out-of-memory micro-batching: what the other parts share."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from errors import ConfigError, OptimizationError


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N|mps` into an available torch device; `auto` prefers CUDA, then MPS, then CPU."""
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N, mps") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
        index = torch.cuda.current_device() if resolved.index is None else resolved.index
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested but MPS is not available on this machine")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return resolved


@dataclass(frozen=True)
class Seeds:
    """Independent seeds derived from the one run seed, so that no two random parts share a stream."""

    background: int
    stimulus: int
    optimization: int
    evaluation: int

    @classmethod
    def from_run_seed(cls, seed: int) -> Seeds:
        children = np.random.SeedSequence(seed).spawn(4)
        return cls(*(int(child.generate_state(1)[0]) for child in children))


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on `device`, so that sampling never leaves the device."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the model forward when asked; a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device, enabled: bool) -> Iterator[None]:
    """Enable cuDNN autotuning on CUDA for the duration of a run, then restore the previous setting."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled and device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


class MicroBatcher:
    """Runs work over item ranges, doubling the number of chunks whenever the device runs out of memory.

    The chunk count persists, so one out-of-memory error costs one retry, not one per step.
    """

    def __init__(self, initial_chunks: int, what: str, logger: logging.Logger):
        self.chunks = initial_chunks
        self.what = what
        self.logger = logger

    def ranges(self, total: int) -> list[slice]:
        size = -(-total // min(self.chunks, total))
        return [slice(start, min(start + size, total)) for start in range(0, total, size)]

    def run(self, total: int, work: Callable[[slice], None], restart: Callable[[], None]) -> None:
        """Call `work` on every chunk of range(total); after an OOM call `restart`, split finer and redo all."""
        while True:
            try:
                for chunk in self.ranges(total):
                    work(chunk)
                return
            except torch.OutOfMemoryError:
                largest = self.ranges(total)[0].stop
                if largest <= 1:
                    raise OptimizationError(
                        f"out of device memory during {self.what} even with one item per pass; "
                        "use a smaller model, duration or device with more memory"
                    ) from None
            # Retry outside the except block so the failed pass's tensors (held by the traceback) are freed.
            self.chunks = min(self.chunks * 2, total)
            self.logger.warning(
                "out of device memory during %s: retrying with %d micro-batches of at most %d items",
                self.what,
                self.chunks,
                self.ranges(total)[0].stop,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            restart()

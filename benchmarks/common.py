"""What both benchmarks share: the model sizes, the machine description, child processes and tables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache"  # generated models and the throwaway ONNX-route packages (git-ignored)
SEGMENTS = 1279  # inputs of the published neuron TCNs (639 excitatory + 640 inhibitory)


@dataclass(frozen=True)
class TCNSize:
    """A Beniaguev-style neuron TCN: causal Conv1D + activation + BatchNormalization per layer, three heads."""

    name: str
    segments: int
    filters: tuple[int, ...]
    kernels: tuple[int, ...]
    window: int  # input length of the Keras file (the models are causal and accept any length)

    @property
    def num_excitatory(self) -> int:
        return self.segments // 2


PUBLISHED = (
    TCNSize("7x128 (k 54,17)", SEGMENTS, (128,) * 7, (54,) + (17,) * 6, 400),
    TCNSize("7x256 (k 54,12)", SEGMENTS, (256,) * 7, (54,) + (12,) * 6, 400),
)
# CPU: the published input width and first kernel (the layer that dominates), narrower and shorter.
CPU_SMALL = TCNSize("7x32 (k 54,17)", SEGMENTS, (32,) * 7, (54,) + (17,) * 6, 200)
QUICK = TCNSize("3x8 (k 9,5) quick", 40, (8,) * 3, (9, 5, 5), 48)


def versions(*packages: str, extra_path: Path | None = None) -> dict[str, str]:
    """Installed versions from package metadata (nothing is imported), also looked up in `extra_path`."""
    found = {"python": platform.python_version()}
    for name in packages:
        installed = list(metadata.distributions(name=name))
        if not installed and extra_path is not None:
            installed = list(metadata.distributions(name=name, path=[str(extra_path)]))
        found[name] = installed[0].version if installed else "not installed"
    return found


def cpu_description() -> str:
    """CPU model and the cores this process may use, from lscpu when available."""
    model = platform.processor() or platform.machine()
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in listing.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores available (nproc)"


@dataclass(frozen=True)
class ChildResult:
    wall_s: float
    peak_rss_mb: float
    returncode: int
    stderr: str


def run_child(code: str, extra_path: list[Path] | None = None, timeout: float = 900) -> ChildResult:
    """Run `code` in a fresh Python process: wall time from start to exit and the child's own peak RSS."""
    paths = [str(REPO), *(str(p) for p in extra_path or [])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryFile(mode="w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        deadline = threading.Timer(timeout, process.kill)
        deadline.start()
        _, status, usage = os.wait4(process.pid, 0)  # the rusage of this child alone (ru_maxrss in KiB)
        wall = time.perf_counter() - started
        deadline.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        return ChildResult(wall, usage.ru_maxrss / 1024, process.returncode, stderr.read())


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)

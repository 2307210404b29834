"""Error types of our own, and how an entry point reports whatever stopped it: one paragraph, one exit code."""

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn


class ToolError(Exception):
    """Base of every expected failure (bad input, refused conversion, diverged optimization).

    Exit codes are distinct per type and avoid 1 (Python's uncaught exceptions) and 2 (argparse usage errors).
    """

    exit_code = 9


class ConversionError(ToolError):
    """A Keras file that cannot be converted exactly; the message names the file, the layer(s) and the problem."""

    exit_code = 8


class ConfigError(ToolError):
    """An invalid configuration: unknown key, wrong type or out-of-range value."""

    exit_code = 3


class OptimizationError(ToolError):
    """The optimization cannot start or diverged (NaN/Inf), or its inputs are unusable."""

    exit_code = 4


class ModelFileError(ToolError):
    """A PyTorch model file that is missing, unreadable, or not written by this converter."""

    exit_code = 5


class PickleFileError(ToolError):
    """A parameters pickle that is missing, unreadable, or holds classes that are not allowed."""

    exit_code = 6


class SelectionError(ToolError):
    """No usable model: empty or missing models folder, unreadable results table, every candidate unusable."""

    exit_code = 7


class OutputError(ToolError):
    """An output that cannot be written: read-only or missing folder, full disk, file-size limit."""

    exit_code = 10


class SweepError(ToolError):
    """A sweep that cannot start its backend, or that finished with failed runs (the manifest names each)."""

    exit_code = 11


class SimulatorError(ToolError):
    """The ground-truth simulator cannot be set up or failed: a cell NEURON rejects, mechanisms that do not compile,
    a simulator function that raises or returns something else than spike times, a worker that died."""

    exit_code = 13


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending a job, `kill`): handled like Ctrl-C, so the optimization saves its state."""


INTERRUPTED_EXIT, TERMINATED_EXIT, UNEXPECTED_EXIT, OUT_OF_MEMORY_EXIT = 130, 143, 1, 12


def listed(items: Iterable[str], most: int = 5, separator: str = ", ") -> str:
    """`a, b, c, d, e and 12 more`: a forged file can hold thousands of problems; a message names a few."""
    items = list(items)
    if len(items) <= most:
        return separator.join(items)
    return f"{separator.join(items[:most])} and {len(items) - most} more"


def raise_terminated_on_sigterm() -> None:
    """Entry points call this once: SIGTERM then raises Terminated in the main thread."""

    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


@contextmanager
def quiet_interrupts_while_importing(script: bool) -> Iterator[None]:
    """Around an entry script's imports (torch, TensorFlow: seconds): when run as a script, Ctrl-C or SIGTERM
    there ends with the same one line and exit code as later, not a traceback of the import machinery. As a
    library (`script` False) nothing changes."""
    if not script:
        yield
        return
    raise_terminated_on_sigterm()
    try:
        yield
    except KeyboardInterrupt as exc:  # Terminated included
        message, code = failure_report(exc, "starting")
        print(message, file=sys.stderr)
        sys.exit(code)


def failure_report(exc: BaseException, doing: str) -> tuple[str, int]:
    """The one-paragraph message and exit code of an entry point stopped by `exc` while `doing` something:
    our errors with their own code, Ctrl-C 130, SIGTERM 143, memory exhausted 12 (an input larger than this
    machine, not a bug), anything else 1 (a bug: the traceback is for --verbose)."""
    if isinstance(exc, ToolError):
        return f"error: {' '.join(str(exc).split())}", exc.exit_code
    if isinstance(exc, Terminated):
        return "error: terminated (SIGTERM); files being written were left as they were before.", TERMINATED_EXIT
    if isinstance(exc, KeyboardInterrupt):
        return "error: interrupted; files being written were left as they were before.", INTERRUPTED_EXIT
    if isinstance(exc, MemoryError):
        return (
            f"error: out of memory while {doing}: the input needs more memory than this process may use. "
            "Use a machine with more memory, or lower the limits of limits.py (NEURON_TCN_<NAME>) so that such "
            "an input is refused before it is read; no result was written.",
            OUT_OF_MEMORY_EXIT,
        )
    return (
        f"error: unexpected {type(exc).__name__} while {doing}: {' '.join(str(exc).split())[:500]}. This is "
        "a fault of the tool (please report it with the output of --verbose, which shows the traceback); no "
        "result was written.",
        UNEXPECTED_EXIT,
    )


def run_entry_point(
    work: Callable[[], int],
    doing: str,
    verbose: bool,
    report: Callable[[str, BaseException | None], None] | None = None,
) -> int:
    """The one error boundary of an entry point: run `work`; whatever stops it becomes one `error:` paragraph
    (through `report(message, traceback_or_None)`, by default stderr) and its exit code. SIGTERM is turned into
    Terminated first; --verbose shows tracebacks and TensorFlow's own logging."""
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    raise_terminated_on_sigterm()
    try:
        return work()
    except (Exception, KeyboardInterrupt) as exc:
        message, code = failure_report(exc, doing)
        (report or _to_stderr)(message, exc if verbose else None)
        return code


def _to_stderr(message: str, traceback_of: BaseException | None) -> None:
    if traceback_of is not None:
        logging.getLogger("errors").error("traceback:", exc_info=traceback_of)
    print(message, file=sys.stderr)

"""Error types of our own: the CLIs turn them into a one-paragraph message and a non-zero exit."""


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

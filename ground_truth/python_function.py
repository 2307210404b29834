"""A user's own simulator: `module:function` or `path/to/file.py:function`, called in worker processes.

The function takes one argument, spikes (trials, segments, time) bool in 1 ms bins (excitatory segments first, in
the model's input channel order), and returns one array of somatic spike times (ms) per trial, or a mapping
{'spike_times': ..., 'soma_v': (trials, time) mV} (see ground_truth.interface.checked_output).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from errors import ConfigError, SimulatorError
from fileio import file_sha256
from ground_truth.interface import SimulateFunction, Simulator, folder_fingerprint

TARGET = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|[^:]+\.py):(?P<function>[A-Za-z_]\w*)$")


@dataclass(frozen=True)
class FunctionSimulator(Simulator):
    """`target` as the config gives it; `module_file` the file it resolves to. The fingerprint holds the module's
    hash and its folder's files (folder_fingerprint), so an edited simulator is asked again."""

    target: str
    module_file: str | None
    module_sha256: str

    chunk_trials = 16

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"the simulator function {self.target}"

    @classmethod
    def resolve(cls, target: str, base: Path) -> FunctionSimulator:
        """The simulator named by `target`, its file found now (relative .py paths from `base`); a ConfigError when
        it names nothing that exists."""
        match = TARGET.match(target)
        if match is None:
            raise ConfigError(
                f"ground_truth.simulator={target[:200]!r}: expected demo, neuron, module:function or "
                "path/to/file.py:function."
            )
        module = match["module"]
        if module.endswith(".py"):
            path = Path(module) if Path(module).is_absolute() else base / module
            if not path.is_file():
                raise ConfigError(f"ground_truth.simulator={target!r}: {path} is not a file.")
            return cls(target, str(path.resolve()), file_sha256(path, ConfigError) + folder_fingerprint(path.parent))
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"ground_truth.simulator={target!r}: module {module} cannot be found "
                f"({' '.join(str(exc).split())[:200]})."
            ) from None
        if spec is None:
            raise ConfigError(
                f"ground_truth.simulator={target!r}: no module {module} on the Python path "
                f"(run from the folder that holds it, or give path/to/file.py:function)."
            )
        origin = Path(spec.origin) if spec.origin and Path(spec.origin).is_file() else None
        return cls(target, None, file_sha256(origin, ConfigError) + folder_fingerprint(origin.parent) if origin else "")

    def fingerprint(self) -> str:
        return f"function:{self.target}:{self.module_file}:{self.module_sha256}"

    def _function(self) -> Any:
        module_name, _, function_name = self.target.rpartition(":")
        if self.module_file is not None:
            path = Path(self.module_file)
            sys.path.insert(0, str(path.parent))  # its neighbours import as they do when it runs there
            spec = importlib.util.spec_from_file_location("_ground_truth_simulator", path)
            if spec is None or spec.loader is None:
                raise SimulatorError(f"{self.name}: {path} cannot be imported as a Python module.")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        function = getattr(module, function_name, None)
        if not callable(function):
            raise SimulatorError(f"{self.name}: the module has no function {function_name}.")
        return function

    def open(self) -> SimulateFunction:
        function = self._function()

        return function  # its answers are checked where it is called (runner: checked_output)

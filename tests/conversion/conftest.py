"""Fixtures of the conversion parity tests: Keras zoo models built in subprocesses, converted in-process.

The Keras models are built, saved (.h5) and run by ``make_keras_model.py`` in a subprocess per flavour and
batch (the ~3 s TensorFlow import is paid once per batch), so that this process never needs TensorFlow to
convert. Conversions run with ``tensorflow``, ``keras``, ``tf_keras`` and ``tcn`` made unimportable.

Set ``KERAS_ZOO_CACHE=/some/dir`` to keep the built zoo between runs (rebuilt when the zoo code changes).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for _path in (str(REPO_ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from keras_zoo import FLAVOURS, ZOO  # noqa: E402

MAKE_SCRIPT = HERE / "make_keras_model.py"
ZOO_SOURCES = (HERE / "keras_zoo.py", MAKE_SCRIPT)
SEED = 0
TOLERANCE = 1e-5  # max abs diff against Keras, float32 on CPU: the converter's exactness bound
BUILD_TIMEOUT_S = 600
BLOCKED_MODULES = ("tensorflow", "keras", "tf_keras", "tcn")
PARITY_RESULTS: dict[str, str] = {}  # "flavour/model" -> outcome, printed at the end of the run
WORST_DIFFS: dict[str, float] = {}  # label -> worst max abs diff recorded by Parity.record_figure


# --------------------------------------------------------------------------------------------------
# The Keras side
# --------------------------------------------------------------------------------------------------


@dataclass
class ZooArtifact:
    """One saved Keras model and Keras's own predictions for it."""

    flavour: str
    name: str
    h5: Path
    params: Path | None  # the fit_CNN-style .pickle of neuron TCNs
    meta: dict
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]

    @property
    def label(self) -> str:
        return f"{self.flavour}/{self.name}"

    @property
    def output_names(self) -> list[str]:
        return self.meta["output_names"]


def _load_npz(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[key] for key in sorted(data.files)]


def _batch_of(name: str) -> str:
    """Models built by one subprocess call: the neuron TCNs, or everything else."""
    return "neuron" if ZOO[name].group == "neuron" else "layers"


class KerasZoo:
    """Builds the zoo lazily and hands out the saved artifacts.

    One subprocess per (flavour, batch). When a batch is first needed, the same batch of every other
    flavour that this session's tests use is built at the same time (they are independent processes).
    """

    def __init__(self, root: Path, reuse: bool, expected: set[tuple[str, str]] = frozenset()):
        self.root = root
        self.reuse = reuse
        self.expected = set(expected)  # (flavour, batch) pairs the session will need
        self._logs: dict[tuple[str, str], str] = {}  # (flavour, batch) -> build log

    def get(self, flavour: str, name: str) -> ZooArtifact:
        key = (flavour, _batch_of(name))
        if key not in self._logs:
            self._build_with_siblings(key)
        stem = self.root / flavour / name
        error = Path(f"{stem}.error.txt")
        if error.exists():
            pytest.fail(
                f"Keras ({flavour}) could not build/save zoo model {name!r} -- a test-zoo problem, "
                f"not a converter one:\n{error.read_text()}",
                pytrace=False,
            )
        meta_path = Path(f"{stem}.json")
        if not meta_path.exists():
            pytest.fail(
                f"make_keras_model.py wrote nothing for {flavour}/{name}; its log:\n{self._logs[key]}", pytrace=False
            )
        params = Path(f"{stem}.pickle")
        return ZooArtifact(
            flavour=flavour,
            name=name,
            h5=Path(f"{stem}.h5"),
            params=params if params.exists() else None,
            meta=json.loads(meta_path.read_text()),
            inputs=_load_npz(Path(f"{stem}.inputs.npz")),
            outputs=_load_npz(Path(f"{stem}.outputs.npz")),
        )

    def _names(self, flavour: str, batch: str) -> list[str]:
        return [n for n, e in ZOO.items() if flavour in e.flavours and _batch_of(n) == batch]

    def _is_fresh(self, flavour: str, batch: str) -> bool:
        newest_source = max(p.stat().st_mtime for p in ZOO_SOURCES)
        metas = [self.root / flavour / f"{n}.json" for n in self._names(flavour, batch)]
        return all(
            m.exists() and m.stat().st_mtime > newest_source and json.loads(m.read_text()).get("seed") == SEED
            for m in metas
        )

    def _build_with_siblings(self, key: tuple[str, str]) -> None:
        siblings = sorted(k for k in self.expected if k[1] == key[1] and k != key and k not in self._logs)
        running = {}
        for flavour, batch in [key, *siblings]:
            if self.reuse and self._is_fresh(flavour, batch):
                self._logs[(flavour, batch)] = "(reused the cached zoo)"
            else:
                running[(flavour, batch)] = self._start(flavour, batch)
        for k, (proc, cmd, log_path, start) in running.items():
            try:
                proc.wait(timeout=BUILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log = (
                f"$ {' '.join(cmd)}\n(exit {proc.returncode}, {time.perf_counter() - start:.1f} s)\n"
                f"{log_path.read_text()[-6000:]}"
            )
            self._logs[k] = log
            if proc.returncode not in (0, 1):  # 1 = some models failed, each with its .error.txt
                self._logs[k] = f"make_keras_model.py crashed:\n{log}"

    def _start(self, flavour: str, batch: str):
        out_dir = self.root / flavour
        out_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
        cmd = [
            sys.executable,
            str(MAKE_SCRIPT),
            "--flavour",
            flavour,
            "--model",
            ",".join(self._names(flavour, batch)),
            "--out-dir",
            str(out_dir),
            "--seed",
            str(SEED),
        ]
        log_path = out_dir / f"build_{batch}.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        return proc, cmd, log_path, time.perf_counter()


# (flavour, batch) pairs used by the collected tests: parametrized with `flavour` and `name`.
EXPECTED_BUILDS: set[tuple[str, str]] = set()


def pytest_collection_finish(session):
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("flavour") in FLAVOURS and params.get("name") in ZOO:
            EXPECTED_BUILDS.add((params["flavour"], _batch_of(params["name"])))


@pytest.fixture(scope="session")
def keras_zoo(tmp_path_factory) -> KerasZoo:
    cache = os.environ.get("KERAS_ZOO_CACHE")
    if cache:
        return KerasZoo(Path(cache), reuse=True, expected=EXPECTED_BUILDS)
    return KerasZoo(tmp_path_factory.mktemp("keras_zoo"), reuse=False, expected=EXPECTED_BUILDS)


# --------------------------------------------------------------------------------------------------
# The PyTorch side
# --------------------------------------------------------------------------------------------------

_MISSING = object()


@contextlib.contextmanager
def tensorflow_blocked():
    """Make `import tensorflow` / `keras` / `tf_keras` fail (ImportError) inside the block."""
    saved = {name: sys.modules.get(name, _MISSING) for name in BLOCKED_MODULES}
    try:
        for name in BLOCKED_MODULES:
            sys.modules[name] = None
        yield
    finally:
        for name, module in saved.items():
            if module is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def run_torch(model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run a converted model on Keras-layout numpy inputs; outputs as a list of numpy arrays."""
    import torch

    with torch.no_grad():
        result = model(*[torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in inputs])
    if isinstance(result, torch.Tensor):
        result = (result,)
    return [r.detach().cpu().numpy() for r in result]


def output_diffs(actual: list[np.ndarray], expected: list[np.ndarray], names: list[str]) -> dict[str, float]:
    """Max abs diff per output name; inf for a shape mismatch. Raises if the output counts differ."""
    assert len(actual) == len(expected), (
        f"the converted model returns {len(actual)} output(s), Keras returns {len(expected)} ({names})"
    )
    diffs = {}
    for name, a, e in zip(names, actual, expected):
        if a.shape != e.shape:
            diffs[name] = float("inf")
        else:
            diffs[name] = float(np.max(np.abs(a.astype(np.float64) - e))) if e.size else 0.0
    return diffs


def assert_matches_keras(
    artifact: ZooArtifact, actual: list[np.ndarray], what: str = "converted model", tolerance: float = TOLERANCE
) -> dict[str, float]:
    diffs = output_diffs(actual, artifact.outputs, artifact.output_names)
    bad = [(name, d) for name, d in diffs.items() if not d <= tolerance]
    if bad:
        shapes = {
            n: (tuple(a.shape), tuple(e.shape)) for n, a, e in zip(artifact.output_names, actual, artifact.outputs)
        }
        lines = [
            f"  output {name!r}: max abs diff {d:.3g}"
            + (f" (shape {shapes[name][0]} vs Keras {shapes[name][1]})" if d == float("inf") else "")
            for name, d in bad
        ]
        raise AssertionError(
            f"{artifact.label}: {what} differs from Keras beyond {tolerance:g}:\n"
            + "\n".join(lines)
            + f"\n  all outputs: {diffs}"
        )
    return diffs


@dataclass
class Converted:
    model: object = None
    pth: Path | None = None
    error: BaseException | None = None


class ConversionCache:
    """Each zoo model is converted once per session (with TensorFlow blocked); tests share the result."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[tuple[str, str], Converted] = {}

    def get(self, artifact: ZooArtifact) -> Converted:
        key = (artifact.flavour, artifact.name)
        if key not in self._cache:
            self._cache[key] = self._convert(artifact)
        return self._cache[key]

    def _convert(self, artifact: ZooArtifact) -> Converted:
        out_dir = self.root / artifact.flavour / artifact.name
        out_dir.mkdir(parents=True, exist_ok=True)
        pth = out_dir / f"{artifact.name}.pth"
        try:
            with tensorflow_blocked():
                from model_converter import TCNModelConverter

                model = TCNModelConverter(artifact.h5, artifact.params).convert(pth)
        except Exception as exc:  # reported by the tests that use it
            return Converted(pth=pth, error=exc)
        return Converted(model=model, pth=pth)


def require_converted(converted: Converted, artifact: ZooArtifact):
    """The converted model, or a test failure showing the converter's error and traceback."""
    if converted.error is not None:
        import traceback

        tb = "".join(traceback.format_exception(converted.error))
        pytest.fail(f"{artifact.label}: conversion of {artifact.h5.name} failed:\n{tb}", pytrace=False)
    return converted.model


class Parity:
    """What the parity tests use, handed out by the `parity` fixture (test modules do not import conftest)."""

    tolerance = TOLERANCE
    tensorflow_blocked = staticmethod(tensorflow_blocked)
    run_torch = staticmethod(run_torch)
    output_diffs = staticmethod(output_diffs)
    assert_matches_keras = staticmethod(assert_matches_keras)
    require_converted = staticmethod(require_converted)

    def __init__(self, zoo: KerasZoo, conversions: ConversionCache):
        self.zoo = zoo
        self.conversions = conversions

    def artifact(self, flavour: str, name: str) -> ZooArtifact:
        return self.zoo.get(flavour, name)

    def converted(self, artifact: ZooArtifact) -> Converted:
        return self.conversions.get(artifact)

    @staticmethod
    def record(artifact: ZooArtifact, outcome: str) -> None:
        PARITY_RESULTS[artifact.label] = outcome

    @staticmethod
    def record_figure(label: str, diff: float) -> None:
        """One output's max abs diff; the table shows the worst of each label."""
        WORST_DIFFS[label] = max(WORST_DIFFS.get(label, 0.0), diff)
        PARITY_RESULTS[label] = f"{'ok   ' if WORST_DIFFS[label] <= TOLERANCE else 'FAIL '} {WORST_DIFFS[label]:.2e}"


@pytest.fixture(scope="session")
def parity(keras_zoo, tmp_path_factory) -> Parity:
    return Parity(keras_zoo, ConversionCache(tmp_path_factory.mktemp("converted")))


# --------------------------------------------------------------------------------------------------
# A parity table at the end of the run
# --------------------------------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter):
    if not PARITY_RESULTS:
        return
    terminalreporter.section("Keras -> PyTorch parity (max abs diff over all outputs)")
    for label in sorted(PARITY_RESULTS):
        terminalreporter.write_line(f"{label:45s} {PARITY_RESULTS[label]}")

"""Writing files safely: every output goes to a temporary name in the target folder and is renamed into place,
so a run killed at any moment leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import io
import os
import pickle
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from errors import OutputError, PickleFileError


@contextmanager
def atomic_paths(*targets: str | Path) -> Iterator[list[Path]]:
    """Yield temporary paths beside `targets`; on success rename each onto its target, on failure remove them.

    An OSError on the way (read-only or missing folder, full disk, file-size limit) becomes an OutputError
    naming the targets, which keep their previous content.
    """
    targets = [Path(t) for t in targets]
    # The suffix is kept last, for writers that choose the format by it (Keras's model.save).
    temporaries = [t.with_name(f".{t.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{t.suffix}") for t in targets]
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        yield temporaries
        for temporary, target in zip(temporaries, targets):
            os.replace(temporary, target)
    except OSError as exc:
        raise OutputError(f"{', '.join(map(str, targets))}: cannot be written ({exc.strerror or exc}); "
                          "any previous version is left unchanged.") from exc
    finally:
        for temporary in temporaries:
            with suppress(OSError):  # e.g. a folder that could not be created
                temporary.unlink(missing_ok=True)


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` with an in-memory binary handle, then store its bytes atomically at `path`.

    Buffering first keeps disk errors out of serializers that report them badly (torch.save raises a bare
    RuntimeError on a full disk); here they are plain OSErrors, turned into OutputError by atomic_paths.
    """
    buffer = io.BytesIO()
    write(buffer)
    with atomic_paths(path) as (temporary,):
        temporary.write_bytes(buffer.getbuffer())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomically(path, lambda handle: handle.write(text.encode()))


SAFE_PICKLE_GLOBALS = {
    ("builtins", name) for name in
    ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "bool", "complex")
} | {
    ("collections", "OrderedDict"),
    # Python 3 writes bytes (numpy array and scalar payloads) in protocol 2 as _codecs.encode(text, "latin1").
    ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _RefusedClass(pickle.UnpicklingError):
    """A class outside SAFE_PICKLE_GLOBALS, as opposed to a damaged pickle."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Only plain containers, numbers, strings, bytes and numpy arrays/scalars/dtypes; nothing executable."""

    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_PICKLE_GLOBALS or (module == "numpy" and name.endswith("DType")):
            return super().find_class(module, name)
        raise _RefusedClass(f"class '{module}.{name}' is not allowed in a parameters pickle")


def load_pickle(path: str | Path, trust: bool = False) -> Any:
    """Read a pickle with the restricted unpickler (or the plain one when `trust`), also Python-2 pickles.

    Errors are `PickleFileError`s naming the file and the problem; a refused class is named.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            unpickler = (pickle.Unpickler if trust else _RestrictedUnpickler)(f, encoding="latin1")
            return unpickler.load()
    except FileNotFoundError as exc:
        raise PickleFileError(f"{path}: no such file.") from exc
    except _RefusedClass as exc:
        raise PickleFileError(f"{path}: refused to load: {exc}. Pass --trust-pickles only if you trust its "
                              "origin.") from exc
    except Exception as exc:  # truncated or foreign files raise many types
        raise PickleFileError(f"{path}: cannot be read as a pickle ({type(exc).__name__}: {exc}).") from exc

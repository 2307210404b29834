"""Pickles from untrusted files: a restricted unpickler that constructs plain data only, within size budgets.

Training pickles (`<stem>.pickle`) come from anywhere a study folder came from. Only plain containers, numbers,
strings, bytes and numpy arrays/scalars/dtypes are constructed; nothing in the file runs. Constructors that
allocate what their arguments declare are checked against MAX_PICKLE_OBJECT_BYTES first, the file is read into
memory within MAX_PICKLE_BYTES, and the result is checked for cycles and depth (limits.py).
"""
from __future__ import annotations

import _compat_pickle
import io
import math
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from errors import PickleFileError
from fileio import regular_file_size
from limits import MAX_PICKLE_BYTES, MAX_PICKLE_DEPTH, MAX_PICKLE_OBJECT_BYTES, format_bytes

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


class _TooLarge(pickle.UnpicklingError):
    """The pickle asks to construct more than MAX_PICKLE_OBJECT_BYTES."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Only plain containers, numbers, strings, bytes and numpy arrays/scalars/dtypes; nothing executable.

    Constructors that allocate what their arguments declare (`bytearray(3e9)`, `numpy.ndarray((5e8,))`) are
    called only after that size is checked, each and in total, against MAX_PICKLE_OBJECT_BYTES. Python 2 names
    (`__builtin__.set`) are read as their Python 3 names.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.constructed = 0
        unpickler = self

        class CheckedArray(np.ndarray):
            """`numpy.ndarray` as a pickle calls it (or passes it to _reconstruct): plain arrays, sizes checked."""

            def __new__(cls, shape, dtype=float, *args, **kwargs):
                unpickler._check_shape(shape, dtype)
                return np.ndarray.__new__(np.ndarray, shape, dtype, *args, **kwargs)

        self.checked_array = CheckedArray

    def _allocate(self, declared: float, what: str) -> None:
        self.constructed += declared
        limit = MAX_PICKLE_OBJECT_BYTES.value
        if declared > limit or self.constructed > limit:
            raise _TooLarge(f"it asks to construct {what} of {format_bytes(declared)} "
                            f"({format_bytes(self.constructed)} in total), more than the limit of "
                            f"{format_bytes(limit)}; raise {MAX_PICKLE_OBJECT_BYTES.env} for a real pickle this big")

    def _sized(self, constructor: Callable, what: str) -> Callable:
        def checked(*args, **kwargs):
            if args and isinstance(args[0], int) and not isinstance(args[0], bool):
                self._allocate(args[0], what)
            return constructor(*args, **kwargs)
        return checked

    def _check_shape(self, shape: Any, dtype: Any) -> None:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(d, int) and d >= 0 for d in dims):
            raise pickle.UnpicklingError(f"an array shape {shape!r} that is not a tuple of sizes")
        self._allocate(math.prod(dims) * np.dtype(dtype).itemsize, f"an array of shape {dims}")

    def _reconstruct(self, reconstruct: Callable) -> Callable:
        def checked(subtype, shape, dtype, *args):
            self._check_shape(shape, dtype)
            return reconstruct(np.ndarray if subtype is self.checked_array else subtype, shape, dtype, *args)
        return checked

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if not ((module, name) in SAFE_PICKLE_GLOBALS or (module == "numpy" and name.endswith("DType"))):
            raise _RefusedClass(f"class '{module}.{name}' is not allowed in a parameters pickle")
        found = super().find_class(module, name)
        if (module, name) in (("builtins", "bytearray"), ("builtins", "bytes")):
            return self._sized(found, name)
        if name == "ndarray":
            return self.checked_array
        if name == "_reconstruct":
            return self._reconstruct(found)
        return found


def check_plain_structure(value: Any, path: Path) -> None:
    """A loaded pickle's containers must nest at most MAX_PICKLE_DEPTH deep and never contain themselves
    (every later walk of it may then recurse); walked without recursion, each shared container once."""
    depth_limit = MAX_PICKLE_DEPTH.value
    visited: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(value, 1, False)]
    on_path: set[int] = set()
    while stack:
        item, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(item))
            continue
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        else:
            continue
        if id(item) in on_path:
            raise PickleFileError(f"{path}: holds a container that contains itself; a parameters pickle is plain "
                                  "data without cycles.")
        if id(item) in visited:
            continue
        if depth > depth_limit:
            raise PickleFileError(f"{path}: its data nests more than {depth_limit:.0f} levels deep; raise "
                                  f"{MAX_PICKLE_DEPTH.env} if that is real.")
        visited.add(id(item))
        on_path.add(id(item))
        stack.append((item, depth, True))
        stack.extend((child, depth + 1, False) for child in children)


def load_pickle(path: str | Path, trust: bool = False) -> Any:
    """Read a pickle with the restricted unpickler (or the plain one when `trust`), also Python-2 pickles.

    The file must be a regular file within MAX_PICKLE_BYTES; it is read into memory first, so that no length a
    pickle declares can make the reader allocate more than the file holds. Errors are `PickleFileError`s naming
    the file and the problem; a refused class is named.
    """
    path = Path(path)
    size = regular_file_size(path, PickleFileError, "pickle file")
    MAX_PICKLE_BYTES.check(size, str(path), PickleFileError, "bytes")
    try:
        with open(path, "rb") as f:
            data = io.BytesIO(f.read(size + 1))
        unpickler = (pickle.Unpickler if trust else _RestrictedUnpickler)(data, encoding="latin1")
        value = unpickler.load()
    except _RefusedClass as exc:
        raise PickleFileError(f"{path}: refused to load: {exc}. Pass --trust-pickles only if you trust its "
                              "origin.") from exc
    except _TooLarge as exc:
        raise PickleFileError(f"{path}: refused to load: {exc}.") from exc
    except RecursionError:
        raise PickleFileError(f"{path}: its data nests too deeply to be read.") from None
    except Exception as exc:  # truncated or foreign files raise many types
        raise PickleFileError(f"{path}: cannot be read as a pickle ({type(exc).__name__}: {exc}).") from exc
    check_plain_structure(value, path)
    return value

"""Pickles from untrusted files: a restricted unpickler that constructs plain data only, within size budgets.

Training pickles (`<stem>.pickle`) come from anywhere a study folder came from. Only plain containers, numbers,
strings, bytes and numpy arrays/scalars/dtypes are constructed; nothing in the file runs. The file is read into
memory within MAX_PICKLE_BYTES, and its opcodes are scanned (check_pickle_stream, which builds nothing) for
nesting depth and for the number of values and references they build, before the unpickler makes anything: a
300 kB pickle can hold a dict key nested 300,000 tuples deep (hashing it crashes the interpreter) or 100 million
references to one string. Constructors that allocate what their arguments declare are checked against
MAX_PICKLE_OBJECT_BYTES first, and the result is checked for cycles and depth (limits.py).
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import pickle
import pickletools
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from errors import PickleFileError, ToolError
from fileio import regular_file_size
from limits import (
    MAX_PICKLE_BYTES,
    MAX_PICKLE_DEPTH,
    MAX_PICKLE_OBJECT_BYTES,
    MAX_PICKLE_STEPS,
    Limit,
    format_bytes,
)

SAFE_PICKLE_GLOBALS = {
    ("builtins", name)
    for name in (
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "bool",
        "complex",
    )
} | {
    ("collections", "OrderedDict"),
    # Python 3 writes bytes (numpy array and scalar payloads) in protocol 2 as _codecs.encode(text, "latin1").
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.constructed: float = 0
        unpickler = self

        class CheckedArray(np.ndarray):
            """`numpy.ndarray` as a pickle calls it (or passes it to _reconstruct): plain arrays, sizes checked."""

            def __new__(  # type: ignore[misc]  # returns a plain ndarray on purpose, never a CheckedArray
                cls, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any
            ) -> np.ndarray:
                unpickler._check_shape(shape, dtype)
                return np.ndarray.__new__(np.ndarray, shape, dtype, *args, **kwargs)

        self.checked_array = CheckedArray

    def _allocate(self, declared: float, what: str) -> None:
        self.constructed += declared
        limit = MAX_PICKLE_OBJECT_BYTES.value
        if declared > limit or self.constructed > limit:
            raise _TooLarge(
                f"it asks to construct {what} of {format_bytes(declared)} "
                f"({format_bytes(self.constructed)} in total), more than the limit of "
                f"{format_bytes(limit)}; raise {MAX_PICKLE_OBJECT_BYTES.env} for a real pickle this big"
            )

    def _sized(self, constructor: Callable[..., Any], what: str) -> Callable[..., Any]:
        def checked(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], int) and not isinstance(args[0], bool):
                self._allocate(args[0], what)
            return constructor(*args, **kwargs)

        return checked

    def _check_shape(self, shape: Any, dtype: Any) -> None:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(d, int) and d >= 0 for d in dims):
            raise pickle.UnpicklingError(f"an array shape {shape!r} that is not a tuple of sizes")
        self._allocate(math.prod(dims) * np.dtype(dtype).itemsize, f"an array of shape {dims}")

    def _reconstruct(self, reconstruct: Callable[..., Any]) -> Callable[..., Any]:
        def checked(subtype: Any, shape: Any, dtype: Any, *args: Any) -> Any:
            self._check_shape(shape, dtype)
            return reconstruct(np.ndarray if subtype is self.checked_array else subtype, shape, dtype, *args)

        return checked

    def find_class(self, module: str, name: str) -> Any:
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


# ---- the opcode scan ----------------------------------------------------------------------------------------
# What each opcode does to the values on the unpickler's stack, as far as their nesting goes. A container is one
# level deeper than its deepest item (a leaf is 0, `[]` is 1, `[[]]` is 2), as check_plain_structure counts.
(
    _NEW,
    _NEW_FROM_MARK,
    _FILL,
    _FILL_FROM_MARK,
    _STATE,
    _CALL,
    _MARK,
    _POP_MARK,
    _DUP,
    _PUT,
    _MEMOIZE,
    _GET,
    _STOP,
    _DROP,
    _OTHER,
) = range(15)
_KIND_OF = {
    # a new container holding the top n values (EMPTY_*: none)
    **dict.fromkeys(("EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_SET", "TUPLE1", "TUPLE2", "TUPLE3"), _NEW),
    # a new container (or instance) holding the values above the last mark
    **dict.fromkeys(("LIST", "TUPLE", "DICT", "FROZENSET", "INST", "OBJ"), _NEW_FROM_MARK),
    # the top n values go into the container below them
    **dict.fromkeys(("APPEND", "SETITEM"), _FILL),
    # the values above the last mark go into the container below it
    **dict.fromkeys(("APPENDS", "SETITEMS", "ADDITEMS"), _FILL_FROM_MARK),
    "BUILD": _STATE,  # what the state on top holds becomes the contents of the object below it
    # callable(*arguments): the result holds what the argument tuple holds, one level less deep than the tuple
    **dict.fromkeys(("REDUCE", "NEWOBJ", "NEWOBJ_EX"), _CALL),
    "MARK": _MARK,
    "POP_MARK": _POP_MARK,
    "DUP": _DUP,
    "MEMOIZE": _MEMOIZE,
    "STOP": _STOP,
    **dict.fromkeys(("PUT", "BINPUT", "LONG_BINPUT"), _PUT),
    **dict.fromkeys(("GET", "BINGET", "LONG_BINGET"), _GET),
}


def _plan(opcode: pickletools.OpcodeInfo) -> tuple[int, int]:
    """(kind, values it takes from the top of the stack) of an opcode. Those that work from a mark take what lies
    above it (and the *_FROM_MARK fillers the container below it), counted as they run. Every opcode not named in
    _KIND_OF makes a leaf, or a value as deep as the values it takes, and never reads below a mark."""
    kind = _KIND_OF.get(opcode.name, _OTHER)
    if kind in (_NEW_FROM_MARK, _FILL_FROM_MARK, _POP_MARK):
        return kind, 0
    if kind == _OTHER:
        assert pickletools.markobject not in opcode.stack_before and len(opcode.stack_after) <= 1, opcode.name
        if not opcode.stack_after:
            kind = _DROP
    return kind, len(opcode.stack_before)


_PLAN = {opcode.code: _plan(opcode) for opcode in pickletools.opcodes}


class _StreamProblem(Exception):
    """What the scan found, and the limit it exceeded (None: the stream is damaged)."""

    def __init__(self, problem: str, limit: Limit | None = None) -> None:
        super().__init__(problem)
        self.limit = limit


def _scan(data: bytes, max_depth: float, max_steps: float) -> None:
    """Replay the pickle's opcodes (pickletools.genops decodes them; nothing is built or called) on a stack of
    value numbers, keeping every value's nesting depth, so that a value nested deeper than `max_depth` is found
    before the unpickler builds (and hashes) it, and the number of opcodes is counted against `max_steps`
    before the memo, the marks or the stack can grow past it.

    The argument tuple of a call is one level deeper than what the call builds (`set([x])` is built from
    `([x],)`), so values may nest one level more than `max_depth` here; check_plain_structure holds what was
    built to the exact limit. Values are numbered so that the memo and DUP share them: a container filled after
    it was stored counts its new depth wherever it is fetched later (check_plain_structure still walks what was
    built, for containers filled after another took them, and for cycles)."""
    depths = array("q")  # the nesting depth of value number i
    stack = array("q")  # the numbers of the values on the unpickler's stack
    marks: list[int] = []  # the stack height at each open MARK
    memo: dict[int, int] = {}
    steps = 0
    allowed = max_depth + 1

    def push(depth: int, position: int | None) -> None:
        if depth > allowed:
            raise _StreamProblem(
                f"its data nests more than {max_depth:.0f} levels deep (at byte {position})", MAX_PICKLE_DEPTH
            )
        depths.append(depth)
        stack.append(len(depths) - 1)

    for opcode, arg, position in pickletools.genops(data):
        steps += 1
        if steps > max_steps:
            raise _StreamProblem(
                f"it takes more than {max_steps:,.0f} steps to build (at byte {position})", MAX_PICKLE_STEPS
            )
        kind, taken = _PLAN[opcode.code]
        floor = marks[-1] if marks else 0
        if len(stack) - floor < taken or (kind == _PUT and len(stack) == floor):
            raise _StreamProblem(f"{opcode.name} at byte {position} takes more values than the stack holds")
        if kind == _OTHER and not taken:  # a leaf: a number, a string, a class, ...
            depths.append(0)
            stack.append(len(depths) - 1)
        elif kind == _GET:
            if arg not in memo:
                raise _StreamProblem(
                    f"{opcode.name} at byte {position} fetches memo entry {arg}, which was never stored"
                )
            stack.append(memo[arg])
        elif kind == _PUT:
            assert isinstance(arg, int), opcode.name  # PUT, BINPUT, LONG_BINPUT: an index
            memo[arg] = stack[-1]
        elif kind == _MEMOIZE:
            memo[len(memo)] = stack[-1]
        elif kind == _MARK:
            marks.append(len(stack))
        elif kind == _DUP:
            stack.append(stack[-1])
        elif kind == _STOP:
            return
        elif kind == _DROP:  # POP; PROTO and FRAME take nothing
            del stack[len(stack) - taken :]
        elif kind in (_NEW_FROM_MARK, _FILL_FROM_MARK, _POP_MARK) and not marks:
            raise _StreamProblem(f"{opcode.name} at byte {position} has no mark to work from")
        elif kind == _POP_MARK:
            del stack[marks.pop() :]
        elif kind in (_FILL, _FILL_FROM_MARK, _STATE):
            start = marks.pop() if kind == _FILL_FROM_MARK else len(stack) - taken + 1
            if start - (marks[-1] if marks else 0) < 1:
                raise _StreamProblem(f"{opcode.name} at byte {position} has no container to fill")
            target = stack[start - 1]
            items = [depths[number] for number in stack[start:]]
            del stack[start:]
            if items:
                depth = max(items) - 1 if kind == _STATE else 1 + max(items)
                if depth > allowed:
                    raise _StreamProblem(
                        f"its data nests more than {max_depth:.0f} levels deep (at byte {position})", MAX_PICKLE_DEPTH
                    )
                depths[target] = max(depths[target], depth)
        else:  # a new value from values on the stack
            start = marks.pop() if kind == _NEW_FROM_MARK else len(stack) - taken
            items = [depths[number] for number in stack[start:]]
            del stack[start:]
            if kind == _CALL:  # the callable, then its argument tuple (NEWOBJ_EX: and a dict)
                push(max(items[0], max(items[1:]) - 1), position)
            elif kind == _OTHER:
                push(max(items), position)
            else:
                push(1 + max(items, default=0), position)


def check_pickle_stream(data: bytes, subject: str, error: type[ToolError]) -> None:
    """Refuse a pickle, before anything of it is built, whose values nest deeper than MAX_PICKLE_DEPTH or that
    takes more than MAX_PICKLE_STEPS opcodes (values, references, marks, memo entries) to build, or whose opcode
    stream is damaged; `error` names `subject` (a file, or a member of an archive), the problem and the limit."""
    try:
        _scan(data, MAX_PICKLE_DEPTH.value, MAX_PICKLE_STEPS.value)
    except _StreamProblem as exc:
        if exc.limit is None:
            raise error(f"{subject}: cannot be read as a pickle ({exc}); nothing of it was built.") from None
        raise error(
            f"{subject}: refused to load: {exc}, beyond the limit on {exc.limit.what}; nothing of it was "
            f"built. Raise {exc.limit.env} if the file is real."
        ) from None
    except Exception as exc:  # genops: unknown opcodes, truncated arguments, undecodable text, no STOP
        raise error(
            f"{subject}: cannot be read as a pickle ({type(exc).__name__}: {exc}); nothing of it was built."
        ) from None


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
            raise PickleFileError(
                f"{path}: holds a container that contains itself; a parameters pickle is plain data without cycles."
            )
        if id(item) in visited:
            continue
        if depth > depth_limit:
            raise PickleFileError(
                f"{path}: its data nests more than {depth_limit:.0f} levels deep; raise "
                f"{MAX_PICKLE_DEPTH.env} if that is real."
            )
        visited.add(id(item))
        on_path.add(id(item))
        stack.append((item, depth, True))
        stack.extend((child, depth + 1, False) for child in children)


def load_pickle(path: str | Path, trust: bool = False) -> Any:
    """Read a pickle with the restricted unpickler (or the plain one when `trust`), also Python-2 pickles.

    The file must be a regular file within MAX_PICKLE_BYTES; it is read into memory first, so that no length a
    pickle declares can make the reader allocate more than the file holds, and its opcodes are scanned for depth
    and steps (check_pickle_stream) before the unpickler builds anything. Errors are `PickleFileError`s naming
    the file and the problem; a refused class is named.
    """
    path = Path(path)
    size = regular_file_size(path, PickleFileError, "pickle file")
    MAX_PICKLE_BYTES.check(size, str(path), PickleFileError, "bytes")
    try:
        with open(path, "rb") as f:
            data = f.read(size + 1)
    except OSError as exc:
        raise PickleFileError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    check_pickle_stream(data, str(path), PickleFileError)
    try:
        unpickler = (pickle.Unpickler if trust else _RestrictedUnpickler)(io.BytesIO(data), encoding="latin1")
        value = unpickler.load()
    except _RefusedClass as exc:
        raise PickleFileError(
            f"{path}: refused to load: {exc}. Pass --trust-pickles only if you trust its origin."
        ) from exc
    except _TooLarge as exc:
        raise PickleFileError(f"{path}: refused to load: {exc}.") from exc
    except RecursionError:
        raise PickleFileError(f"{path}: its data nests too deeply to be read.") from None
    except Exception as exc:  # truncated or foreign files raise many types
        raise PickleFileError(f"{path}: cannot be read as a pickle ({type(exc).__name__}: {exc}).") from exc
    check_plain_structure(value, path)
    return value

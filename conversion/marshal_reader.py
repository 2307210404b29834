"""Read the constants and names of a marshalled Python code object as plain data, without unmarshalling it.

Keras stores a lambda activation as `marshal.dumps(code)` in base64. `marshal.loads` must not see untrusted
bytes (malformed input can crash the interpreter) and the code must never run; but which names the function
calls and which numbers it holds tell whether it is the activation the training record names. This reader
decodes marshal's tagged format into tuples, strings and numbers only. A code object's leading fields are
untagged integers whose count depends on the Python version that wrote it, so each known layout is tried and
the one that reads the whole buffer consistently is taken.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

FLAG_REF = 0x80
MAX_DEPTH = 64
MAX_BYTES = 1 << 20

# Python versions' code objects: untagged 4-byte fields before the tagged ones, the tagged fields, then where
# the untagged first-line number sits (index into the tagged list: it comes after that many tagged fields).
LAYOUTS = {
    "3.11+": (
        5,
        ("code", "consts", "names", "localsplusnames", "localspluskinds", "filename", "name", "qualname"),
        ("linetable", "exceptiontable"),
    ),
    "3.8-3.10": (6, ("code", "consts", "names", "varnames", "freevars", "cellvars", "filename", "name"), ("lnotab",)),
    "3.0-3.7": (5, ("code", "consts", "names", "varnames", "freevars", "cellvars", "filename", "name"), ("lnotab",)),
    "2.x": (4, ("code", "consts", "names", "varnames", "freevars", "cellvars", "filename", "name"), ("lnotab",)),
}


class Unreadable(ValueError):
    """Not a marshalled code object this reader understands."""


@dataclass
class CodeFacts:
    """What a code object (and the code objects among its constants) holds: referenced names, numbers."""

    names: set[str] = field(default_factory=set)
    numbers: list[float] = field(default_factory=list)


@dataclass
class _Code:
    fields: dict[str, Any]


class _Reader:
    def __init__(self, data: bytes, layout: tuple[int, tuple[str, ...], tuple[str, ...]]):
        self.data, self.position, self.layout = data, 0, layout
        self.refs: list[Any] = []

    def take(self, count: int) -> bytes:
        if self.position + count > len(self.data):
            raise Unreadable("truncated")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def long(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def size(self) -> int:
        value = self.long()
        if value < 0 or value > len(self.data):
            raise Unreadable("a size beyond the buffer")
        return value

    def object(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise Unreadable("nested too deeply")
        tag = self.take(1)[0]
        kind, is_ref = chr(tag & ~FLAG_REF), bool(tag & FLAG_REF)
        if kind == "r":
            index = self.long()
            if not 0 <= index < len(self.refs):
                raise Unreadable("a reference to nothing")
            return self.refs[index]
        slot = len(self.refs)
        if is_ref:
            self.refs.append(None)
        value = self._value(kind, depth)
        if is_ref:
            self.refs[slot] = value
        return value

    def _value(self, kind: str, depth: int) -> Any:
        simple = {"0": None, "N": None, "F": False, "T": True, "S": StopIteration, ".": Ellipsis}
        if kind in simple:
            return simple[kind]
        if kind == "i":
            return self.long()
        if kind == "l":
            digits = self.long()
            if abs(digits) > 1000:
                raise Unreadable("an integer too long")
            value = sum(struct.unpack("<H", self.take(2))[0] << (15 * i) for i in range(abs(digits)))
            return -value if digits < 0 else value
        if kind == "g":
            return struct.unpack("<d", self.take(8))[0]
        if kind == "y":
            return complex(*struct.unpack("<dd", self.take(16)))
        if kind in "fx":
            parts = [float(self.take(self.take(1)[0])) for _ in range(1 if kind == "f" else 2)]
            return parts[0] if kind == "f" else complex(*parts)
        if kind in "stuaA":
            raw = self.take(self.size())
            return raw if kind == "s" else raw.decode("utf-8", "replace")
        if kind in "zZ":
            return self.take(self.take(1)[0]).decode("ascii", "replace")
        if kind == ")":
            return tuple(self.object(depth + 1) for _ in range(self.take(1)[0]))
        if kind in "([<>":
            return tuple(self.object(depth + 1) for _ in range(self.size()))
        if kind == "{":
            items = []
            while self.data[self.position : self.position + 1] != b"0":
                items.append((self.object(depth + 1), self.object(depth + 1)))
            self.take(1)
            return tuple(items)
        if kind == "c":
            return self._code(depth)
        raise Unreadable(f"marshal type {kind!r}")

    def _code(self, depth: int) -> _Code:
        untagged, before_line, after_line = self.layout
        for _ in range(untagged):
            self.long()
        fields = {name: self.object(depth + 1) for name in before_line}
        self.long()  # the first line number
        fields.update({name: self.object(depth + 1) for name in after_line})
        if not (
            isinstance(fields["code"], bytes)
            and isinstance(fields["consts"], tuple)
            and isinstance(fields["names"], tuple)
            and all(isinstance(n, str) for n in fields["names"])
        ):
            raise Unreadable("fields of the wrong types for this layout")
        return _Code(fields)


def _facts(code: _Code, facts: CodeFacts) -> CodeFacts:
    facts.names.update(code.fields["names"])
    for constant in code.fields["consts"]:
        if isinstance(constant, _Code):
            _facts(constant, facts)
        elif isinstance(constant, (int, float)) and not isinstance(constant, bool):
            facts.numbers.append(float(constant))
    return facts


def code_facts(data: bytes) -> CodeFacts:
    """The names and numeric constants of the marshalled code object `data`; Unreadable when no layout fits."""
    if len(data) > MAX_BYTES:
        raise Unreadable("too large for a lambda")
    for layout in LAYOUTS.values():
        reader = _Reader(data, layout)
        try:
            top = reader.object()
        except (Unreadable, struct.error, ValueError, UnicodeError):
            continue
        if isinstance(top, _Code) and reader.position == len(data):
            return _facts(top, CodeFacts())
    raise Unreadable("no known code-object layout reads it")

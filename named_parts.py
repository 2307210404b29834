"""Parts chosen by name: samplers, rate bounds, moving segments, objective terms, layer converters.

A registry maps the name a config (or a Keras file) uses to the part; each name is registered once, and a
second registration of a name is refused unless it asks to replace the first (so that a plug-in cannot shadow a
built-in part by accident).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what
        self._parts: dict[str, T] = {}

    def add(self, name: str, part: T, replace: bool = False) -> T:
        if name in self._parts and not replace:
            raise ValueError(f"{self.what} {name!r} is registered already; pass replace=True to replace it")
        self._parts[name] = part
        return part

    def register(self, name: str, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda part: self.add(name, part, replace)

    def get(self, name: str) -> T | None:
        return self._parts.get(name)

    def __getitem__(self, name: str) -> T:
        try:
            return self._parts[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self._parts))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

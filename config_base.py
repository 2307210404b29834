"""The base of every config section (a pydantic model in which an unknown key is an error, not ignored) and the
bounds the sections share."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from limits import MAX_INPUT_LENGTH

SEED_END = 2**63  # seeds are 0 <= s < 2**63 (what numpy's and torch's generators take)
COUNT_END = 10**9  # iteration and trial counts: anything a run could finish
LONGEST = int(MAX_INPUT_LENGTH.value)  # time steps; durations and times within a pattern stay below


def _takes_booleans(annotation: Any) -> bool:
    """Whether true/false is a value of this type itself (not a number that pydantic would make of it)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Annotated:
        return _takes_booleans(args[0])
    if origin in (Union, types.UnionType):
        return any(_takes_booleans(arg) for arg in args)
    if origin is Literal:
        return any(isinstance(arg, bool) for arg in args)
    return annotation is bool or annotation is Any or origin is not None and origin not in (list, tuple)


def _takes_numbers(annotation: Any) -> bool:
    """Whether pydantic would turn true/false into a number for this type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Annotated:
        return _takes_numbers(args[0])
    if origin in (Union, types.UnionType):
        return any(_takes_numbers(arg) for arg in args)
    return annotation in (int, float)


def _item_types(annotation: Any) -> list[Any]:
    """The types of the items of the list or tuple forms of this type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Annotated:
        return _item_types(args[0])
    if origin in (Union, types.UnionType):
        return [item for arg in args for item in _item_types(arg)]
    return [arg for arg in args if arg is not Ellipsis] if origin in (list, tuple) else []


def boolean_as_number(value: Any, annotation: Any) -> bool:
    """true/false where only numbers (or other non-booleans) belong, at the top or inside lists: pydantic would
    take it as 1 or 0 without a word (`seed: true`, `segments: [true, 2]`)."""
    if isinstance(value, bool):
        return _takes_numbers(annotation) and not _takes_booleans(annotation)
    if isinstance(value, (list, tuple)):
        items = _item_types(annotation)
        return bool(items) and any(all(boolean_as_number(element, item) for item in items) for element in value)
    return False


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a NaN tolerance compares false forever

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name] if info.field_name else None
        if field is not None and boolean_as_number(value, field.annotation):
            raise ValueError("true/false is not a number (it would be read as 1 or 0); write the number")
        return value

    @model_validator(mode="before")
    @classmethod
    def _subsections_keep_their_defaults(cls, data: Any) -> Any:
        """A subsection given in part keeps the rest of its default: a default the parent builds (a synapse's
        kinetics) has no values of the subsection's own to fall back on."""
        if not isinstance(data, dict):
            return data
        completed = dict(data)
        for name, field in cls.model_fields.items():
            given = data.get(name)
            kind = field.annotation
            if isinstance(given, dict) and isinstance(kind, type) and issubclass(kind, Section):
                default = field.get_default(call_default_factory=True)
                if isinstance(default, Section):
                    completed[name] = {**default.model_dump(exclude_unset=True), **given}
        return completed

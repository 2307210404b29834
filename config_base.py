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


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a type, Annotated and unions unwrapped: `Optional[Annotated[int, ...]]` -> [int, None]."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Annotated:
        return _members(args[0])
    if origin in (Union, types.UnionType):
        return [member for arg in args for member in _members(arg)]
    return [annotation]


def _is_boolean_form(member: Any) -> bool:
    return (
        member is bool
        or member is Any
        or get_origin(member) is Literal
        and any(isinstance(arg, bool) for arg in get_args(member))
    )


def boolean_as_number(value: Any, annotation: Any) -> bool:
    """true/false where a number belongs and no boolean does, at the top or inside lists: pydantic would take it
    as 1 or 0 without a word (`seed: true`, `segments: [true, 2]`)."""
    members = _members(annotation)
    if isinstance(value, bool):
        return any(member in (int, float) for member in members) and not any(map(_is_boolean_form, members))
    if isinstance(value, (list, tuple)):
        items = [
            arg
            for member in members
            if get_origin(member) in (list, tuple)
            for arg in get_args(member)
            if arg is not Ellipsis
        ]
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

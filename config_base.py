"""The base of every config section (a pydantic model in which an unknown key is an error, not ignored) and the
bounds the sections share."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from limits import MAX_INPUT_LENGTH

SEED_END = 2**63  # seeds are 0 <= s < 2**63 (what numpy's and torch's generators take)
COUNT_END = 10**9  # iteration and trial counts: anything a run could finish
LONGEST = int(MAX_INPUT_LENGTH.value)  # time steps; durations and times within a pattern stay below


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a NaN tolerance compares false forever

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

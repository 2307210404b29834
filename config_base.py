"""The base of every config section (a pydantic model in which an unknown key is an error, not ignored) and the
bounds the sections share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from limits import MAX_INPUT_LENGTH

SEED_END = 2**63  # seeds are 0 <= s < 2**63 (what numpy's and torch's generators take)
COUNT_END = 10**9  # iteration and trial counts: anything a run could finish
LONGEST = int(MAX_INPUT_LENGTH.value)  # time steps; durations and times within a pattern stay below


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a NaN tolerance compares false forever

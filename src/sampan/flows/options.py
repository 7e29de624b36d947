"""The base of every step's and endpoint's options model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Unknown keys are errors: a typo in a step is caught when the config loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

"""Configuration of the node's state store."""

from __future__ import annotations

import re
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from sampan.store.factory import STORE_SCHEMES
from sampan.units import Duration, describe_value

_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class StoreConfig(BaseModel):
    """Where stateful flow steps (aggregator, idempotent receiver, ...) keep their state."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description="State store URL: `sqlite:///path/state.db` (default: `state.db` in the"
        " data directory), `redis://host:6379/0` (`rediss://` for TLS),"
        " `postgresql://user@host/db`, or `memory://` (tests only: lost on exit).",
    )
    purge_interval: Duration = Field(
        60.0,
        gt=0,
        description="How often expired keys are deleted from the store (reads never return"
        " them in the meantime; this only reclaims space).",
    )

    @field_validator("url")
    @classmethod
    def _check_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        allowed = ", ".join(STORE_SCHEMES)
        match = _SCHEME_RE.match(value)
        if match is None:
            raise PydanticCustomError(
                "store_url",
                "must be a URL like 'postgresql://user@host/db' (scheme one of: {allowed}),"
                " got {value}",
                {"allowed": allowed, "value": describe_value(value)},
            )
        if match.group(1).lower() not in STORE_SCHEMES:
            raise PydanticCustomError(
                "store_url_scheme",
                "unsupported scheme '{scheme}' (expected one of: {allowed})",
                {"scheme": match.group(1), "allowed": allowed},
            )
        return value

"""Fault injection per route: add delay to, or abort, a share of requests on purpose, to
check that callers' timeouts, retries and fallbacks really work (chaos testing).

Order: the delay is applied first, then the abort (a request can get both). Each fault
fires for ``percent`` % of requests, drawn independently.

The header trigger (``allow_header_trigger: true``, default false): a request carrying
``x-sampan-fault: abort`` or ``x-sampan-fault: delay`` (or both, comma-separated) gets
that configured fault whatever its percent, which lets a game day target chosen requests
(one test client, one tenant) with ``percent: 0`` for everyone else. A header naming a
fault that is not configured does nothing. Off by default because anyone able to send the
header could then degrade the route; with it off the header is ignored.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response, problem
from sampan.units import Duration

__all__ = ["FAULT_HEADER", "FaultAbort", "FaultConfig", "FaultDelay", "FaultInjector"]

FAULT_HEADER: Final = b"x-sampan-fault"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class FaultDelay(_Section):
    fixed: Duration = Field(description="Added latency, e.g. '200ms' or '2s'.")
    percent: float = Field(100.0, ge=0, le=100, description="Share of requests delayed (%).")


class FaultAbort(_Section):
    status: int = Field(ge=400, le=599, description="Status answered instead of forwarding.")
    percent: float = Field(100.0, ge=0, le=100, description="Share of requests aborted (%).")


class FaultConfig(_Section):
    delay: FaultDelay | None = Field(None, description="Delay some requests.")
    abort: FaultAbort | None = Field(None, description="Answer some requests with an error.")
    allow_header_trigger: bool = Field(
        False,
        description="Let a request force a configured fault with 'x-sampan-fault: abort' "
        "or 'delay' (game days). Anyone who can send the header can degrade the route.",
    )


class FaultInjector:
    __slots__ = ("_rng", "_sleep", "aborts", "config", "delays")

    def __init__(
        self,
        config: FaultConfig,
        rng: random.Random | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self.delays = 0
        self.aborts = 0

    async def apply(self, request: Request) -> Response | None:
        """Delay the request and/or return the abort response (None: carry on)."""
        forced = self._forced(request.headers)
        delay = self.config.delay
        if delay is not None and ("delay" in forced or self._hit(delay.percent)):
            self.delays += 1
            await self._sleep(delay.fixed)
        abort = self.config.abort
        if abort is not None and ("abort" in forced or self._hit(abort.percent)):
            self.aborts += 1
            return _abort_response(abort.status)
        return None

    def _forced(self, headers: Headers) -> frozenset[str]:
        if not self.config.allow_header_trigger:
            return frozenset()
        names: set[str] = set()
        for value in headers.get_all(FAULT_HEADER):
            for part in value.split(b","):
                names.add(part.strip().lower().decode("latin-1"))
        return frozenset(names)

    def _hit(self, percent: float) -> bool:
        if percent <= 0:
            return False
        return percent >= 100 or self._rng.random() * 100 < percent


def _abort_response(status: int) -> Response:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Injected fault"
    headers = Headers()
    headers.set(FAULT_HEADER, b"abort")
    return problem(
        status,
        title,
        "This response was injected by the route's fault configuration.",
        headers=headers,
        fault="abort",
    )

"""Throttler: at most ``rate`` messages per ``per`` go on; the others wait for the next
window (they are delayed, not dropped). Counters live in the state store, so nodes that
share a Redis or PostgreSQL store share the limit."""

from __future__ import annotations

import asyncio
import time

import orjson
from pydantic import Field

from sampan.flows.expressions import Expression, evaluator
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind
from sampan.units import Duration


class ThrottleOptions(Options):
    rate: int = Field(ge=1, description="Messages allowed per window.")
    per: Duration = Field(1.0, gt=0, description="Window length.")
    key: Expression | None = Field(
        None, description="JMESPath giving a separate limit per value (e.g. per customer)."
    )


class ThrottleStep(Step):
    def __init__(self, options: ThrottleOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._rate = options.rate
        self._per = options.per
        self._key = evaluator(options.key) if options.key is not None else None
        self._store = ctx.endpoint.store
        self._namespace = ctx.namespace

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        scope = ""
        if self._key is not None:
            value = self._key(message)
            scope = value if isinstance(value, str) else orjson.dumps(value).decode()
        while True:
            now = time.time()
            window = int(now // self._per)
            count = await self._store.incr(
                self._namespace, f"{scope}:{window}", 1, ttl=self._per * 2
            )
            if count <= self._rate:
                return [message]
            await asyncio.sleep((window + 1) * self._per - now)


KIND = StepKind(
    "throttle",
    ThrottleOptions,
    ThrottleStep,
    "Let at most `rate` messages per `per` go on; the rest wait (shared through the store).",
    {"rate": 100, "per": "1s"},
)

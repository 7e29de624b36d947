"""Idempotent receiver: a message whose key was already seen (within ``ttl``) is dropped.

The key is claimed in the state store with the message's origin as its value, and given up
again if the rest of the flow fails, so a retried or redriven message is not mistaken for a
duplicate of itself; after a crash the redelivered message finds its own origin and goes on.
"""

from __future__ import annotations

import logging

import orjson
from pydantic import Field

from sampan.flows.errors import InvalidMessage
from sampan.flows.expressions import Expression, evaluator
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind
from sampan.units import Duration

log = logging.getLogger("sampan.flows.dedupe")


class DedupeOptions(Options):
    key: Expression = Field(description="JMESPath giving the identity of a message.")
    ttl: Duration = Field(86400.0, gt=0, description="How long a key is remembered.")


class DedupeStep(Step):
    def __init__(self, options: DedupeOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._key = evaluator(options.key)
        self._ttl = options.ttl
        self._store = ctx.endpoint.store
        self._namespace = ctx.namespace
        self._resume = ctx.resume
        self._duplicates = ctx.endpoint.metrics.counter(
            "sampan_flow_duplicates",
            "Messages dropped by an idempotent receiver.",
            flow=ctx.endpoint.flow,
            step=ctx.label,
        )

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        value = self._key(message)
        if value is None:
            raise InvalidMessage("the dedupe key expression gave null")
        key = value if isinstance(value, str) else orjson.dumps(value).decode()
        mine = (message.origin or key).encode()
        claimed = await self._store.put_if_absent(self._namespace, key, mine, self._ttl)
        if not claimed and await self._store.get(self._namespace, key) != mine:
            self._duplicates.inc()
            log.debug("%s: dropped duplicate %r", self.label, key)
            return []
        try:
            await self._resume([message])
        except BaseException:
            if await self._store.get(self._namespace, key) == mine:
                await self._store.delete(self._namespace, key)
            raise
        return []


KIND = StepKind(
    "dedupe",
    DedupeOptions,
    DedupeStep,
    "Drop messages whose key was already seen (idempotent receiver), state in the store.",
    {"key": "data.order_id", "ttl": "24h"},
)

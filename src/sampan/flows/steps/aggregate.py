"""Aggregator: collect messages with the same correlation into one, completing on a size,
a timeout or a predicate.

Every message is stored in the node's state store before its source is acked, and a group
is removed only after its aggregate has gone through the rest of the flow, so a crash at
any point loses no group: the redelivered message is not counted twice (members are keyed
by their origin), and a group that was complete when the node died completes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import Field, model_validator

from sampan.flows.errors import InvalidMessage
from sampan.flows.expressions import Expression, evaluator, is_truthy, searcher
from sampan.flows.keyed_locks import KeyedLocks
from sampan.flows.message import FlowMessage
from sampan.flows.message_codec import decode_message, encode_message
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind
from sampan.units import Duration

log = logging.getLogger("sampan.flows.aggregate")

HEADER_CORRELATION = "flow-correlation"
HEADER_SIZE = "flow-aggregate-size"
HEADER_COMPLETED_BY = "flow-aggregate-completed-by"


class AggregateOptions(Options):
    correlation: Expression = Field(description="JMESPath giving the group of each message.")
    size: int | None = Field(None, ge=1, description="Complete a group at this many messages.")
    timeout: Duration | None = Field(
        None, gt=0, description="Complete a group this long after its first message."
    )
    complete_when: Expression | None = Field(
        None,
        description="JMESPath predicate over `{data: [payloads...], size: n}`; true completes.",
    )

    @model_validator(mode="after")
    def _some_completion(self) -> AggregateOptions:
        if self.size is None and self.timeout is None and self.complete_when is None:
            raise ValueError("give at least one of size, timeout or complete_when")
        return self


class AggregateStep(Step):
    def __init__(self, options: AggregateOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._options = options
        self._store = ctx.endpoint.store
        self._namespace = ctx.namespace
        self._resume = ctx.resume
        self._correlation = evaluator(options.correlation)
        self._complete_when: Callable[[Any], Any] | None = (
            searcher(options.complete_when) if options.complete_when else None
        )
        self._locks = KeyedLocks()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Groups left complete by a crash, and timeouts, are both found by the sweep.
        interval = min(1.0, self._options.timeout / 4) if self._options.timeout else 5.0
        self._sweeper = asyncio.create_task(self._sweep(interval), name=f"sweep:{self.label}")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        correlation = self._correlation(message)
        if correlation is None:
            raise InvalidMessage("the correlation expression gave null")
        group = correlation if isinstance(correlation, str) else str(correlation)
        member = message.origin or f"{time.time_ns()}"
        async with self._locks.hold(group):
            summary = await self._store.group_add(
                self._namespace, group, member, encode_message(message)
            )
            if self._options.size is not None and summary.count >= self._options.size:
                await self._complete(group, "size")
            elif self._complete_when is not None:
                members = await self._store.group_members(self._namespace, group)
                payloads = [decode_message(value).data for _, value in members]
                if is_truthy(self._complete_when({"data": payloads, "size": len(members)})):
                    await self._complete(group, "predicate", members)
        return []  # the aggregate went on through ``resume``

    async def _complete(
        self,
        group: str,
        reason: str,
        members: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if members is None:
            members = await self._store.group_members(self._namespace, group)
        if not members:
            return
        messages = [decode_message(value) for _, value in members]
        first = messages[0]
        aggregate = FlowMessage(
            [message.data for message in messages],
            headers={
                **first.headers,
                HEADER_CORRELATION: group,
                HEADER_SIZE: str(len(messages)),
                HEADER_COMPLETED_BY: reason,
            },
            key=first.key,
            origin=f"aggregate:{group}",
        )
        await self._resume([aggregate])
        await self._store.group_remove(self._namespace, group, [member for member, _ in members])

    async def _sweep(self, interval: float) -> None:
        timeout = self._options.timeout
        while True:
            await asyncio.sleep(interval)
            try:
                for summary in await self._store.groups(self._namespace):
                    due = timeout is not None and summary.first_at + timeout <= time.time()
                    full = self._options.size is not None and summary.count >= self._options.size
                    if not (due or full):
                        continue
                    async with self._locks.hold(summary.group):
                        await self._complete(summary.group, "timeout" if due else "size")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: completing groups failed; trying again", self.label)


KIND = StepKind(
    "aggregate",
    AggregateOptions,
    AggregateStep,
    "Combine messages with the same correlation into one list (size, timeout or predicate).",
    {"correlation": "data.order_id", "size": 3, "timeout": "30s"},
)

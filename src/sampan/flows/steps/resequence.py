"""Resequencer: put messages back in the order of a sequence number carried in them.

A message ahead of its turn is buffered in the state store (so a crash loses none); when
the missing one arrives, it and every buffered successor go on in order. If a gap is not
filled within ``timeout``, the sequence skips to the lowest buffered number. Messages older
than the current position are late duplicates and are dropped (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from pydantic import Field

from sampan.flows.errors import InvalidMessage
from sampan.flows.expressions import Expression, evaluator
from sampan.flows.keyed_locks import KeyedLocks
from sampan.flows.message import FlowMessage
from sampan.flows.message_codec import decode_message, encode_message
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind
from sampan.units import Duration

log = logging.getLogger("sampan.flows.resequence")

_WIDTH = 20  # members are zero-padded sequence numbers


class ResequenceOptions(Options):
    sequence: Expression = Field(description="JMESPath giving the message's sequence number.")
    correlation: Expression | None = Field(
        None, description="JMESPath giving independent sequences (e.g. per order)."
    )
    start: int = Field(1, ge=0, description="The first sequence number of every sequence.")
    timeout: Duration = Field(5.0, gt=0, description="How long a gap is waited for.")


class ResequenceStep(Step):
    def __init__(self, options: ResequenceOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._sequence = evaluator(options.sequence)
        self._correlation = (
            evaluator(options.correlation) if options.correlation is not None else None
        )
        self._start = options.start
        self._timeout = options.timeout
        self._store = ctx.endpoint.store
        self._buffer = ctx.namespace
        self._positions = ctx.namespace + ":next"
        self._resume = ctx.resume
        self._locks = KeyedLocks()
        self._sweeper: asyncio.Task[None] | None = None
        self._late = ctx.endpoint.metrics.counter(
            "sampan_flow_late_dropped",
            "Messages a resequencer dropped as older than its position.",
            flow=ctx.endpoint.flow,
            step=ctx.label,
        )

    async def start(self) -> None:
        interval = min(1.0, self._timeout / 4)
        self._sweeper = asyncio.create_task(self._sweep(interval), name=f"sweep:{self.label}")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        number = self._sequence(message)
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise InvalidMessage(f"sequence number must be a non-negative integer, got {number!r}")
        group = ""
        if self._correlation is not None:
            value = self._correlation(message)
            group = value if isinstance(value, str) else orjson.dumps(value).decode()
        async with self._locks.hold(group):
            position = await self._position(group)
            if number < position:
                self._late.inc()
                log.info("%s: dropped late message %d (at %d)", self.label, number, position)
                return []
            if number > position:
                await self._store.group_add(
                    self._buffer, group, f"{number:0{_WIDTH}d}", encode_message(message)
                )
                return []
            await self._resume([message])
            await self._set_position(group, position + 1)
            await self._drain(group, position + 1)
        return []

    async def _position(self, group: str) -> int:
        stored = await self._store.get(self._positions, group)
        return int(stored) if stored is not None else self._start

    async def _set_position(self, group: str, position: int) -> None:
        await self._store.put(self._positions, group, str(position).encode())

    async def _drain(self, group: str, position: int) -> None:
        for member, value in sorted(await self._store.group_members(self._buffer, group)):
            number = int(member)
            if number > position:
                return
            if number == position:
                await self._resume([decode_message(value)])
                position += 1
                await self._set_position(group, position)
            await self._store.group_remove(self._buffer, group, [member])

    async def _sweep(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                for summary in await self._store.groups(self._buffer):
                    if summary.first_at + self._timeout > time.time():
                        continue
                    async with self._locks.hold(summary.group):
                        members = await self._store.group_members(self._buffer, summary.group)
                        if not members:
                            continue
                        lowest = int(min(member for member, _ in members))
                        log.warning(
                            "%s: gap before %d not filled in %.1fs; skipping to it",
                            self.label,
                            lowest,
                            self._timeout,
                        )
                        await self._set_position(summary.group, lowest)
                        await self._drain(summary.group, lowest)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: releasing buffered messages failed; trying again", self.label)


KIND = StepKind(
    "resequence",
    ResequenceOptions,
    ResequenceStep,
    "Restore the order of messages by a sequence number (buffered in the store).",
    {"sequence": "data.seq", "correlation": "data.order_id", "timeout": "5s"},
)

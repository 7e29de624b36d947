"""The firing loop timer and cron share: wait for the next scheduled instant, emit it.

Ticks are instants computed from the schedule alone (not from when a node started), so every
node running the flow computes the same instants; the dedupe key ``<flow>:<instant>`` then
makes the bus keep one message per tick however many nodes fire it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sampan.bus.base import OutgoingMessage
from sampan.flows.connectors._support import Backoff, cancel_task, log, wait_or_stop
from sampan.flows.endpoint import Emit, EndpointContext, Source
from sampan.flows.message import encode_payload

HEADER_FIRED_AT = "flow-fired-at"
_MAX_SLEEP = 30.0
"""Sleep in slices so a wall-clock jump (NTP step, suspend) delays a tick by at most this."""


def iso(instant: float) -> str:
    """ISO 8601 in UTC with milliseconds: ``2025-01-31T08:00:00.000+00:00``."""
    return datetime.fromtimestamp(instant, UTC).isoformat(timespec="milliseconds")


def tick_message(flow: str, instant: float, body: Any) -> OutgoingMessage:
    """The message for one tick; identical on every node, so the dedupe keeps one."""
    fired_at = iso(instant)
    payload = {"fired_at": fired_at} if body is None else body
    return OutgoingMessage(
        encode_payload(payload),
        headers={HEADER_FIRED_AT: fired_at},
        dedupe_key=f"{flow}:{fired_at}",
    )


class ScheduleSource(Source):
    """Fires at ``next_after(t)`` instants (unix seconds). A tick whose emit keeps failing is
    retried with backoff until the following tick is due, then logged as missed; ticks that
    fall while no node runs are not fired afterwards."""

    def __init__(
        self,
        ctx: EndpointContext,
        next_after: Callable[[float], float],
        body: Any,
        what: str,
    ) -> None:
        self._ctx = ctx
        self._next_after = next_after
        self._body = body
        self._what = what
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        labels = {"flow": ctx.flow}
        self._fired = ctx.metrics.counter(
            "sampan_flow_schedule_fired", "Schedule ticks emitted.", **labels
        )
        self._missed = ctx.metrics.counter(
            "sampan_flow_schedule_missed", "Schedule ticks not emitted in time.", **labels
        )

    async def start(self, emit: Emit) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(emit), name=f"{self._what}:{self._ctx.flow}")

    async def stop(self) -> None:
        self._stop.set()
        await cancel_task(self._task)
        self._task = None

    async def _run(self, emit: Emit) -> None:
        instant = self._next_after(time.time())
        while not self._stop.is_set():
            while (delay := instant - time.time()) > 0:
                if await wait_or_stop(self._stop, min(delay, _MAX_SLEEP)):
                    return
            following = self._next_after(instant)
            await self._fire(emit, instant, following)
            # After a long stall (suspend) skip to the first tick still ahead, not a burst.
            instant = following
            now = time.time()
            if instant <= now:
                skipped_to = self._next_after(now)
                log.warning(
                    "%s of flow %r is behind; skipping ticks up to %s",
                    self._what,
                    self._ctx.flow,
                    iso(skipped_to),
                )
                instant = skipped_to

    async def _fire(self, emit: Emit, instant: float, following: float) -> None:
        message = tick_message(self._ctx.flow, instant, self._body)
        backoff = Backoff(maximum=10.0)
        while True:
            try:
                await emit([message])
            except Exception as exc:
                if time.time() + 0.5 >= following or self._stop.is_set():
                    self._missed.inc()
                    log.error(
                        "%s of flow %r: tick %s not emitted: %s",
                        self._what,
                        self._ctx.flow,
                        iso(instant),
                        exc,
                    )
                    return
                log.warning(
                    "%s of flow %r: emitting tick %s failed, retrying: %s",
                    self._what,
                    self._ctx.flow,
                    iso(instant),
                    exc,
                )
                await backoff.wait(self._stop)
                continue
            self._fired.inc()
            return

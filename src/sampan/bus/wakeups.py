"""Per-topic wake-ups so an idle consumer reacts to an in-process publish without polling."""

from __future__ import annotations

import asyncio
import contextlib


class Wakeups:
    """Waiters take the current event of a topic *before* they look for work, then wait on it;
    a wake sets that event and starts a fresh one, so no wake between the look and the wait
    is lost."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def waiter(self, topic: str) -> asyncio.Event:
        event = self._events.get(topic)
        if event is None:
            event = self._events[topic] = asyncio.Event()
        return event

    def wake(self, topic: str) -> None:
        event = self._events.pop(topic, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for topic in list(self._events):
            self.wake(topic)

    @staticmethod
    async def wait(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()

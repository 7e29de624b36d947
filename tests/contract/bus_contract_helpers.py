"""Shared pieces of the Bus contract suite: the backends under test and polling helpers.

Adding a backend is one line in ``BACKENDS``; the fixtures in ``conftest.py`` do the rest.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from sampan.bus.base import Bus, Delivery


@dataclass(frozen=True)
class Backend:
    """One bus backend the contract runs against.

    ``url`` may contain ``{tmp}`` (the test's private directory). ``reopen`` says that a new bus
    opened on the same URL after ``close()`` sees the old data (false for ``memory://``).
    """

    name: str
    url: str
    reopen: bool
    marks: tuple[Any, ...] = ()
    exact_retention: bool = True
    """``enforce_retention()`` alone deletes messages, counts payload bytes and keeps messages
    in flight (false for NATS JetStream, whose server enforces ``max_age``/``max_bytes`` by
    itself, continuously, counting subject and header overhead, and never keeps a message a
    consumer still holds). conftest.py skips ``EXACT_RETENTION_TESTS`` without it."""
    shared_server: bool = False
    """Topics live on a server shared by test runs: conftest.py deletes the ones a test made."""


# Tests that check the embedded engine's exact retention accounting (see ``exact_retention``),
# with why a backend without it cannot pass them.
EXACT_RETENTION_TESTS = {
    "test_retention_by_age_removes_old_messages": (
        "the server expires messages past max_age by itself, so enforce_retention() has "
        "nothing left to count, and TopicInfo.bytes includes subject and header overhead"
    ),
    "test_retention_by_size_keeps_the_newest_messages": (
        "the server counts subject and header overhead against max_bytes, so a 100-byte "
        "limit does not keep exactly three 30-byte payloads"
    ),
    "test_retention_keeps_messages_in_flight": (
        "limits retention drops expired messages even while a group still holds them "
        "(a held-back message is still delivered from the client, but the stream no longer "
        "counts it)"
    ),
}


BACKENDS = [
    Backend("sqlite", "sqlite:///{tmp}/bus.db", reopen=True),
    Backend("memory", "memory://", reopen=False),
    Backend(
        "nats",
        "nats://127.0.0.1:4222",
        reopen=True,
        marks=(pytest.mark.nats,),
        exact_retention=False,
        shared_server=True,
    ),
    # Each test gets its own key prefix (its tmp dir); the ``_redis_cleanup`` fixture in
    # conftest.py deletes the test's keys afterwards.
    Backend(
        "redis",
        "redis://127.0.0.1:6379/0?prefix=sampan-test:{tmp}",
        reopen=True,
        marks=(pytest.mark.redis,),
    ),
]

BACKEND_PARAMS = [pytest.param(b, id=b.name, marks=b.marks) for b in BACKENDS]


def unique(prefix: str = "t") -> str:
    """A topic or group name no other test (or test run on a shared server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 5.0,
    interval: float = 0.01,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` (sync or async) until it is true; fail the test after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {within}s waiting for {message}")
        await asyncio.sleep(interval)


async def fetch_until(
    bus: Bus,
    topic: str,
    group: str,
    *,
    count: int = 1,
    consumer: str = "c1",
    lease_seconds: float = 10.0,
    within: float = 3.0,
    max_messages: int = 100,
) -> list[Delivery]:
    """Fetch repeatedly until at least ``count`` deliveries arrived; fail after ``within``."""
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"got {len(got)} of {count} deliveries from {topic}/{group}: {got}")
        got += await bus.fetch(
            topic,
            group,
            consumer=consumer,
            max_messages=max_messages,
            lease_seconds=lease_seconds,
            wait_seconds=min(0.05, remaining),
        )
    return got


async def fetch_nothing_for(
    bus: Bus,
    topic: str,
    group: str,
    seconds: float,
    *,
    consumer: str = "c1",
    lease_seconds: float = 10.0,
) -> None:
    """Assert that the group gets no delivery for ``seconds``."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        got = await bus.fetch(
            topic,
            group,
            consumer=consumer,
            max_messages=100,
            lease_seconds=lease_seconds,
            wait_seconds=min(0.05, remaining),
        )
        assert got == [], f"expected no delivery from {topic}/{group}, got {got}"


def offsets(deliveries: list[Delivery]) -> list[int]:
    return [d.offset for d in deliveries]

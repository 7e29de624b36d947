"""The Bus interface every backend implements (embedded SQLite, NATS JetStream, Redis Streams).

The interface is deliberately low level (publish, fetch with a lease, ack/nack/release/extend)
so that the consumer runner in ``consumer.py`` — per-key ordering, concurrency, retries,
graceful stop — is written once and behaves the same on every backend.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sampan.bus.retry import RetryPolicy
from sampan.observe.metrics import Metrics

if TYPE_CHECKING:
    from sampan.bus.consumer import Consumer, ConsumerOptions

log = logging.getLogger("sampan.bus")

StartPosition = Literal["earliest", "latest"]

DLQ_SUFFIX = ".dlq"

# Header names the bus itself writes; user headers must not start with "sampan-".
HEADER_DLQ_ERROR = "sampan-dlq-error"
HEADER_DLQ_ATTEMPTS = "sampan-dlq-attempts"
HEADER_DLQ_TOPIC = "sampan-dlq-topic"
HEADER_DLQ_OFFSET = "sampan-dlq-offset"
HEADER_DLQ_GROUP = "sampan-dlq-group"
HEADER_DLQ_PUBLISHED_AT = "sampan-dlq-published-at"
HEADER_DLQ_FAILED_AT = "sampan-dlq-failed-at"


class BusError(Exception):
    """Base of the errors a bus raises to its callers."""


class TopicNotFound(BusError):
    """The topic does not exist (and auto-creation is off)."""


class GroupNotFound(BusError):
    """The consumer group does not exist on that topic."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to publish. ``deliver_at`` (unix seconds) delays delivery."""

    value: bytes
    key: str | None = None
    headers: Mapping[str, str] | None = None
    deliver_at: float | None = None
    dedupe_key: str | None = None
    """A publish with a key already seen on the topic within ``dedupe_ttl`` is not stored
    again; the first message's offset is returned (idempotent producers, HTTP retries)."""
    dedupe_ttl: float = 86400.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message leased to one consumer of one group; settle it with ack, nack or release."""

    topic: str
    group: str
    offset: int
    key: str | None
    value: bytes
    headers: Mapping[str, str]
    published_at: float
    attempt: int
    """1 on the first delivery, incremented on every redelivery (nack or lease expiry)."""
    lease: int = 0
    """Identifies this lease: settling a delivery whose lease has since passed to another
    consumer (expiry, replay) changes nothing."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a topic keeps messages; ``None`` means unlimited."""

    max_age_seconds: float | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class GroupInfo:
    topic: str
    group: str
    lag: int
    """Messages not yet acked by the group (waiting, leased or backing off)."""
    in_flight: int
    """Messages leased or waiting for a retry."""
    next_offset: int
    """The next offset the group will read from the topic."""


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    messages: int
    bytes: int
    first_offset: int
    next_offset: int
    retention: Retention
    groups: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that exhausted its attempts, as stored in ``<topic>.dlq``."""

    dlq_offset: int
    topic: str
    group: str
    original_offset: int
    key: str | None
    value: bytes
    headers: Mapping[str, str]
    error: str
    attempts: int
    failed_at: float


Handler = Callable[[Delivery], Awaitable[None]]


class Bus(abc.ABC):
    """A durable, at-least-once message bus with consumer groups.

    Semantics every backend guarantees (and ``tests/contract`` checks):

    * ``publish`` returns only once the message is durable.
    * Each message is delivered to one consumer of every group; groups are independent.
    * Within a group, messages with the same key are leased in offset order and a later one is
      not leased while an earlier one is leased or waiting for a retry.
    * A leased message that is neither acked nor nacked before its lease ends is redelivered.
    * ``nack`` schedules a retry with the policy's backoff, or moves the message to
      ``<topic>.dlq`` once ``max_attempts`` deliveries have failed.
    """

    url: str
    metrics: Metrics

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- topics -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_topic(self, name: str, *, retention: Retention | None = None) -> None:
        """Create the topic, or update its retention if it exists."""

    @abc.abstractmethod
    async def delete_topic(self, name: str) -> None: ...

    @abc.abstractmethod
    async def topics(self) -> list[TopicInfo]: ...

    @abc.abstractmethod
    async def enforce_retention(self) -> int:
        """Delete messages past their topic's retention now; returns how many were removed."""

    # -- publishing ---------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        deliver_at: float | None = None,
    ) -> int:
        """Publish one message; returns its offset once it is durable."""
        offsets = await self.publish_batch(
            topic, [OutgoingMessage(value, key, headers, deliver_at)]
        )
        return offsets[0]

    @abc.abstractmethod
    async def publish_batch(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[int]:
        """Publish messages atomically, in order; returns their offsets once durable."""

    # -- consuming ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_group(
        self, topic: str, group: str, *, start: StartPosition = "earliest"
    ) -> None:
        """Create the group if missing; ``start`` only matters for a new group."""

    @abc.abstractmethod
    async def fetch(
        self,
        topic: str,
        group: str,
        *,
        consumer: str,
        max_messages: int,
        lease_seconds: float,
        wait_seconds: float = 0.0,
    ) -> list[Delivery]:
        """Lease up to ``max_messages``; waits up to ``wait_seconds`` when none is ready.

        Cancelling a fetch (a consumer's stop ending its long poll) leases nothing: what
        the cancelled call had already leased is released (see `take_leases`)."""

    async def subscribe(
        self,
        topic: str,
        group: str,
        handler: Handler,
        options: ConsumerOptions | None = None,
    ) -> Consumer:
        """Run ``handler`` for the group's messages until ``await consumer.stop()``.

        Handler success acks; an exception nacks (retry, then dead-letter)."""
        from sampan.bus.consumer import Consumer

        consumer = Consumer(self, topic, group, handler, options, self.metrics)
        await consumer.start()
        return consumer

    @abc.abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Mark messages done for their group."""

    @abc.abstractmethod
    async def nack(self, delivery: Delivery, error: str, policy: RetryPolicy) -> bool:
        """Record a failed attempt; returns True when the message was dead-lettered."""

    @abc.abstractmethod
    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give leased messages back for immediate redelivery without counting an attempt."""

    @abc.abstractmethod
    async def extend(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        """Renew leases of messages still being processed."""

    # -- operations ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def groups(self, topic: str) -> list[GroupInfo]: ...

    async def lag(self, topic: str, group: str) -> int:
        for info in await self.groups(topic):
            if info.group == group:
                return info.lag
        raise GroupNotFound(f"group {group!r} does not exist on topic {topic!r}")

    @abc.abstractmethod
    async def replay(
        self,
        topic: str,
        group: str,
        *,
        offset: int | None = None,
        timestamp: float | None = None,
    ) -> int:
        """Move the group back (or forward) to an offset or to the first message at/after a
        unix timestamp; returns the offset it will read next."""

    @abc.abstractmethod
    async def dlq_list(self, topic: str, *, limit: int = 100) -> list[DeadLetter]: ...

    @abc.abstractmethod
    async def dlq_redrive(self, topic: str, *, offsets: Sequence[int] | None = None) -> int:
        """Send dead letters back to the group that failed them; returns how many."""


async def take_leases(
    take: Awaitable[list[Delivery]],
    release: Callable[[list[Delivery]], Awaitable[None]],
    handing_back: set[asyncio.Task[None]],
) -> list[Delivery]:
    """Run the part of a ``fetch`` that leases messages so that cancelling the fetch there
    strands nothing: the take runs to its end, its leases are released (no attempt counted)
    and the cancellation goes on. Cancelled while it waits, a fetch holds nothing anyway.
    ``handing_back`` (the bus's own set) keeps a release that outlives a second cancellation
    referenced until it ends."""
    task = asyncio.ensure_future(take)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        handback = asyncio.ensure_future(_release_taken(task, release))
        handing_back.add(handback)
        handback.add_done_callback(handing_back.discard)
        await asyncio.shield(handback)  # cancelled again: it finishes in the background
        raise


async def _release_taken(
    task: asyncio.Future[list[Delivery]], release: Callable[[list[Delivery]], Awaitable[None]]
) -> None:
    try:
        found = await task
    except Exception:
        return  # the fetch would have raised: it hands back nothing either way
    if not found:
        return
    try:
        await release(found)
    except Exception:
        log.exception("releasing the leases of a cancelled fetch failed; they will expire")


def check_replay_position(offset: int | None, timestamp: float | None) -> None:
    """The arguments every backend's ``replay`` accepts: exactly one position, not negative."""
    if (offset is None) == (timestamp is None):
        raise BusError("replay needs exactly one of offset or timestamp")
    if offset is not None and offset < 0:
        raise BusError(f"replay offset must be >= 0, got {offset}")


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX

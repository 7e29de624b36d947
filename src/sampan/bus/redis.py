"""The Redis Streams bus: one stream per topic, group state kept by Lua scripts.

Messages live in a Redis stream per topic (entry id ``0-(offset+1)``, so offsets are dense
integers and ``XTRIM MINID``/``XRANGE`` work on them directly). Consumer-group state is *not*
kept in Redis's own consumer groups: like the SQLite backend's ``inflight`` table, each group
has a sorted set of in-flight offsets scored by the time they become visible, a hash of their
attempt and lease, and a key index that enforces per-key ordering. Every state change is one
Lua script, so the semantics hold across any number of processes sharing the server.
See ``docs/bus-redis.md`` for the layout and its trade-offs.

URL: ``redis://host:port/db?prefix=sampan&wait_aof=0`` (``rediss://`` for TLS); other query
parameters go to redis-py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from sampan.bus import redis_lua
from sampan.bus.base import (
    HEADER_DLQ_FAILED_AT,
    HEADER_DLQ_GROUP,
    HEADER_DLQ_TOPIC,
    Bus,
    BusError,
    DeadLetter,
    Delivery,
    GroupInfo,
    GroupNotFound,
    OutgoingMessage,
    Retention,
    StartPosition,
    TopicInfo,
    TopicNotFound,
    check_replay_position,
    dlq_topic,
    take_leases,
)
from sampan.bus.dead_letters import dead_letter_headers, read_dead_letter
from sampan.bus.retry import RetryPolicy
from sampan.bus.sqlite_store import (
    RESERVED_HEADER_PREFIX,
    check_topic_name,
    decode_headers,
    encode_headers,
)
from sampan.bus.wakeups import Wakeups
from sampan.observe.metrics import Metrics

OWN_PARAMETERS = ("prefix", "wait_aof")
RETENTION_BUDGET = 5000
"""Entries one retention script examines, so that one call never blocks Redis for long."""


@dataclass(frozen=True, slots=True)
class RedisBusOptions:
    auto_create_topics: bool = True
    default_retention: Retention = field(default_factory=Retention)
    max_in_flight_per_group: int = 10_000
    poll_interval: float = 0.05
    """Fetches waiting for work poll this often (in-process publishes wake them at once)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    client_url: str
    prefix: str
    wait_aof: int


def parse_redis_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise BusError(f"not a redis bus URL: {url!r} (expected redis://host:port/db)")
    own: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        (own.__setitem__(name, value) if name in OWN_PARAMETERS else rest.append((name, value)))
    prefix = own.get("prefix", "sampan") or "sampan"
    try:
        wait_aof = int(own.get("wait_aof", "0"))
    except ValueError as exc:
        raise BusError(f"redis bus URL {url!r}: wait_aof must be an integer") from exc
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    return RedisTarget(client_url, prefix, wait_aof)


def _s(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _optional_float(raw: Any) -> float | None:
    text = _s(raw)
    return float(text) if text else None


def _optional_int(raw: Any) -> int | None:
    text = _s(raw)
    return int(float(text)) if text else None


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


class RedisBus(Bus):
    def __init__(
        self, url: str, options: RedisBusOptions | None = None, metrics: Metrics | None = None
    ) -> None:
        self._handing_back: set[asyncio.Task[None]] = set()  # see take_leases
        self.url = url
        self.target = parse_redis_url(url)
        self.options = options or RedisBusOptions()
        self.metrics = metrics or Metrics()
        # The hash tag keeps every key of one bus in one cluster slot.
        self.prefix = "{" + self.target.prefix + "}"
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._wakeups = Wakeups()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        client = aioredis.Redis.from_url(self.target.client_url)
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            raise BusError(f"cannot reach the redis bus at {self.url!r}: {exc}") from exc
        self._client = client
        for name in (
            "CREATE_TOPIC",
            "DELETE_TOPIC",
            "TOPICS",
            "PUBLISH",
            "CREATE_GROUP",
            "GROUPS",
            "FETCH",
            "ACK",
            "RELEASE",
            "EXTEND",
            "NACK",
            "REPLAY",
            "REDRIVE",
            "RETENTION",
        ):
            self._scripts[name] = client.register_script(getattr(redis_lua, name))

    async def close(self) -> None:
        if self._client is None or self._closed:
            return
        self._closed = True
        self._wakeups.wake_all()
        await self._client.aclose()

    async def _run(self, script: str, *args: Any) -> Any:
        if self._client is None:
            raise BusError("the bus is not started")
        if self._closed:
            raise BusError("the bus is closed")
        try:
            return await self._scripts[script](keys=[self.prefix], args=list(args))
        except ResponseError as exc:
            message = str(exc)
            if message.startswith("SAMPAN-NOTOPIC"):
                raise TopicNotFound(f"topic {args[0]!r} does not exist") from exc
            if message.startswith("SAMPAN-NOGROUP"):
                group = args[1] if script != "REPLAY" else args[3]
                raise GroupNotFound(f"group {group!r} does not exist on topic {args[0]!r}") from exc
            raise BusError(f"redis bus {script.lower()} failed: {message}") from exc
        except RedisError as exc:
            raise BusError(f"redis bus {script.lower()} failed: {exc}") from exc

    async def _durable(self) -> None:
        """With ``wait_aof=N``, wait until the local AOF (and N-1 replicas') fsynced the write."""
        if self.target.wait_aof <= 0 or self._client is None:
            return
        try:
            command: Any = self._client.execute_command  # untyped in redis-py
            await command("WAITAOF", 1, self.target.wait_aof - 1, 5000)
        except RedisError as exc:
            raise BusError(f"redis bus: WAITAOF failed ({exc}); is appendonly on?") from exc

    # -- topics -------------------------------------------------------------------------------

    def _retention_args(self, name: str, retention: Retention | None) -> tuple[str, str]:
        if retention is None:
            # Dead letters wait for an operator, so they are never aged out by default.
            retention = Retention() if name.endswith(".dlq") else self.options.default_retention
        max_bytes = "" if retention.max_bytes is None else str(int(retention.max_bytes))
        return _number(retention.max_age_seconds), max_bytes

    async def create_topic(self, name: str, *, retention: Retention | None = None) -> None:
        check_topic_name(name)
        await self._run("CREATE_TOPIC", name, *self._retention_args(name, retention))
        await self._durable()

    async def delete_topic(self, name: str) -> None:
        await self._run("DELETE_TOPIC", name)

    async def topics(self) -> list[TopicInfo]:
        rows = await self._run("TOPICS")
        result = [
            TopicInfo(
                name=_s(name),
                messages=int(messages),
                bytes=int(size),
                first_offset=int(first),
                next_offset=int(nxt),
                retention=Retention(_optional_float(max_age), _optional_int(max_bytes)),
                groups=tuple(sorted(_s(g) for g in groups)),
            )
            for name, messages, size, first, nxt, max_age, max_bytes, groups in rows
        ]
        return sorted(result, key=lambda t: t.name)

    async def enforce_retention(self) -> int:
        removed = 0
        for info in await self.topics():
            if info.retention.max_age_seconds is None and info.retention.max_bytes is None:
                continue
            start = 0
            while start >= 0:
                count, start = await self._run("RETENTION", info.name, RETENTION_BUDGET, start)
                removed += int(count)
                start = int(start)
        return removed

    # -- publish ------------------------------------------------------------------------------

    async def publish_batch(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[int]:
        check_topic_name(topic)
        if not messages:
            return []
        for message in messages:
            for name in message.headers or ():
                if name.startswith(RESERVED_HEADER_PREFIX):
                    raise BusError(f"header {name!r}: the 'sampan-' prefix is reserved")
        max_age, max_bytes = self._retention_args(topic, None)
        args: list[Any] = [
            topic,
            "1" if self.options.auto_create_topics else "0",
            max_age,
            max_bytes,
            "",
            len(messages),
        ]
        for m in messages:
            args += [
                m.value,
                "0" if m.key is None else "1",
                m.key or "",
                encode_headers(m.headers) or b"",
                _number(m.deliver_at),
                m.dedupe_key or "",
                max(1, int(m.dedupe_ttl * 1000)),
            ]
        offsets = [int(o) for o in await self._run("PUBLISH", *args)]
        await self._durable()
        self.metrics.target("topic", topic).count(len(offsets))
        self._wakeups.wake(topic)
        return offsets

    # -- consume ------------------------------------------------------------------------------

    async def create_group(
        self, topic: str, group: str, *, start: StartPosition = "earliest"
    ) -> None:
        check_topic_name(group)
        check_topic_name(topic)
        await self._run(
            "CREATE_GROUP",
            topic,
            group,
            start,
            "1" if self.options.auto_create_topics else "0",
            *self._retention_args(topic, None),
        )

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
        deadline = time.monotonic() + wait_seconds
        while True:
            wakeup = self._wakeups.waiter(topic)
            found = await take_leases(
                self._fetch_once(topic, group, consumer, max_messages, lease_seconds),
                self.release,
                self._handing_back,
            )
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or self._closed:
                return found
            await self._wakeups.wait(wakeup, min(remaining, self.options.poll_interval))

    async def _fetch_once(
        self, topic: str, group: str, consumer: str, max_messages: int, lease_seconds: float
    ) -> list[Delivery]:
        rows = await self._run(
            "FETCH",
            topic,
            group,
            consumer,
            max_messages,
            repr(float(lease_seconds)),
            self.options.max_in_flight_per_group,
        )
        return [self._delivery(topic, group, row) for row in rows]

    @staticmethod
    def _delivery(topic: str, group: str, row: Sequence[Any]) -> Delivery:
        offset, has_key, key, value, headers, published_at, attempt, lease = row
        return Delivery(
            topic,
            group,
            int(offset),
            _s(key) if _s(has_key) == "1" else None,
            bytes(value),
            decode_headers(headers or None),
            float(published_at),
            int(attempt),
            int(lease),
        )

    @staticmethod
    def _by_group(deliveries: Sequence[Delivery]) -> dict[tuple[str, str], list[Delivery]]:
        grouped: dict[tuple[str, str], list[Delivery]] = {}
        for d in deliveries:
            grouped.setdefault((d.topic, d.group), []).append(d)
        return grouped

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for (topic, group), items in self._by_group(deliveries).items():
            pairs = [x for d in items for x in (d.offset, d.lease)]
            await self._run("ACK", topic, group, *pairs)
            self._wakeups.wake(topic)

    async def nack(self, delivery: Delivery, error: str, policy: RetryPolicy) -> bool:
        d = delivery
        exhausted = policy.exhausted(d.attempt)
        headers: dict[str, str] = {}
        if exhausted:
            check_topic_name(dlq_topic(d.topic))
            headers = dead_letter_headers(d, error, None)  # Redis stamps failed-at
        dead = await self._run(
            "NACK",
            d.topic,
            d.group,
            d.offset,
            d.lease,
            "1" if exhausted else "0",
            "0" if exhausted else repr(policy.backoff(d.attempt)),
            d.value if exhausted else b"",
            "0" if d.key is None else "1",
            d.key or "",
            orjson.dumps(headers),
            HEADER_DLQ_FAILED_AT,
        )
        if int(dead):
            await self._durable()
            self._wakeups.wake(d.topic)
            return True
        return False

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for (topic, group), items in self._by_group(deliveries).items():
            pairs = [x for d in items for x in (d.offset, d.lease)]
            await self._run("RELEASE", topic, group, *pairs)
            self._wakeups.wake(topic)

    async def extend(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        for (topic, group), items in self._by_group(deliveries).items():
            pairs = [x for d in items for x in (d.offset, d.lease)]
            await self._run("EXTEND", topic, group, repr(float(lease_seconds)), *pairs)

    # -- operations ---------------------------------------------------------------------------

    async def groups(self, topic: str) -> list[GroupInfo]:
        rows = await self._run("GROUPS", topic)
        result = [
            GroupInfo(topic, _s(name), int(lag), int(in_flight), int(position))
            for name, lag, in_flight, position in rows
        ]
        return sorted(result, key=lambda g: g.group)

    async def replay(
        self,
        topic: str,
        group: str,
        *,
        offset: int | None = None,
        timestamp: float | None = None,
    ) -> int:
        check_replay_position(offset, timestamp)
        target = await self._run(
            "REPLAY",
            topic,
            "" if offset is None else str(int(offset)),
            _number(timestamp),
            group,
        )
        self._wakeups.wake(topic)
        return int(target)

    async def dlq_list(self, topic: str, *, limit: int = 100) -> list[DeadLetter]:
        if self._client is None:
            raise BusError("the bus is not started")
        stream = f"{self.prefix}:t:{dlq_topic(topic)}:s"
        try:
            entries: Any = await self._client.xrange(stream, "-", "+", count=limit)
        except RedisError as exc:
            raise BusError(f"redis bus dlq_list failed: {exc}") from exc
        result = []
        for entry_id, raw_fields in entries or ():
            fields: dict[bytes, bytes] = raw_fields
            offset = int(_s(entry_id).split("-", 1)[1]) - 1
            key = fields.get(b"k")
            result.append(
                read_dead_letter(
                    offset,
                    topic,
                    None if key is None else _s(key),
                    bytes(fields[b"v"]),
                    decode_headers(fields.get(b"h")),
                )
            )
        return result

    async def dlq_redrive(self, topic: str, *, offsets: Sequence[int] | None = None) -> int:
        if offsets is not None and not offsets:
            return 0
        moved = 0
        if offsets is None:
            start = 0
            while start >= 0:
                count, start = await self._run(
                    "REDRIVE", topic, HEADER_DLQ_TOPIC, HEADER_DLQ_GROUP, "*", start
                )
                moved += int(count)
                start = int(start)
        else:
            wanted = sorted({int(o) for o in offsets})
            count, _ = await self._run(
                "REDRIVE", topic, HEADER_DLQ_TOPIC, HEADER_DLQ_GROUP, "=", *wanted
            )
            moved = int(count)
        if moved:
            await self._durable()
            self._wakeups.wake(topic)
        return moved


async def delete_all_keys(url: str) -> int:
    """Delete every key of the bus at ``url`` (its prefix); for tests and decommissioning."""
    target = parse_redis_url(url)
    client = aioredis.Redis.from_url(target.client_url)
    deleted = 0
    try:
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in target.prefix)
        pattern = "{" + escaped + "}:*"
        async for name in client.scan_iter(match=pattern, count=1000):
            deleted += await client.unlink(name)
    finally:
        await client.aclose()
    return deleted

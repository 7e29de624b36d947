"""The distributed bus: NATS JetStream through nats-py.

One stream per topic (``SAMPAN_<encoded topic>``, one subject ``sampan.<encoded topic>``, file
storage, retention limits, a duplicate window for dedupe keys); one durable pull consumer per
group. JetStream stores, delivers and redelivers; this module adds what JetStream does not
have, client-side, in the process that fetched: per-lease deadlines shorter than the
consumer's ``ack_wait``, per-key ordering (a later message of a key is held back while an
earlier one is leased or backing off), delayed delivery (``deliver_at``), dead-lettering with
metadata, and attempt numbers that do not count releases. See docs/bus-nats.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from sampan.bus.base import (
    HEADER_DLQ_ATTEMPTS,
    HEADER_DLQ_ERROR,
    HEADER_DLQ_FAILED_AT,
    HEADER_DLQ_GROUP,
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_PUBLISHED_AT,
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
from sampan.bus.nats_replies import ReplyInbox
from sampan.bus.retry import RetryPolicy
from sampan.bus.sqlite_store import RESERVED_HEADER_PREFIX, check_topic_name
from sampan.observe.metrics import Metrics

log = logging.getLogger("sampan.bus.nats")

STREAM_PREFIX = "SAMPAN_"
SUBJECT_PREFIX = "sampan."
# Headers the bus writes on stored messages (user headers may not start with "sampan-").
HEADER_KEY = "sampan-key"
HEADER_DELIVER_AT = "sampan-deliver-at"
HEADER_DEDUPE_TTL = "sampan-dedupe-ttl"
HEADER_REDRIVE_GROUP = "sampan-redrive-group"
MSG_ID = "Nats-Msg-Id"
EXPECTED_STREAM = "Nats-Expected-Stream"
NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class NatsBusOptions:
    auto_create_topics: bool = True
    default_retention: Retention = field(default_factory=Retention)
    ack_wait: float = 30.0
    """Server-side lease: messages held by a process that died come back after this."""
    max_in_flight_per_group: int = 10_000
    """The consumers' ``max_ack_pending``."""
    dedupe_window: float = 86400.0
    """The streams' duplicate window (capped by ``max_age``)."""
    request_timeout: float = 5.0
    min_poll_interval: float = 0.01
    max_poll_interval: float = 0.05
    """A waiting fetch probes for messages with pauses growing from min to max."""
    replicas: int = 1


def encode_name(name: str) -> str:
    """An injective mapping of a topic or group name onto a NATS token / stream name."""
    out = []
    for char in name:
        if char.isascii() and (char.isalnum() or char == "-"):
            out.append(char)
        else:
            out.append(f"_{ord(char):02x}" if ord(char) < 256 else f"_u{ord(char):06x}")
    return "".join(out)


def _stream(topic: str) -> str:
    return STREAM_PREFIX + encode_name(topic)


def _subject(topic: str) -> str:
    return SUBJECT_PREFIX + encode_name(topic)


def _retention_of(config: js_api.StreamConfig) -> Retention:
    age = config.max_age
    size = config.max_bytes
    return Retention(
        max_age_seconds=float(age) if age else None,
        max_bytes=int(size) if size is not None and size > 0 else None,
    )


_BAD_HEADER_NAME = re.compile(r"[:\r\n \t]")
_BAD_HEADER_VALUE = re.compile(r"[\r\n]")


def _check_headers(headers: Mapping[str, str] | None) -> None:
    if not headers:
        return
    for name, value in headers.items():
        if name.lower().startswith(RESERVED_HEADER_PREFIX):
            raise BusError(f"header {name!r}: the 'sampan-' prefix is reserved")
        if not name or _BAD_HEADER_NAME.search(name) or _BAD_HEADER_VALUE.search(value):
            raise BusError(f"header {name!r}: names and values may not contain line breaks")


def _user_headers(raw: Mapping[str, str] | None) -> dict[str, str]:
    return {
        k: v
        for k, v in (raw or {}).items()
        if not k.lower().startswith(RESERVED_HEADER_PREFIX) and not k.startswith("Nats-")
    }


@dataclass(slots=True)
class _Entry:
    """A message of one group that this process received from JetStream and has not settled."""

    seq: int
    key: str | None
    msg: Msg | None
    state: str  # "waiting" (held back), "leased", "away" (nak'ed: backing off or released)
    num_delivered: int = 0
    lease: int = 0
    deadline: float = 0.0
    away_until: float = 0.0


@dataclass(slots=True)
class _PullRequest:
    """One no-wait pull: done once ``wanted`` messages or JetStream's end-of-batch status came."""

    wanted: int
    done: asyncio.Future[None]
    received: int = 0


@dataclass(slots=True)
class _Group:
    topic: str
    group: str
    stream: str
    durable: str
    sub: Subscription | None = None
    inbox: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    entries: dict[int, _Entry] = field(default_factory=dict)
    uncounted: dict[int, int] = field(default_factory=dict)
    """Deliveries per stream sequence that were not attempts (releases, early delayed ones)."""
    requests: dict[str, _PullRequest] = field(default_factory=dict)
    """Pulls by reply subject: JetStream's end-of-pull status comes on that subject."""
    pulling: _PullRequest | None = None
    """The pull a fetch waits for (one at a time: fetch holds ``lock``). Deliveries carry the
    stream's subject, not the pull's, so every arrival counts towards this one."""


class NatsBus(Bus):
    def __init__(
        self, url: str, options: NatsBusOptions | None = None, metrics: Metrics | None = None
    ) -> None:
        self._handing_back: set[asyncio.Task[None]] = set()  # see take_leases
        if not url.startswith(("nats://", "tls://")):
            raise BusError(f"not a NATS bus URL: {url!r} (expected nats://host:4222)")
        self.url = url
        self.options = options or NatsBusOptions()
        self.metrics = metrics or Metrics()
        self._nc: NatsClient | None = None
        self._js: Any = None
        self._replies: ReplyInbox | None = None
        self._groups: dict[tuple[str, str], _Group] = {}
        self._known_topics: set[str] = set()
        self._names: dict[str, tuple[str, str]] = {}
        """(subject, stream) per topic published to: encoding names per message costs."""
        self._leases = itertools.count(1)
        self._requests = itertools.count(1)
        self._keepalive: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._nc is not None:
            return
        try:
            self._nc = await nats.connect(
                self.url, name="sampan-bus", allow_reconnect=True, max_reconnect_attempts=-1
            )
        except Exception as exc:
            raise BusError(f"cannot connect to NATS at {self.url}: {exc}") from exc
        self._js = self._nc.jetstream(timeout=self.options.request_timeout)
        self._replies = ReplyInbox(self._nc, self.options.request_timeout)
        await self._replies.start()
        self._keepalive = asyncio.create_task(self._keep_alive())

    async def close(self) -> None:
        if self._nc is None or self._closed:
            return
        self._closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        for state in self._groups.values():
            for request in state.requests.values():
                if not request.done.done():
                    request.done.set_result(None)
        if self._replies is not None:
            await self._replies.close()
        with contextlib.suppress(Exception):
            await self._nc.drain()
        self._groups.clear()

    def _reply_inbox(self) -> ReplyInbox:
        self._conn()
        assert self._replies is not None
        return self._replies

    def _conn(self) -> NatsClient:
        if self._nc is None:
            raise BusError("the bus is not started")
        if self._closed:
            raise BusError("the bus is closed")
        return self._nc

    async def _keep_alive(self) -> None:
        """Keep JetStream's ack_wait from expiring messages this process still holds."""
        interval = max(0.05, self.options.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            for state in list(self._groups.values()):
                held: list[tuple[_Entry, bytes]] = []
                for entry in list(state.entries.values()):
                    if entry.state == "away" and now > entry.away_until + self.options.ack_wait:
                        state.entries.pop(entry.seq, None)  # came back to another process
                    elif entry.state != "away":
                        held.append((entry, b"+WPI"))
                # Unconfirmed: a lost +WPI costs at most a redelivery, as a lost ack does.
                await self._settle(held, confirm=False)

    # -- topics -------------------------------------------------------------------------------

    def _stream_config(self, topic: str, retention: Retention) -> js_api.StreamConfig:
        window = self.options.dedupe_window
        if retention.max_age_seconds:
            window = min(window, retention.max_age_seconds)
        return js_api.StreamConfig(
            name=_stream(topic),
            description=topic,
            subjects=[_subject(topic)],
            storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS,
            discard=js_api.DiscardPolicy.OLD,
            max_age=retention.max_age_seconds or 0,
            max_bytes=retention.max_bytes if retention.max_bytes is not None else -1,
            duplicate_window=window,
            num_replicas=self.options.replicas,
        )

    async def create_topic(self, name: str, *, retention: Retention | None = None) -> None:
        check_topic_name(name)
        self._conn()
        config = self._stream_config(name, retention or self.options.default_retention)
        try:
            await self._js.stream_info(config.name)
        except NotFoundError:
            await self._api(self._js.add_stream(config))
        else:
            if retention is not None:
                await self._api(self._js.update_stream(config))
        self._known_topics.add(name)

    async def _ensure_topic(self, name: str) -> None:
        if name in self._known_topics:
            return
        check_topic_name(name)
        try:
            await self._js.stream_info(_stream(name))
        except NotFoundError:
            if not self.options.auto_create_topics:
                raise TopicNotFound(f"topic {name!r} does not exist") from None
            await self.create_topic(name)
        self._known_topics.add(name)

    async def delete_topic(self, name: str) -> None:
        check_topic_name(name)
        self._conn()
        self._known_topics.discard(name)
        for key in [k for k in self._groups if k[0] == name]:
            await self._drop_group_state(key)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_stream(_stream(name))

    async def topics(self) -> list[TopicInfo]:
        self._conn()
        result = []
        offset = 0
        while True:
            page = await self._api(self._js.streams_info(offset))
            if not page:
                break
            offset += len(page)
            for info in page:
                config = info.config
                if not config.name.startswith(STREAM_PREFIX) or not config.description:
                    continue
                consumers = await self._api(self._js.consumers_info(config.name))
                state = info.state
                result.append(
                    TopicInfo(
                        name=config.description,
                        messages=state.messages,
                        bytes=state.bytes,
                        first_offset=state.first_seq if state.messages else state.last_seq + 1,
                        next_offset=state.last_seq + 1,
                        retention=_retention_of(config),
                        groups=tuple(
                            sorted(c.config.description or c.name for c in consumers or [])
                        ),
                    )
                )
            if len(page) < 256:
                break
        return sorted(result, key=lambda t: t.name)

    async def enforce_retention(self) -> int:
        """JetStream enforces max_age / max_bytes itself, continuously: nothing to do here."""
        self._conn()
        return 0

    async def _api(self, call: Any) -> Any:
        try:
            return await call
        except NotFoundError:
            raise
        except BusError:
            raise
        except Exception as exc:
            raise BusError(f"NATS JetStream: {type(exc).__name__}: {exc}") from exc

    # -- publish ------------------------------------------------------------------------------

    async def publish_batch(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[int]:
        if topic not in self._known_topics:  # those were checked when they became known
            check_topic_name(topic)
        for message in messages:
            _check_headers(message.headers)
        self._conn()
        if not messages:
            return []
        await self._ensure_topic(topic)
        offsets = await self._publish(topic, messages, {})
        self.metrics.target("topic", topic).count(len(offsets))
        return offsets

    async def _publish(
        self,
        topic: str,
        messages: Sequence[OutgoingMessage],
        internal: Mapping[str, str],
        extra: Sequence[Mapping[str, str]] | None = None,
    ) -> list[int]:
        """Publish in order, pipelined: send every message, then await every PubAck (so the
        call returns once all are stored); resolve expired dedupe keys."""
        names = self._names.get(topic)
        if names is None:
            names = self._names[topic] = (_subject(topic), _stream(topic))
        subject, stream = names

        def headers_of(i: int, m: OutgoingMessage, msg_id: str | None) -> dict[str, str]:
            h = dict(m.headers or {})
            h.update(internal)
            if extra is not None:
                h.update(extra[i])
            if m.key is not None:
                h[HEADER_KEY] = m.key
            if m.deliver_at is not None:
                h[HEADER_DELIVER_AT] = repr(float(m.deliver_at))
            if msg_id is not None:
                h[MSG_ID] = msg_id
                h[HEADER_DEDUPE_TTL] = repr(float(m.dedupe_ttl))
            h[EXPECTED_STREAM] = stream
            return h

        async def send(items: Sequence[tuple[int, str | None]]) -> list[tuple[int, bool]]:
            nc, replies = self._conn(), self._reply_inbox()
            futures = []
            try:
                for i, msg_id in items:
                    m = messages[i]
                    reply, future = replies.expect()
                    futures.append(future)
                    await nc.publish(
                        subject, m.value, reply=reply, headers=headers_of(i, m, msg_id)
                    )
                answers = await asyncio.gather(*futures)
            except BusError:
                raise
            except Exception as exc:
                raise BusError(f"publish to {topic!r} failed: {type(exc).__name__}: {exc}") from exc
            finally:
                for future in futures:
                    future.cancel()  # only those still waiting (a failure part way)
            return [_pub_ack(topic, answer) for answer in answers]

        acks = await send([(i, m.dedupe_key) for i, m in enumerate(messages)])
        result: list[int] = []
        for i, (message, ack) in enumerate(zip(messages, acks, strict=True)):
            seq, duplicate = ack
            # A duplicate whose first copy is past its own TTL is stored again, under an id
            # derived from the expired copy: concurrent retries still converge on one message.
            while duplicate and message.dedupe_key is not None:
                if not await self._dedupe_expired(stream, seq):
                    break
                [(seq, duplicate)] = await send([(i, f"{message.dedupe_key}@{seq}")])
            result.append(seq)
        return result

    async def _dedupe_expired(self, stream: str, seq: int) -> bool:
        try:
            raw = await self._js.get_msg(stream, seq)
        except NotFoundError:
            return True
        ttl = float((raw.headers or {}).get(HEADER_DEDUPE_TTL, "inf"))
        stored = raw.time.timestamp() if raw.time is not None else time.time()
        return time.time() - stored >= ttl

    # -- groups -------------------------------------------------------------------------------

    def _consumer_config(
        self, group: str, policy: js_api.DeliverPolicy, **extra: Any
    ) -> js_api.ConsumerConfig:
        return js_api.ConsumerConfig(
            durable_name=encode_name(group),
            name=encode_name(group),
            description=group,
            deliver_policy=policy,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.options.ack_wait,
            max_deliver=-1,
            max_ack_pending=self.options.max_in_flight_per_group,
            replay_policy=js_api.ReplayPolicy.INSTANT,
            **extra,
        )

    async def create_group(
        self, topic: str, group: str, *, start: StartPosition = "earliest"
    ) -> None:
        self._conn()
        await self._ensure_topic(topic)
        try:
            await self._js.consumer_info(_stream(topic), encode_name(group))
            return
        except NotFoundError:
            pass
        policy = js_api.DeliverPolicy.ALL if start == "earliest" else js_api.DeliverPolicy.NEW
        await self._api(self._js.add_consumer(_stream(topic), self._consumer_config(group, policy)))

    async def _group(self, topic: str, group: str) -> _Group:
        state = self._groups.get((topic, group))
        if state is not None:
            return state
        check_topic_name(topic)
        nc = self._conn()
        stream, durable = _stream(topic), encode_name(group)
        try:
            await self._js.consumer_info(stream, durable)
        except NotFoundError:
            raise GroupNotFound(f"group {group!r} does not exist on topic {topic!r}") from None
        state = self._groups.get((topic, group))
        if state is not None:  # created concurrently
            return state
        state = _Group(topic, group, stream, durable)
        state.inbox = nc.new_inbox()

        async def on_message(msg: Msg) -> None:
            self._received(state, msg)

        state.sub = await nc.subscribe(state.inbox + ".*", cb=on_message)
        self._groups[(topic, group)] = state
        return state

    async def _drop_group_state(self, key: tuple[str, str]) -> None:
        state = self._groups.pop(key, None)
        if state is not None and state.sub is not None:
            with contextlib.suppress(Exception):
                await state.sub.unsubscribe()

    def _received(self, state: _Group, msg: Msg) -> None:
        """Every JetStream delivery for the group lands here (callback on the event loop)."""
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None or not msg.reply:
            # 404/408: the pull is over (fewer messages than asked); 100: a heartbeat.
            request = state.requests.get(msg.subject)
            if request is not None and status != "100" and not request.done.done():
                request.done.set_result(None)
            return
        try:
            meta = msg.metadata
        except Exception:
            return
        if meta.stream != state.stream or meta.consumer != state.durable:
            return  # a late delivery from before a replay recreated the consumer
        seq = int(meta.sequence.stream)
        state.entries[seq] = _Entry(
            seq=seq,
            key=headers.get(HEADER_KEY),
            msg=msg,
            state="waiting",
            num_delivered=int(meta.num_delivered),
        )
        request = state.pulling
        if request is not None:
            request.received += 1
            if request.received >= request.wanted and not request.done.done():
                request.done.set_result(None)

    async def _pull(self, state: _Group, batch: int) -> None:
        """One no-wait pull: JetStream sends what is ready (up to ``batch``), then a status.

        Messages that arrive after the wait gave up are kept all the same (``_received``)."""
        reply = f"{state.inbox}.{next(self._requests)}"
        request = _PullRequest(batch, asyncio.get_running_loop().create_future())
        state.requests[reply] = request
        state.pulling = request
        try:
            try:
                await self._conn().publish(
                    f"$JS.API.CONSUMER.MSG.NEXT.{state.stream}.{state.durable}",
                    json.dumps({"batch": batch, "no_wait": True}).encode(),
                    reply=reply,
                )
            except BusError:
                raise
            except Exception as exc:
                raise BusError(f"pull from {state.topic}/{state.group} failed: {exc}") from exc
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.done, self.options.request_timeout)
        finally:
            state.requests.pop(reply, None)
            state.pulling = None

    # -- consume ------------------------------------------------------------------------------

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
        state = await self._group(topic, group)
        deadline = time.monotonic() + wait_seconds
        batch = max(1, max_messages)
        pause = self.options.min_poll_interval
        while True:
            found = await take_leases(
                self._look(state, max_messages, lease_seconds, batch),
                self.release,
                self._handing_back,
            )
            remaining = deadline - time.monotonic()
            if found or self._closed or remaining <= 0:
                return found
            # No-wait probes with a growing pause: JetStream 2.9 long pulls do not reliably
            # pick up redeliveries that become due (nak delays), and any message a long pull
            # brings after its fetch returned would sit here unseen by other processes.
            await asyncio.sleep(min(remaining, pause))
            pause = min(pause * 2, self.options.max_poll_interval)

    async def _look(
        self, state: _Group, max_messages: int, lease_seconds: float, batch: int
    ) -> list[Delivery]:
        """One look for messages (inside `take_leases`: a cancelled fetch lets it end)."""
        async with state.lock:
            await self._expire(state)
            found = await self._take(state, max_messages, lease_seconds)
            if not found:
                await self._pull(state, batch)
                found = await self._take(state, max_messages, lease_seconds)
            return found

    async def _expire(self, state: _Group) -> None:
        """Leases past their deadline go back to JetStream (an attempt, as on the server)."""
        now = time.time()
        expired = [e for e in state.entries.values() if e.state == "leased" and e.deadline <= now]
        if not expired:
            return
        await self._settle([(e, b"-NAK") for e in expired])
        for entry in expired:
            entry.state, entry.away_until, entry.lease = "away", now, 0

    async def _take(self, state: _Group, limit: int, lease_seconds: float) -> list[Delivery]:
        waiting = [e for e in state.entries.values() if e.state == "waiting" and e.msg is not None]
        if not waiting:
            return []
        waiting.sort(key=_seq_of)
        now = time.time()
        out: list[Delivery] = []
        # The lowest unsettled sequence per key: only that message of a key may be leased.
        first_of_key: dict[str, int] = {}
        for entry in state.entries.values():
            if entry.key is not None:
                current = first_of_key.get(entry.key)
                if current is None or entry.seq < current:
                    first_of_key[entry.key] = entry.seq
        to_ack: list[_Entry] = []
        to_defer: list[tuple[_Entry, float]] = []
        for entry in waiting:
            if len(out) >= limit:
                break
            seq = entry.seq
            assert entry.msg is not None
            headers = entry.msg.headers or {}
            target = headers.get(HEADER_REDRIVE_GROUP)
            if target is not None and target != state.group:
                to_ack.append(entry)  # a re-drive meant for another group
                continue
            due = headers.get(HEADER_DELIVER_AT)
            if due is not None and float(due) > now:
                to_defer.append((entry, float(due)))
                continue
            if entry.key is not None and first_of_key.get(entry.key, seq) < seq:
                continue  # an earlier message of the key is still unsettled: hold this one
            entry.state = "leased"
            entry.lease = next(self._leases)
            entry.deadline = now + lease_seconds
            meta = entry.msg.metadata
            out.append(
                Delivery(
                    topic=state.topic,
                    group=state.group,
                    offset=seq,
                    key=entry.key,
                    value=entry.msg.data,
                    headers=_user_headers(headers),
                    published_at=meta.timestamp.timestamp(),
                    attempt=max(1, entry.num_delivered - state.uncounted.get(seq, 0)),
                    lease=entry.lease,
                )
            )
        for entry in to_ack:
            state.entries.pop(entry.seq, None)
        for entry, _ in to_defer:
            state.entries.pop(entry.seq, None)
            state.uncounted[entry.seq] = state.uncounted.get(entry.seq, 0) + 1
        if to_ack or to_defer:
            await self._settle(
                [(e, b"+ACK") for e in to_ack]
                + [(e, _nak(due - now + 0.002)) for e, due in to_defer]
            )
        return out

    async def _settle(self, items: Sequence[tuple[_Entry, bytes]], *, confirm: bool = True) -> None:
        """Send ack-protocol messages for entries of ONE group; with ``confirm``, return once
        JetStream has applied all of them.

        Only the last one asks for a reply: the server applies one consumer's acks in the order
        they arrive on a connection, so the reply to the last means all of them are applied —
        one round trip per batch instead of one per message. A failure is logged, not raised:
        an unapplied ack or nak costs a redelivery, which at-least-once allows."""
        sendable = [(e.msg.reply, p) for e, p in items if e.msg is not None and e.msg.reply]
        if not sendable:
            return
        try:
            nc = self._conn()
            for subject, payload in sendable[:-1]:
                await nc.publish(subject, payload)
            subject, payload = sendable[-1]
            if not confirm:
                await nc.publish(subject, payload)
                return
            reply, future = self._reply_inbox().expect()
            await nc.publish(subject, payload, reply=reply)
            await future
        except Exception as exc:
            log.warning(
                "NATS %s for %d message(s) (last %s) failed: %s",
                sendable[-1][1][:4].decode(),
                len(sendable),
                sendable[-1][0],
                exc,
            )

    def _leased(self, delivery: Delivery) -> tuple[_Group, _Entry] | None:
        state = self._groups.get((delivery.topic, delivery.group))
        if state is None:
            return None
        entry = state.entries.get(delivery.offset)
        if entry is None or entry.state != "leased" or entry.lease != delivery.lease:
            return None  # settled, expired, re-leased or replayed since
        return state, entry

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._conn()
        found = [x for x in map(self._leased, deliveries) if x is not None]
        for state, entry in found:
            state.entries.pop(entry.seq, None)
            state.uncounted.pop(entry.seq, None)
        await self._settle_per_group(found, b"+ACK")

    async def nack(self, delivery: Delivery, error: str, policy: RetryPolicy) -> bool:
        self._conn()
        found = self._leased(delivery)
        if found is None:
            return False
        state, entry = found
        if policy.exhausted(delivery.attempt):
            # Stored in the DLQ first: if that fails the lease runs out and it comes back.
            await self._dead_letter(delivery, error)
            if self._leased(delivery) is None:
                return True  # replayed meanwhile; the letter is stored all the same
            state.entries.pop(entry.seq, None)
            state.uncounted.pop(entry.seq, None)
            await self._settle([(entry, b"+ACK")])
            return True
        delay = policy.backoff(delivery.attempt)
        entry.state, entry.lease, entry.away_until = "away", 0, time.time() + delay
        await self._settle([(entry, _nak(delay))])
        return False

    async def _dead_letter(self, delivery: Delivery, error: str) -> None:
        name = dlq_topic(delivery.topic)
        await self._ensure_topic(name)
        internal = {
            HEADER_DLQ_ERROR: json.dumps(error),
            HEADER_DLQ_ATTEMPTS: str(delivery.attempt),
            HEADER_DLQ_TOPIC: delivery.topic,
            HEADER_DLQ_OFFSET: str(delivery.offset),
            HEADER_DLQ_GROUP: delivery.group,
            HEADER_DLQ_PUBLISHED_AT: repr(delivery.published_at),
            HEADER_DLQ_FAILED_AT: repr(time.time()),
        }
        message = OutgoingMessage(delivery.value, delivery.key, dict(delivery.headers))
        await self._publish(name, [message], internal)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        self._conn()
        found = [x for x in map(self._leased, deliveries) if x is not None]
        now = time.time()
        for state, entry in found:
            entry.state, entry.lease, entry.away_until = "away", 0, now
            state.uncounted[entry.seq] = state.uncounted.get(entry.seq, 0) + 1
        await self._settle_per_group(found, b"-NAK")

    async def extend(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        self._conn()
        found = [x for x in map(self._leased, deliveries) if x is not None]
        deadline = time.time() + lease_seconds
        for _, entry in found:
            entry.deadline = deadline
        await self._settle_per_group(found, b"+WPI")

    async def _settle_per_group(
        self, found: Sequence[tuple[_Group, _Entry]], payload: bytes
    ) -> None:
        """The same settlement for entries of possibly several groups: one round trip each,
        all groups at once."""
        by_group: dict[int, list[tuple[_Entry, bytes]]] = {}
        for state, entry in found:
            by_group.setdefault(id(state), []).append((entry, payload))
        if len(by_group) == 1:
            await self._settle(next(iter(by_group.values())))
        elif by_group:
            await asyncio.gather(*(self._settle(items) for items in by_group.values()))

    # -- operations ---------------------------------------------------------------------------

    async def groups(self, topic: str) -> list[GroupInfo]:
        self._conn()
        check_topic_name(topic)
        try:
            consumers = await self._js.consumers_info(_stream(topic))
        except NotFoundError:
            raise TopicNotFound(f"topic {topic!r} does not exist") from None
        result = []
        for info in consumers or []:
            pending = int(info.num_pending or 0)
            in_flight = int(info.num_ack_pending or 0)
            delivered = info.delivered.stream_seq if info.delivered is not None else 0
            result.append(
                GroupInfo(
                    topic=topic,
                    group=info.config.description or info.name,
                    lag=pending + in_flight,
                    in_flight=in_flight,
                    next_offset=int(delivered or 0) + 1,
                )
            )
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
        self._conn()
        stream, durable = _stream(topic), encode_name(group)
        try:
            await self._js.consumer_info(stream, durable)
        except NotFoundError:
            raise GroupNotFound(f"group {group!r} does not exist on topic {topic!r}") from None
        state = self._groups.get((topic, group))
        lock = state.lock if state is not None else asyncio.Lock()
        async with lock:
            if offset is not None:
                config = self._consumer_config(
                    group, js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, offset)
                )
            else:
                assert timestamp is not None
                config = self._consumer_config(
                    group,
                    js_api.DeliverPolicy.BY_START_TIME,
                    opt_start_time=datetime.datetime.fromtimestamp(timestamp, datetime.UTC),
                )
            await self._api(self._js.delete_consumer(stream, durable))
            info = await self._api(self._js.add_consumer(stream, config))
            if state is not None:
                state.entries.clear()
                state.uncounted.clear()
        if offset is not None:
            return offset
        delivered = info.delivered.stream_seq if info.delivered is not None else 0
        return int(delivered or 0) + 1

    async def dlq_list(self, topic: str, *, limit: int = 100) -> list[DeadLetter]:
        self._conn()
        result: list[DeadLetter] = []
        for seq, raw in await self._dead_letters(topic, limit, None):
            headers = dict(raw.headers or {})
            result.append(
                DeadLetter(
                    dlq_offset=seq,
                    topic=headers.get(HEADER_DLQ_TOPIC, topic),
                    group=headers.get(HEADER_DLQ_GROUP, ""),
                    original_offset=int(headers.get(HEADER_DLQ_OFFSET, "-1")),
                    key=headers.get(HEADER_KEY),
                    value=raw.data or b"",
                    headers=_user_headers(headers),
                    error=json.loads(headers.get(HEADER_DLQ_ERROR, '""')),
                    attempts=int(headers.get(HEADER_DLQ_ATTEMPTS, "0")),
                    failed_at=float(headers.get(HEADER_DLQ_FAILED_AT, "0")),
                )
            )
        return result

    async def _dead_letters(
        self, topic: str, limit: int | None, offsets: Sequence[int] | None
    ) -> list[tuple[int, Any]]:
        stream = _stream(dlq_topic(topic))
        try:
            info = await self._js.stream_info(stream)
        except NotFoundError:
            return []
        state = info.state
        if not state.messages:
            return []
        seqs = (
            sorted(set(offsets))
            if offsets is not None
            else range(state.first_seq, state.last_seq + 1)
        )
        found: list[tuple[int, Any]] = []
        for seq in seqs:
            if limit is not None and len(found) >= limit:
                break
            try:
                found.append((seq, await self._js.get_msg(stream, seq)))
            except NotFoundError:
                continue
            except Exception as exc:
                raise BusError(f"reading dead letter {seq} of {topic!r}: {exc}") from exc
        return found

    async def dlq_redrive(self, topic: str, *, offsets: Sequence[int] | None = None) -> int:
        self._conn()
        check_topic_name(topic)
        letters = await self._dead_letters(topic, None, offsets)
        stream = _stream(dlq_topic(topic))
        for seq, raw in letters:
            headers = dict(raw.headers or {})
            message = OutgoingMessage(
                raw.data or b"", headers.get(HEADER_KEY), _user_headers(headers)
            )
            target = {HEADER_REDRIVE_GROUP: headers.get(HEADER_DLQ_GROUP, "")}
            await self._ensure_topic(topic)
            await self._publish(topic, [message], target)
            with contextlib.suppress(NotFoundError):
                await self._js.delete_msg(stream, seq)
        return len(letters)


def _seq_of(entry: _Entry) -> int:
    return entry.seq


def _pub_ack(topic: str, answer: Msg) -> tuple[int, bool]:
    """(stream sequence, duplicate) of a PubAck; a JetStream error as a BusError."""
    status = (answer.headers or {}).get("Status")
    if status is not None:
        reason = "no stream answers (no responders)" if status == "503" else f"status {status}"
        raise BusError(f"publish to {topic!r} failed: {reason}")
    try:
        reply = json.loads(answer.data)
    except ValueError as exc:
        raise BusError(f"publish to {topic!r}: unreadable PubAck {answer.data[:80]!r}") from exc
    error = reply.get("error")
    if error is not None:
        raise BusError(
            f"publish to {topic!r} failed: JetStream {error.get('code')}"
            f" ({error.get('err_code')}): {error.get('description')}"
        )
    return int(reply["seq"]), bool(reply.get("duplicate", False))


def _nak(delay: float) -> bytes:
    if delay <= 0:
        return b"-NAK"
    return b"-NAK " + json.dumps({"delay": int(delay * NS)}).encode()

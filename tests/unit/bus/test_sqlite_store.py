"""The embedded bus's internals: key ordering across the in-memory window and the ``inflight``
rows, stale leases, retention of held messages, topic counters, dead letters and redrive.

Leases and backoffs use real time here (a tenth of a second), since windows live on the
event loop of a running bus.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sampan.bus.base import Delivery, OutgoingMessage, Retention, dlq_topic
from sampan.bus.retry import RetryPolicy
from sampan.bus.sqlite import SqliteBus, SqliteBusOptions
from sampan.bus.sqlite_schema import message_table

NO_RETRY = RetryPolicy(max_attempts=1)
RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.2, jitter=0.0)
SHORT = 0.1


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SqliteBus]:
    instance = SqliteBus(f"sqlite:///{tmp_path / 'bus.db'}")
    await instance.start()
    yield instance
    await instance.close()


async def publish(bus: SqliteBus, topic: str, *keys: str | None) -> list[int]:
    return await bus.publish_batch(topic, [OutgoingMessage(f"v{k}".encode(), key=k) for k in keys])


async def fetch(
    bus: SqliteBus, topic: str = "t", group: str = "g", *, lease: float = 10.0, most: int = 100
) -> list[Delivery]:
    return await bus.fetch(topic, group, consumer="c", max_messages=most, lease_seconds=lease)


def offsets(deliveries: list[Delivery]) -> list[int]:
    return [d.offset for d in deliveries]


async def counters_match(bus: SqliteBus, topic: str) -> None:
    """The topic row's messages/bytes counters equal what its table really holds."""

    def check(store: object, now: float) -> None:
        conn = bus._store.conn  # type: ignore[union-attr]
        topic_id, messages, size = conn.execute(
            "SELECT id, messages, bytes FROM topics WHERE name = ?", (topic,)
        ).fetchone()
        real = conn.execute(
            f"SELECT count(*), coalesce(sum(length(value)), 0) FROM {message_table(topic_id)}"
        ).fetchone()
        assert (messages, size) == tuple(real), f"counters of {topic}"

    await bus._call(check)


# -- key ordering ---------------------------------------------------------------------------


async def test_later_messages_of_a_key_wait_for_key(bus: SqliteBus) -> None:
    """Of a key's messages only the lowest unsettled one is leased; acking it frees the next."""
    await bus.create_group("t", "g")
    a0, a1, _, b0 = await publish(bus, "t", "a", "a", "a", "b")
    got = await fetch(bus)
    assert offsets(got) == [a0, b0]
    assert await fetch(bus) == []
    await bus.ack([got[0]])
    assert offsets(await fetch(bus)) == [a1]
    assert await bus.lag("t", "g") == 3


async def test_waiting_message_is_unblocked_on_dead_letter(bus: SqliteBus) -> None:
    """Dead-lettering a key's head lets the next message of that key go."""
    await bus.create_group("t", "g")
    _, a1, _ = await publish(bus, "t", "a", "a", "a")
    [d] = await fetch(bus)
    assert await bus.nack(d, "boom", NO_RETRY) is True
    assert offsets(await fetch(bus)) == [a1]


async def test_key_stays_blocked_while_head_backs_off(bus: SqliteBus) -> None:
    """A retry pending for the head (a row) keeps the rest of its key waiting (in memory)."""
    await bus.create_group("t", "g")
    a0, a1 = await publish(bus, "t", "a", "a")
    [d] = await fetch(bus)
    assert await bus.nack(d, "boom", RETRY) is False
    assert await fetch(bus) == []
    await asyncio.sleep(0.25)
    [retry] = await fetch(bus)
    assert (retry.offset, retry.attempt) == (a0, 2)
    assert await fetch(bus) == []
    await bus.ack([retry])
    assert offsets(await fetch(bus)) == [a1]


async def test_key_order_holds_under_random_operations(bus: SqliteBus) -> None:
    """Random publish/fetch/ack/nack/release/extend/replay never lease two messages of one
    key to a group at once, and every message is eventually acked."""
    rng = random.Random(1234)
    groups = ("g1", "g2")
    for g in groups:
        await bus.create_group("t", g)
    held: list[Delivery] = []
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.0, jitter=0.0)
    for _ in range(400):
        op = rng.random()
        if op < 0.25:
            keys = [rng.choice(("a", "b", "c", None)) for _ in range(rng.randint(1, 4))]
            await bus.publish_batch("t", [OutgoingMessage(b"x", key=k) for k in keys])
        elif op < 0.5:
            g = rng.choice(groups)
            held += await bus.fetch(
                "t", g, consumer="c", max_messages=rng.randint(1, 5), lease_seconds=30
            )
        elif held:
            d = held.pop(rng.randrange(len(held)))
            action = rng.random()
            if action < 0.5:
                await bus.ack([d])
            elif action < 0.75:
                await bus.nack(d, "x", retry)
            elif action < 0.9:
                await bus.release([d])
            else:
                await bus.extend([d], 30)
                held.append(d)
        if rng.random() < 0.01:
            g = rng.choice(groups)
            await bus.replay("t", g, offset=rng.randint(0, 20))
            held = [d for d in held if d.group != g]  # their leases were taken back
        for g in groups:
            keys = [d.key for d in held if d.group == g and d.key is not None]
            assert len(keys) == len(set(keys)), f"two messages of one key leased in {g}"
    for d in held:
        await bus.ack([d])
    for g in groups:  # drain: everything is delivered and settled in the end
        for _ in range(200):
            got = await fetch(bus, "t", g)
            await bus.ack(got)
            if not got and await bus.lag("t", g) == 0:
                break
        assert await bus.lag("t", g) == 0
    await counters_match(bus, "t")


# -- stale leases -------------------------------------------------------------------------


async def expired_and_redelivered(bus: SqliteBus) -> tuple[Delivery, Delivery]:
    """A delivery whose lease expired, and the newer delivery of the same message."""
    await bus.create_group("t", "g")
    await publish(bus, "t", "k")
    [old] = await fetch(bus, lease=SHORT)
    await asyncio.sleep(2 * SHORT)
    [new] = await fetch(bus)
    assert (new.offset, new.attempt) == (old.offset, old.attempt + 1)
    return old, new


async def test_stale_nack_does_nothing(bus: SqliteBus) -> None:
    old, new = await expired_and_redelivered(bus)
    assert await bus.nack(old, "late", RETRY) is False
    assert await bus.nack(old, "late", NO_RETRY) is False
    assert await bus.dlq_list("t") == []
    await bus.ack([new])
    assert await bus.lag("t", "g") == 0


async def test_stale_release_does_nothing(bus: SqliteBus) -> None:
    old, _ = await expired_and_redelivered(bus)
    await bus.release([old])
    assert await fetch(bus) == []


async def test_stale_extend_does_nothing(bus: SqliteBus) -> None:
    old, new = await expired_and_redelivered(bus)
    await bus.extend([old], 100.0)
    await bus.ack([new])
    assert await bus.lag("t", "g") == 0


async def test_stale_ack_after_replay_keeps_the_replayed_message(bus: SqliteBus) -> None:
    """An ack of a delivery from before a replay must not settle the message re-read after it."""
    await bus.create_group("t", "g")
    a0, a1 = await publish(bus, "t", "a", "a")
    [first] = await fetch(bus)
    await bus.ack([first])
    [second] = await fetch(bus)
    assert second.offset == a1
    await bus.replay("t", "g", offset=a0)  # operator replays while `second` is being handled
    [again] = await fetch(bus)
    assert again.offset == a0
    await bus.ack([second])  # the old consumer finishes its pre-replay delivery
    await bus.ack([again])
    [replayed] = await fetch(bus)
    assert replayed.offset == a1, "the replayed message was lost"


async def test_release_then_fetch_keeps_the_attempt(bus: SqliteBus) -> None:
    """release undoes the attempt count: the next fetch has the same attempt number."""
    await bus.create_group("t", "g")
    await publish(bus, "t", None)
    [d] = await fetch(bus)
    await bus.release([d])
    [again] = await fetch(bus)
    assert again.attempt == d.attempt == 1


# -- retention ----------------------------------------------------------------------------


async def test_retention_keeps_what_is_held(tmp_path: Path) -> None:
    """Age retention deletes old messages except those leased, delayed or waiting for a key."""
    bus = SqliteBus(
        f"sqlite:///{tmp_path / 'r.db'}",
        SqliteBusOptions(default_retention=Retention(max_age_seconds=0.2)),
    )
    await bus.start()
    try:
        await bus.create_group("t", "g")
        leased, waiting, done, other = await publish(bus, "t", "k", "k", None, None)
        [delayed] = await bus.publish_batch(
            "t", [OutgoingMessage(b"later", deliver_at=time.time() + 1000)]
        )
        got = await fetch(bus, lease=500.0)
        assert offsets(got) == [leased, done, other]
        await bus.ack([got[1]])
        await asyncio.sleep(0.3)
        assert await bus.enforce_retention() == 1  # only `done`: the rest is still held
        [info] = [t for t in await bus.topics() if t.name == "t"]
        assert info.messages == 4
        await counters_match(bus, "t")
        await bus.ack([got[0]])
        assert offsets(await fetch(bus)) == [waiting]
        assert delayed > other
    finally:
        await bus.close()


# -- dead letters and redrive ---------------------------------------------------------------


async def test_counters_stay_right_after_dead_letter_and_redrive(bus: SqliteBus) -> None:
    await bus.create_group("t", "g")
    await bus.publish_batch("t", [OutgoingMessage(b"abc", key="k"), OutgoingMessage(b"defgh")])
    for d in await fetch(bus):
        assert await bus.nack(d, "boom", NO_RETRY) is True
    await counters_match(bus, "t")
    await counters_match(bus, dlq_topic("t"))
    assert await bus.dlq_redrive("t") == 2
    await counters_match(bus, dlq_topic("t"))
    infos = {t.name: t for t in await bus.topics()}
    assert (infos[dlq_topic("t")].messages, infos[dlq_topic("t")].bytes) == (0, 0)
    assert (infos["t"].messages, infos["t"].bytes) == (4, 16)


async def test_redriven_message_targets_only_its_group(bus: SqliteBus) -> None:
    await bus.create_group("t", "bad")
    await bus.create_group("t", "good")
    await publish(bus, "t", "k")
    await bus.ack(await fetch(bus, "t", "good"))
    [d] = await fetch(bus, "t", "bad")
    await bus.nack(d, "boom", NO_RETRY)
    await bus.dlq_redrive("t")
    assert await fetch(bus, "t", "good") == []
    assert [x.value for x in await fetch(bus, "t", "bad")] == [b"vk"]
    assert {i.group: i.lag for i in await bus.groups("t")}["good"] == 0


async def test_dead_letter_works_without_auto_created_topics(tmp_path: Path) -> None:
    """With auto_create_topics off, dead-lettering still creates <topic>.dlq, losing nothing."""
    bus = SqliteBus(f"sqlite:///{tmp_path / 's.db'}", SqliteBusOptions(auto_create_topics=False))
    await bus.start()
    try:
        await bus.create_topic("t")
        await bus.create_group("t", "g")
        [offset] = await publish(bus, "t", "k")
        [d] = await fetch(bus)
        assert await bus.nack(d, "boom", NO_RETRY) is True
        assert [x.original_offset for x in await bus.dlq_list("t")] == [offset]
    finally:
        await bus.close()


async def test_a_vanished_head_unblocks_the_next_message_of_its_key(bus: SqliteBus) -> None:
    """If the message behind an expired head disappears (an operator emptied the topic),
    fetch forgets the head and lets the next message of its key go."""
    await bus.create_group("t", "g")
    a0, a1 = await publish(bus, "t", "a", "a")
    [d] = await fetch(bus, lease=SHORT)
    assert d.offset == a0

    def vanish(store: object, now: float) -> None:
        conn = bus._store.conn  # type: ignore[union-attr]
        (topic_id,) = conn.execute("SELECT id FROM topics WHERE name = 't'").fetchone()
        conn.execute(f"DELETE FROM {message_table(topic_id)} WHERE offset = ?", (a0,))

    await bus._call(vanish)
    await asyncio.sleep(2 * SHORT)
    got = await fetch(bus) or await fetch(bus)
    assert offsets(got) == [a1]

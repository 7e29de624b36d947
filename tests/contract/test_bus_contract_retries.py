"""Bus contract: at-least-once delivery, leases, retries with backoff and dead letters."""

from __future__ import annotations

import time

from bus_contract_helpers import fetch_nothing_for, fetch_until, offsets, unique

from sampan.bus.base import Bus, dlq_topic
from sampan.bus.retry import RetryPolicy


async def test_unacked_lease_expires_and_is_redelivered(bus: Bus, topic: str, group: str) -> None:
    """A leased message neither acked nor nacked comes back after its lease, attempt + 1."""
    await bus.create_group(topic, group)
    offset = await bus.publish(topic, b"x")
    started = time.monotonic()
    [d] = await fetch_until(bus, topic, group, lease_seconds=0.2)
    await fetch_nothing_for(bus, topic, group, 0.1, consumer="c2")
    [again] = await fetch_until(bus, topic, group, consumer="c2")
    assert time.monotonic() - started >= 0.19
    assert (again.offset, again.attempt) == (offset, d.attempt + 1)


async def test_acked_message_is_not_redelivered(bus: Bus, topic: str, group: str) -> None:
    """A message is done once acked: it does not come back after its lease would have ended."""
    await bus.create_group(topic, group)
    await bus.publish(topic, b"x")
    got = await fetch_until(bus, topic, group, lease_seconds=0.2)
    await bus.ack(got)
    await fetch_nothing_for(bus, topic, group, 0.35)
    assert await bus.lag(topic, group) == 0


async def test_nack_retries_after_backoff_with_next_attempt(
    bus: Bus, topic: str, group: str
) -> None:
    """nack schedules a retry: not redelivered before the backoff, then with attempt + 1."""
    await bus.create_group(topic, group)
    offset = await bus.publish(topic, b"x")
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.25, multiplier=1.0, jitter=0.0)
    for attempt in (1, 2, 3):
        [d] = await fetch_until(bus, topic, group, lease_seconds=10)
        assert (d.offset, d.attempt) == (offset, attempt)
        nacked = time.monotonic()
        assert await bus.nack(d, f"fail {attempt}", policy) is False
        await fetch_nothing_for(bus, topic, group, 0.15)
        [retry] = await fetch_until(bus, topic, group, lease_seconds=10)
        assert time.monotonic() - nacked >= 0.24
        assert (retry.offset, retry.attempt) == (offset, attempt + 1)
        await bus.release([retry])


async def test_dead_letter_after_max_attempts_keeps_metadata(
    bus: Bus, topic: str, group: str
) -> None:
    """After max_attempts failures the message moves to <topic>.dlq with error and metadata."""
    await bus.create_group(topic, group)
    offset = await bus.publish(topic, b"poison", key="order-1", headers={"trace": "abc"})
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.02, jitter=0.0)
    before = time.time()
    for attempt in (1, 2, 3):
        [d] = await fetch_until(bus, topic, group)
        assert d.attempt == attempt
        dead = await bus.nack(d, f"ValueError: bad {attempt}", policy)
        assert dead is (attempt == 3)
    await fetch_nothing_for(bus, topic, group, 0.1)
    assert await bus.lag(topic, group) == 0
    [letter] = await bus.dlq_list(topic)
    assert letter.topic == topic
    assert letter.group == group
    assert letter.original_offset == offset
    assert letter.key == "order-1"
    assert letter.value == b"poison"
    assert dict(letter.headers) == {"trace": "abc"}
    assert letter.error == "ValueError: bad 3"
    assert letter.attempts == 3
    assert before - 1 <= letter.failed_at <= time.time() + 1
    names = {t.name for t in await bus.topics()}
    assert dlq_topic(topic) in names


async def test_dlq_redrive_goes_only_to_the_failing_group(bus: Bus, topic: str) -> None:
    """dlq_redrive sends a dead letter back to the group that failed it, and to no other."""
    failing, healthy = unique("g"), unique("g")
    await bus.create_group(topic, failing)
    await bus.create_group(topic, healthy)
    await bus.publish(topic, b"payload", key="k", headers={"h": "1"})
    await bus.ack(await fetch_until(bus, topic, healthy))
    [d] = await fetch_until(bus, topic, failing)
    assert await bus.nack(d, "boom", RetryPolicy(max_attempts=1)) is True
    [letter] = await bus.dlq_list(topic)

    assert await bus.dlq_redrive(topic) == 1
    assert await bus.dlq_list(topic) == []
    [again] = await fetch_until(bus, topic, failing)
    assert (again.value, again.key, dict(again.headers)) == (b"payload", "k", {"h": "1"})
    assert again.attempt == 1
    await bus.ack([again])
    assert await bus.lag(topic, failing) == 0
    await fetch_nothing_for(bus, topic, healthy, 0.15)
    assert await bus.lag(topic, healthy) == 0
    assert letter.group == failing


async def test_dlq_redrive_selected_offsets(bus: Bus, topic: str, group: str) -> None:
    """dlq_redrive with offsets re-drives only those dead letters."""
    await bus.create_group(topic, group)
    await bus.publish(topic, b"a")
    await bus.publish(topic, b"b")
    for d in await fetch_until(bus, topic, group, count=2):
        assert await bus.nack(d, "boom", RetryPolicy(max_attempts=1)) is True
    letters = await bus.dlq_list(topic)
    assert sorted(letter.value for letter in letters) == [b"a", b"b"]
    chosen = next(letter for letter in letters if letter.value == b"b")
    assert await bus.dlq_redrive(topic, offsets=[chosen.dlq_offset]) == 1
    [again] = await fetch_until(bus, topic, group)
    assert again.value == b"b"
    assert [letter.value for letter in await bus.dlq_list(topic)] == [b"a"]


async def test_release_does_not_count_an_attempt(bus: Bus, topic: str, group: str) -> None:
    """release gives a message back for immediate redelivery with the same attempt number."""
    await bus.create_group(topic, group)
    offset = await bus.publish(topic, b"x")
    [d] = await fetch_until(bus, topic, group)
    await bus.release([d])
    started = time.monotonic()
    [again] = await fetch_until(bus, topic, group, consumer="c2")
    assert time.monotonic() - started < 1.0
    assert (again.offset, again.attempt) == (offset, d.attempt)


async def test_extend_keeps_a_lease_past_its_expiry(bus: Bus, topic: str, group: str) -> None:
    """extend renews a lease, so the message is not redelivered at the original expiry."""
    await bus.create_group(topic, group)
    await bus.publish(topic, b"x")
    [d] = await fetch_until(bus, topic, group, lease_seconds=0.2)
    await bus.extend([d], 1.0)
    await fetch_nothing_for(bus, topic, group, 0.4, consumer="c2")
    await bus.ack([d])
    assert await bus.lag(topic, group) == 0


async def test_stale_settlements_do_not_touch_a_newer_lease(
    bus: Bus, topic: str, group: str
) -> None:
    """nack/release of an expired delivery do nothing once the message was leased again."""
    await bus.create_group(topic, group)
    await bus.publish(topic, b"x")
    [old] = await fetch_until(bus, topic, group, lease_seconds=0.1)
    [new] = await fetch_until(bus, topic, group, consumer="c2", lease_seconds=10)
    assert new.attempt == old.attempt + 1
    await bus.release([old])
    assert await bus.nack(old, "late", RetryPolicy(max_attempts=1)) is False
    await fetch_nothing_for(bus, topic, group, 0.1, consumer="c3")
    assert await bus.dlq_list(topic) == []
    await bus.ack([new])
    assert (
        offsets(await bus.fetch(topic, group, consumer="c3", max_messages=5, lease_seconds=1)) == []
    )

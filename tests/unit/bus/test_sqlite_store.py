"""SqliteStore internals: key-ordering invariant, stale leases, retention, topic counters.

The store runs here on its own autocommit connection with an explicit clock (``now``), so
leases, backoffs and retention are tested without sleeping.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sampan.bus.base import Delivery, OutgoingMessage, Retention, dlq_topic
from sampan.bus.retry import RetryPolicy
from sampan.bus.sqlite_schema import WAITING_FOR_KEY, message_table, open_connection
from sampan.bus.sqlite_store import SqliteStore

T0 = 1_000_000.0
NO_RETRY = RetryPolicy(max_attempts=1)
RETRY = RetryPolicy(max_attempts=5, initial_backoff=1.0, jitter=0.0)


def make_store(path: Path, *, auto_create_topics: bool = True) -> SqliteStore:
    conn = open_connection(str(path), durability="normal")
    return SqliteStore(
        conn,
        auto_create_topics=auto_create_topics,
        default_retention=Retention(),
        max_in_flight_per_group=10_000,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = make_store(tmp_path / "bus.db")
    yield s
    s.conn.close()


def publish(store: SqliteStore, topic: str, *keys: str | None, now: float = T0) -> list[int]:
    return store.publish(topic, [OutgoingMessage(f"v{k}".encode(), key=k) for k in keys], now)


def fetch(
    store: SqliteStore, topic: str = "t", group: str = "g", *, now: float, lease: float = 10.0
) -> list[Delivery]:
    return store.fetch(topic, group, "c", 100, lease, now)


def inflight(store: SqliteStore, topic: str = "t", group: str = "g") -> dict[int, tuple]:
    """offset -> (key, visible_at, attempt, last_error) of the group's in-flight rows."""
    g = store.group(topic, group)
    return {
        offset: tuple(rest)
        for offset, *rest in store.conn.execute(
            "SELECT offset, key, visible_at, attempt, last_error FROM inflight WHERE group_id = ?",
            (g.id,),
        )
    }


def check_key_invariant(store: SqliteStore) -> None:
    """Per group and key: the lowest in-flight offset is not waiting, every later one is."""
    rows = store.conn.execute(
        "SELECT group_id, key, offset, visible_at FROM inflight WHERE key IS NOT NULL"
        " ORDER BY group_id, key, offset"
    ).fetchall()
    previous: tuple[int, str] | None = None
    for group_id, key, offset, visible_at in rows:
        head = (group_id, key) != previous
        previous = (group_id, key)
        if head:
            assert visible_at < WAITING_FOR_KEY, f"head {offset} of key {key!r} is stuck"
        else:
            assert visible_at >= WAITING_FOR_KEY, f"{offset} of key {key!r} is visible too"


def check_counters(store: SqliteStore, topic: str) -> None:
    """The topic row's messages/bytes counters equal what its table really holds."""
    topic_id, messages, size = store.conn.execute(
        "SELECT id, messages, bytes FROM topics WHERE name = ?", (topic,)
    ).fetchone()
    real = store.conn.execute(
        f"SELECT count(*), coalesce(sum(length(value)), 0) FROM {message_table(topic_id)}"
    ).fetchone()
    assert (messages, size) == tuple(real), f"counters of {topic}"


# -- key ordering ---------------------------------------------------------------------------


def test_later_messages_of_a_key_wait_for_key(store: SqliteStore) -> None:
    """Of a key's in-flight rows only the lowest offset is visible; later ones wait."""
    store.create_group("t", "g", "earliest", T0)
    a0, a1, a2, b0 = publish(store, "t", "a", "a", "a", "b")
    got = fetch(store, now=T0)
    assert [d.offset for d in got] == [a0, b0]
    rows = inflight(store)
    assert rows[a1][1] == rows[a2][1] == WAITING_FOR_KEY
    check_key_invariant(store)


def test_waiting_row_is_unblocked_on_ack(store: SqliteStore) -> None:
    """Acking a key's head makes exactly the next row of that key visible."""
    store.create_group("t", "g", "earliest", T0)
    a0, a1, a2 = publish(store, "t", "a", "a", "a")
    [d] = fetch(store, now=T0)
    store.ack([d], T0 + 1)
    rows = inflight(store)
    assert a0 not in rows
    assert rows[a1][1] == T0 + 1
    assert rows[a2][1] == WAITING_FOR_KEY
    check_key_invariant(store)
    assert [x.offset for x in fetch(store, now=T0 + 1)] == [a1]


def test_waiting_row_is_unblocked_on_dead_letter(store: SqliteStore) -> None:
    """Dead-lettering a key's head makes the next row of that key visible."""
    store.create_group("t", "g", "earliest", T0)
    _, a1, a2 = publish(store, "t", "a", "a", "a")
    [d] = fetch(store, now=T0)
    assert store.nack(d, "boom", NO_RETRY, T0 + 1) is True
    rows = inflight(store)
    assert rows[a1][1] == T0 + 1
    assert rows[a2][1] == WAITING_FOR_KEY
    check_key_invariant(store)


def test_waiting_row_stays_blocked_while_head_backs_off(store: SqliteStore) -> None:
    """A retry pending for the head keeps the rest of its key waiting."""
    store.create_group("t", "g", "earliest", T0)
    a0, a1 = publish(store, "t", "a", "a")
    [d] = fetch(store, now=T0)
    assert store.nack(d, "boom", RETRY, T0) is False
    assert inflight(store)[a0][1:] == (T0 + 1.0, 1, "boom")
    assert fetch(store, now=T0 + 0.5) == []
    [retry] = fetch(store, now=T0 + 1.0)
    assert (retry.offset, retry.attempt) == (a0, 2)
    assert inflight(store)[a1][1] == WAITING_FOR_KEY


def test_key_invariant_holds_under_random_operations(store: SqliteStore) -> None:
    """Random publish/fetch/ack/nack/release/extend/expiry/replay keep the key invariant."""
    rng = random.Random(1234)
    for g in ("g1", "g2"):
        store.create_group("t", g, "earliest", T0)
    now = T0
    held: list[Delivery] = []
    settled: set[tuple[str, int]] = set()
    for _ in range(600):
        op = rng.random()
        now += rng.choice((0.0, 0.1, 0.5, 2.0))
        if op < 0.25:
            keys = [rng.choice(("a", "b", "c", None)) for _ in range(rng.randint(1, 4))]
            msgs = [
                OutgoingMessage(b"x", key=k, deliver_at=now + 1 if rng.random() < 0.1 else None)
                for k in keys
            ]
            store.publish("t", msgs, now)
        elif op < 0.5:
            g = rng.choice(("g1", "g2"))
            held += store.fetch("t", g, "c", rng.randint(1, 5), rng.choice((1.0, 5.0)), now)
        elif held:
            d = held.pop(rng.randrange(len(held)))
            action = rng.random()
            if action < 0.5:
                store.ack([d], now)
                settled.add((d.group, d.offset))
            elif action < 0.75:
                store.nack(d, "x", RetryPolicy(max_attempts=3, initial_backoff=0.5), now)
            elif action < 0.9:
                store.release([d], now)
            else:
                store.extend([d], 3.0, now)
                held.append(d)
        if rng.random() < 0.01:
            store.replay("t", rng.choice(("g1", "g2")), rng.randint(0, 20), None)
        check_key_invariant(store)
    check_counters(store, "t")


# -- stale leases -------------------------------------------------------------------------


def expired_and_released(store: SqliteStore) -> tuple[Delivery, Delivery]:
    """A delivery whose lease expired, and the newer delivery of the same message."""
    store.create_group("t", "g", "earliest", T0)
    publish(store, "t", "k")
    [old] = fetch(store, now=T0, lease=1.0)
    [new] = fetch(store, now=T0 + 2, lease=10.0)
    assert (new.offset, new.attempt) == (old.offset, old.attempt + 1)
    return old, new


def test_stale_nack_does_nothing(store: SqliteStore) -> None:
    """A nack carrying an old attempt number leaves the newer lease alone."""
    old, _ = expired_and_released(store)
    before = inflight(store)
    assert store.nack(old, "late", RETRY, T0 + 3) is False
    assert inflight(store) == before
    assert store.nack(old, "late", NO_RETRY, T0 + 3) is False
    assert inflight(store) == before
    assert store.dlq_list("t", 10) == []


def test_stale_release_does_nothing(store: SqliteStore) -> None:
    """A release carrying an old attempt number neither frees nor un-counts the newer lease."""
    old, _ = expired_and_released(store)
    before = inflight(store)
    store.release([old], T0 + 3)
    assert inflight(store) == before
    assert fetch(store, now=T0 + 3) == []


def test_stale_extend_does_nothing(store: SqliteStore) -> None:
    """An extend carrying an old attempt number does not change the newer lease."""
    old, _ = expired_and_released(store)
    before = inflight(store)
    store.extend([old], 100.0, T0 + 3)
    assert inflight(store) == before


def test_stale_ack_after_replay_keeps_the_replayed_message(store: SqliteStore) -> None:
    """An ack of a delivery from before a replay must not settle the message re-read after it."""
    store.create_group("t", "g", "earliest", T0)
    a0, a1 = publish(store, "t", "a", "a")
    [first] = fetch(store, now=T0)
    store.ack([first], T0)
    [second] = fetch(store, now=T0)
    assert second.offset == a1
    store.replay("t", "g", a0, None)  # operator replays while `second` is being handled
    [again] = fetch(store, now=T0 + 1)
    assert again.offset == a0
    assert inflight(store)[a1][1] == WAITING_FOR_KEY
    store.ack([second], T0 + 1)  # the old consumer finishes its pre-replay delivery
    store.ack([again], T0 + 2)
    [replayed] = fetch(store, now=T0 + 2)
    assert replayed.offset == a1, "the replayed message was lost"


def test_release_then_fetch_keeps_the_attempt(store: SqliteStore) -> None:
    """release undoes the attempt count: the next fetch has the same attempt number."""
    store.create_group("t", "g", "earliest", T0)
    publish(store, "t", None)
    [d] = fetch(store, now=T0)
    store.release([d], T0)
    [again] = fetch(store, now=T0)
    assert again.attempt == d.attempt == 1


# -- retention ----------------------------------------------------------------------------


def test_retention_by_age_keeps_in_flight_rows(store: SqliteStore) -> None:
    """Age retention deletes old messages except those leased, delayed or waiting for a key."""
    store.create_topic("t", Retention(max_age_seconds=10))
    store.create_group("t", "g", "earliest", T0)
    leased, waiting, done, other = publish(store, "t", "k", "k", None, None)
    [delayed] = store.publish("t", [OutgoingMessage(b"later", deliver_at=T0 + 100)], T0)
    got = fetch(store, now=T0, lease=500.0)
    assert [d.offset for d in got] == [leased, done, other]
    store.ack([got[1]], T0)
    assert store.enforce_retention(T0 + 60) == 1  # only `done`: the rest is still in flight
    table = message_table(store.topic("t").id)
    kept = {o for (o,) in store.conn.execute(f"SELECT offset FROM {table}")}
    assert kept == {leased, waiting, other, delayed}
    check_counters(store, "t")
    store.ack([got[0]], T0 + 61)
    assert [d.offset for d in fetch(store, now=T0 + 61)] == [waiting]


def test_retention_by_size_keeps_in_flight_rows(store: SqliteStore) -> None:
    """Size retention keeps the newest max_bytes plus older messages still in flight."""
    store.create_topic("t", Retention(max_bytes=100))
    store.create_group("t", "g", "earliest", T0)
    store.publish("t", [OutgoingMessage(b"x" * 30)], T0)
    [head] = store.fetch("t", "g", "c", 1, 50.0, T0)
    store.publish("t", [OutgoingMessage(b"y" * 30) for _ in range(9)], T0)
    store.create_group("t", "other", "latest", T0)
    store.enforce_retention(T0)
    check_counters(store, "t")
    topic = next(t for t in store.topics() if t.name == "t")
    assert topic.bytes <= 100 + 30, "only the leased message may exceed max_bytes"
    assert head.offset == topic.first_offset


def test_retention_counters_stay_right(store: SqliteStore) -> None:
    """messages/bytes counters equal the table after retention by age and by size."""
    store.create_topic("t", Retention(max_age_seconds=5, max_bytes=50))
    for i in range(10):
        store.publish("t", [OutgoingMessage(b"z" * (i + 1))], T0 + i)
    store.enforce_retention(T0 + 7)
    check_counters(store, "t")
    store.enforce_retention(T0 + 100)
    check_counters(store, "t")
    assert next(t for t in store.topics() if t.name == "t").messages == 0


# -- dead letters and redrive ---------------------------------------------------------------


def test_counters_stay_right_after_dead_letter_and_redrive(store: SqliteStore) -> None:
    """Dead-lettering and re-driving keep both topics' messages/bytes counters exact."""
    store.create_group("t", "g", "earliest", T0)
    store.publish("t", [OutgoingMessage(b"abc", key="k"), OutgoingMessage(b"defgh")], T0)
    for d in fetch(store, now=T0):
        assert store.nack(d, "boom", NO_RETRY, T0) is True
    check_counters(store, "t")
    check_counters(store, dlq_topic("t"))
    assert store.dlq_redrive("t", None, T0 + 1) == 2
    check_counters(store, "t")
    check_counters(store, dlq_topic("t"))
    dlq = next(t for t in store.topics() if t.name == dlq_topic("t"))
    assert (dlq.messages, dlq.bytes) == (0, 0)
    main = next(t for t in store.topics() if t.name == "t")
    assert (main.messages, main.bytes) == (4, 16)


def test_redriven_message_targets_only_its_group(store: SqliteStore) -> None:
    """A re-driven message is published for the failing group only; others skip it."""
    store.create_group("t", "bad", "earliest", T0)
    store.create_group("t", "good", "earliest", T0)
    publish(store, "t", "k")
    store.ack(store.fetch("t", "good", "c", 5, 5.0, T0), T0)
    [d] = store.fetch("t", "bad", "c", 5, 5.0, T0)
    store.nack(d, "boom", NO_RETRY, T0)
    store.dlq_redrive("t", None, T0)
    assert store.fetch("t", "good", "c", 5, 5.0, T0) == []
    assert [x.value for x in store.fetch("t", "bad", "c", 5, 5.0, T0)] == [b"vk"]
    assert {i.group: i.lag for i in store.groups("t")}["good"] == 0


def test_dead_letter_works_without_auto_created_topics(tmp_path: Path) -> None:
    """With auto_create_topics off, dead-lettering still creates <topic>.dlq, losing nothing."""
    store = make_store(tmp_path / "strict.db", auto_create_topics=False)
    try:
        store.create_topic("t", None)
        store.create_group("t", "g", "earliest", T0)
        offset = publish(store, "t", "k")[0]
        [d] = fetch(store, now=T0)
        conn = store.conn
        conn.execute("BEGIN IMMEDIATE")  # as SqliteBus does: one transaction, then commit
        try:
            dead = store.nack(d, "boom", NO_RETRY, T0)
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        except Exception:
            dead = None
        conn.execute("COMMIT")
        letters = store.dlq_list("t", 10)
        still_in_flight = offset in inflight(store)
        assert dead is True or still_in_flight, "the message is neither dead-lettered nor kept"
        assert [x.original_offset for x in letters] == [offset]
    finally:
        store.conn.close()


def test_a_vanished_head_unblocks_the_next_row_of_its_key(store: SqliteStore) -> None:
    """If the message behind an in-flight head disappears (an operator emptied the topic),
    fetch forgets the head and lets the next message of its key go."""
    store.create_group("t", "g", "earliest", T0)
    a0, a1 = publish(store, "t", "a", "a")
    [d] = fetch(store, now=T0, lease=1.0)
    assert d.offset == a0
    table = message_table(store.topic("t").id)
    store.conn.execute(f"DELETE FROM {table} WHERE offset = ?", (a0,))
    assert fetch(store, now=T0 + 2) == []  # the expired head is found gone and forgotten
    assert [x.offset for x in fetch(store, now=T0 + 2)] == [a1]
    check_key_invariant(store)

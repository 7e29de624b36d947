"""The embedded bus's operations, as plain synchronous SQL on one connection.

Every method runs inside a transaction opened by the caller (``SqliteBus`` batches many calls
into one transaction: group commit). Methods validate before they write so that a rejected
call leaves nothing behind in the shared transaction.

Invariant kept for key ordering: within a group, of the in-flight rows that share a key only
the lowest offset may be visible; the others wait with ``visible_at = WAITING_FOR_KEY`` until
the one before them is acked or dead-lettered.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import orjson

from sampan.bus.base import (
    HEADER_DLQ_GROUP,
    HEADER_DLQ_TOPIC,
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
)
from sampan.bus.dead_letters import dead_letter_headers, read_dead_letter
from sampan.bus.retry import RetryPolicy
from sampan.bus.sqlite_schema import WAITING_FOR_KEY, create_message_table, message_table

# 200 characters like the config allows, plus room for the ".dlq" suffix of its dead letters.
TOPIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}(\.dlq)?$")
EMPTY_HEADERS: Mapping[str, str] = MappingProxyType({})
RESERVED_HEADER_PREFIX = "sampan-"


def check_topic_name(name: str) -> None:
    if not TOPIC_NAME.match(name):
        raise BusError(
            f"invalid topic name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 200, starting with a letter or digit)"
        )


def encode_headers(headers: Mapping[str, str] | None) -> bytes | None:
    return orjson.dumps(dict(headers)) if headers else None


def decode_headers(raw: bytes | None) -> Mapping[str, str]:
    if not raw:
        return EMPTY_HEADERS
    decoded: dict[str, str] = orjson.loads(raw)
    return decoded


@dataclass(slots=True)
class TopicRow:
    id: int
    name: str


@dataclass(slots=True)
class GroupRow:
    id: int
    topic: TopicRow
    name: str


class SqliteStore:
    """Synchronous bus operations; not thread-safe — one thread owns it."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        auto_create_topics: bool,
        default_retention: Retention,
        max_in_flight_per_group: int,
    ) -> None:
        self.conn = conn
        self.auto_create_topics = auto_create_topics
        self.default_retention = default_retention
        self.max_in_flight_per_group = max_in_flight_per_group
        self._topics: dict[str, TopicRow] = {}
        self._groups: dict[tuple[str, str], GroupRow] = {}

    # -- lookups ------------------------------------------------------------------------------

    def forget_cached_names(self) -> None:
        """Another process may have deleted or recreated topics; look names up again."""
        self._topics.clear()
        self._groups.clear()

    def topic(self, name: str, *, create: bool | None = None) -> TopicRow:
        row = self._topics.get(name)
        if row is not None:
            return row
        found = self.conn.execute("SELECT id FROM topics WHERE name = ?", (name,)).fetchone()
        if found is None:
            if not (self.auto_create_topics if create is None else create):
                raise TopicNotFound(f"topic {name!r} does not exist")
            self.create_topic(name, None)
            return self._topics[name]
        row = TopicRow(found[0], name)
        self._topics[name] = row
        return row

    def group(self, topic: str, group: str) -> GroupRow:
        row = self._groups.get((topic, group))
        if row is not None:
            return row
        topic_row = self.topic(topic, create=False)
        found = self.conn.execute(
            "SELECT id FROM groups WHERE topic_id = ? AND name = ?", (topic_row.id, group)
        ).fetchone()
        if found is None:
            raise GroupNotFound(f"group {group!r} does not exist on topic {topic!r}")
        row = GroupRow(found[0], topic_row, group)
        self._groups[(topic, group)] = row
        return row

    # -- topics -------------------------------------------------------------------------------

    def create_topic(self, name: str, retention: Retention | None) -> None:
        check_topic_name(name)
        if retention is None:
            # Dead letters wait for an operator, so they are never aged out by default.
            retention = Retention() if name.endswith(".dlq") else self.default_retention
        now = time.time()
        self.conn.execute(
            "INSERT INTO topics (name, max_age, max_bytes, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET max_age = excluded.max_age,"
            " max_bytes = excluded.max_bytes",
            (name, retention.max_age_seconds, retention.max_bytes, now),
        )
        topic_id = self.conn.execute("SELECT id FROM topics WHERE name = ?", (name,)).fetchone()[0]
        create_message_table(self.conn, topic_id)
        self._topics[name] = TopicRow(topic_id, name)

    def delete_topic(self, name: str) -> None:
        topic = self.topic(name, create=False)
        self.conn.execute(
            "DELETE FROM inflight WHERE group_id IN (SELECT id FROM groups WHERE topic_id = ?)",
            (topic.id,),
        )
        self.conn.execute("DELETE FROM groups WHERE topic_id = ?", (topic.id,))
        self.conn.execute("DELETE FROM dedupe WHERE topic_id = ?", (topic.id,))
        self.conn.execute("DELETE FROM topics WHERE id = ?", (topic.id,))
        self.conn.execute(f"DROP TABLE IF EXISTS {message_table(topic.id)}")
        self.forget_cached_names()

    def topics(self) -> list[TopicInfo]:
        rows = self.conn.execute(
            "SELECT id, name, next_offset, messages, bytes, max_age, max_bytes"
            " FROM topics ORDER BY name"
        ).fetchall()
        result = []
        for topic_id, name, next_offset, messages, size, max_age, max_bytes in rows:
            first = self.conn.execute(
                f"SELECT min(offset) FROM {message_table(topic_id)}"
            ).fetchone()[0]
            groups = tuple(
                g[0]
                for g in self.conn.execute(
                    "SELECT name FROM groups WHERE topic_id = ? ORDER BY name", (topic_id,)
                )
            )
            result.append(
                TopicInfo(
                    name=name,
                    messages=messages,
                    bytes=size,
                    first_offset=next_offset if first is None else first,
                    next_offset=next_offset,
                    retention=Retention(max_age, max_bytes),
                    groups=groups,
                )
            )
        return result

    # -- publish ------------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        messages: Sequence[OutgoingMessage],
        now: float,
        *,
        target_group: int | None = None,
        internal: bool = False,
    ) -> list[int]:
        """``internal`` publishes (dead letters, re-drives) may carry ``sampan-`` headers."""
        if not messages:
            return []
        if not internal:
            for message in messages:
                for name in message.headers or ():
                    if name.startswith(RESERVED_HEADER_PREFIX):
                        raise BusError(f"header {name!r}: the 'sampan-' prefix is reserved")
        row = self.topic(topic)
        if any(m.dedupe_key is not None for m in messages):
            return self._publish_deduplicated(row, messages, now, target_group)
        return self._append(row, messages, now, target_group)

    def _publish_deduplicated(
        self,
        row: TopicRow,
        messages: Sequence[OutgoingMessage],
        now: float,
        target_group: int | None,
    ) -> list[int]:
        """Store only messages whose dedupe key is new; map the others to the first offset."""
        known: dict[str, int] = {}
        fresh: list[OutgoingMessage] = []
        for m in messages:
            key = m.dedupe_key
            if key is None:
                fresh.append(m)
            elif key not in known:
                found = self.conn.execute(
                    "SELECT offset FROM dedupe WHERE topic_id = ? AND key = ? AND expires_at > ?",
                    (row.id, key, now),
                ).fetchone()
                known[key] = -1 if found is None else found[0]
                if found is None:
                    fresh.append(m)
        offsets = iter(self._append(row, fresh, now, target_group)) if fresh else iter(())
        result: list[int] = []
        for m in messages:
            if m.dedupe_key is None:
                result.append(next(offsets))
            elif known[m.dedupe_key] == -1:
                known[m.dedupe_key] = offset = next(offsets)
                self.conn.execute(
                    "INSERT OR REPLACE INTO dedupe (topic_id, key, offset, expires_at)"
                    " VALUES (?, ?, ?, ?)",
                    (row.id, m.dedupe_key, offset, now + m.dedupe_ttl),
                )
                result.append(offset)
            else:
                result.append(known[m.dedupe_key])
        return result

    def _append(
        self,
        row: TopicRow,
        messages: Sequence[OutgoingMessage],
        now: float,
        target_group: int | None,
    ) -> list[int]:
        count = len(messages)
        size = sum(len(m.value) for m in messages)
        end = self.conn.execute(
            "UPDATE topics SET next_offset = next_offset + ?, messages = messages + ?,"
            " bytes = bytes + ? WHERE id = ? RETURNING next_offset",
            (count, count, size, row.id),
        ).fetchone()[0]
        first = end - count
        self.conn.executemany(
            f"INSERT INTO {message_table(row.id)}"
            " (offset, key, value, headers, published_at, deliver_at, target_group, size)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    first + i,
                    m.key,
                    m.value,
                    encode_headers(m.headers),
                    now,
                    m.deliver_at,
                    target_group,
                    len(m.value),
                )
                for i, m in enumerate(messages)
            ],
        )
        return list(range(first, end))

    # -- groups -------------------------------------------------------------------------------

    def create_group(self, topic: str, group: str, start: StartPosition, now: float) -> None:
        check_topic_name(group)
        row = self.topic(topic)
        if start == "earliest":
            first = self.conn.execute(
                f"SELECT min(offset) FROM {message_table(row.id)}"
            ).fetchone()[0]
            position = 0 if first is None else first
        else:
            position = self.conn.execute(
                "SELECT next_offset FROM topics WHERE id = ?", (row.id,)
            ).fetchone()[0]
        self.conn.execute(
            "INSERT INTO groups (topic_id, name, next_offset, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (topic_id, name) DO NOTHING",
            (row.id, group, position, now),
        )

    def groups(self, topic: str) -> list[GroupInfo]:
        row = self.topic(topic, create=False)
        (next_offset,) = self.conn.execute(
            "SELECT next_offset FROM topics WHERE id = ?", (row.id,)
        ).fetchone()
        first = self.conn.execute(f"SELECT min(offset) FROM {message_table(row.id)}").fetchone()[0]
        first = next_offset if first is None else first
        result = []
        for group_id, name, position in self.conn.execute(
            "SELECT id, name, next_offset FROM groups WHERE topic_id = ? ORDER BY name", (row.id,)
        ).fetchall():
            in_flight = self.conn.execute(
                "SELECT count(*) FROM inflight WHERE group_id = ?", (group_id,)
            ).fetchone()[0]
            unread = max(0, next_offset - max(position, first))
            result.append(GroupInfo(topic, name, unread + in_flight, in_flight, position))
        return result

    # -- fetch --------------------------------------------------------------------------------

    def fetch(
        self,
        topic: str,
        group: str,
        consumer: str,
        max_messages: int,
        lease_seconds: float,
        now: float,
    ) -> list[Delivery]:
        g = self.group(topic, group)
        table = message_table(g.topic.id)
        lease_until = now + lease_seconds
        conn = self.conn

        # 1. Messages already in flight that are due: retries, expired leases, released,
        #    delayed ones whose time has come, and ones whose predecessor was just acked.
        due = conn.execute(
            "SELECT offset, attempt, key FROM inflight WHERE group_id = ? AND visible_at <= ?"
            " ORDER BY visible_at LIMIT ?",
            (g.id, now, max_messages),
        ).fetchall()
        deliveries: list[Delivery] = []
        if due:
            leases = dict(zip((row[0] for row in due), self._lease_ids(len(due)), strict=True))
            conn.executemany(
                "UPDATE inflight SET visible_at = ?, attempt = attempt + 1, consumer = ?,"
                " lease = ? WHERE group_id = ? AND offset = ?",
                [(lease_until, consumer, leases[offset], g.id, offset) for offset, _, _ in due],
            )
            attempts = {offset: attempt + 1 for offset, attempt, _ in due}
            due_keys = [(offset, key) for offset, _, key in due]
            placeholders = ",".join("?" * len(due))
            found = conn.execute(
                f"SELECT offset, key, value, headers, published_at FROM {table}"
                f" WHERE offset IN ({placeholders}) ORDER BY offset",
                list(attempts),
            ).fetchall()
            for offset, key, value, headers, published_at in found:
                deliveries.append(
                    Delivery(
                        topic,
                        group,
                        offset,
                        key,
                        value,
                        decode_headers(headers),
                        published_at,
                        attempts.pop(offset),
                        leases[offset],
                    )
                )
            if attempts:  # the message vanished (topic emptied by an operator): forget it
                conn.executemany(
                    "DELETE FROM inflight WHERE group_id = ? AND offset = ?",
                    [(g.id, offset) for offset in attempts],
                )
                orphaned = [key for offset, key in due_keys if offset in attempts and key]
                if orphaned:  # whatever waited behind them may go now
                    self._next_in_line(g.id, orphaned, now)

        room = max_messages - len(deliveries)
        if room <= 0:
            return deliveries
        in_flight = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM inflight WHERE group_id = ? LIMIT ?)",
            (g.id, self.max_in_flight_per_group),
        ).fetchone()[0]
        room = min(room, self.max_in_flight_per_group - in_flight)
        if room <= 0:
            return deliveries

        # 2. Read new messages past the group's position and take them in flight.
        position = conn.execute("SELECT next_offset FROM groups WHERE id = ?", (g.id,)).fetchone()[
            0
        ]
        fresh = conn.execute(
            f"SELECT offset, key, value, headers, published_at, deliver_at, target_group"
            f" FROM {table} WHERE offset >= ? ORDER BY offset LIMIT ?",
            (position, room),
        ).fetchall()
        if not fresh:
            return deliveries
        conn.execute("UPDATE groups SET next_offset = ? WHERE id = ?", (fresh[-1][0] + 1, g.id))
        keys = {row[1] for row in fresh if row[1] is not None and not (row[5] and row[5] > now)}
        busy_keys: set[str] = set()
        if keys:
            busy_keys = {
                k
                for (k,) in conn.execute(
                    "SELECT DISTINCT key FROM inflight WHERE group_id = ?"
                    " AND key IN (SELECT value FROM json_each(?))",
                    (g.id, orjson.dumps(list(keys))),
                )
            }
        rows: list[tuple[int, int, str | None, float, int, str | None, int]] = []
        lease_ids = iter(self._lease_ids(len(fresh)))
        for offset, key, value, headers, published_at, deliver_at, target in fresh:
            if target is not None and target != g.id:
                continue  # re-driven for another group
            if deliver_at is not None and deliver_at > now:
                # Delayed messages are ordered by their due time, so they hold back no key.
                rows.append((g.id, offset, None, deliver_at, 0, None, 0))
                continue
            if key is not None:
                if key in busy_keys:
                    rows.append((g.id, offset, key, WAITING_FOR_KEY, 0, None, 0))
                    continue
                busy_keys.add(key)
            lease = next(lease_ids)
            rows.append((g.id, offset, key, lease_until, 1, consumer, lease))
            deliveries.append(
                Delivery(
                    topic,
                    group,
                    offset,
                    key,
                    value,
                    decode_headers(headers),
                    published_at,
                    1,
                    lease,
                )
            )
        conn.executemany(
            "INSERT INTO inflight (group_id, offset, key, visible_at, attempt, consumer, lease)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return deliveries

    def _lease_ids(self, count: int) -> range:
        """Fresh lease ids, unique for the life of the file (across replays and processes)."""
        end: int = self.conn.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'lease' RETURNING value", (count,)
        ).fetchone()[0]
        return range(end - count + 1, end + 1)

    # -- settling -----------------------------------------------------------------------------

    def _next_in_line(self, group_id: int, keys: Sequence[str], now: float) -> None:
        """Let the next message of each key go, now that the one before it is settled."""
        self.conn.executemany(
            "UPDATE inflight SET visible_at = ? WHERE group_id = ? AND visible_at >= ?"
            " AND offset = (SELECT min(offset) FROM inflight"
            "   WHERE group_id = ? AND key = ?)",
            [(now, group_id, WAITING_FOR_KEY, group_id, key) for key in keys],
        )

    def _has_waiting(self, group_id: int) -> bool:
        """One index probe that usually spares a per-key update for every ack."""
        return (
            self.conn.execute(
                "SELECT 1 FROM inflight WHERE group_id = ? AND visible_at >= ? LIMIT 1",
                (group_id, WAITING_FOR_KEY),
            ).fetchone()
            is not None
        )

    def ack(self, deliveries: Sequence[Delivery], now: float) -> None:
        by_group: dict[tuple[str, str], list[Delivery]] = {}
        for d in deliveries:
            by_group.setdefault((d.topic, d.group), []).append(d)
        for (topic, group), items in by_group.items():
            try:
                g = self.group(topic, group)
            except (GroupNotFound, TopicNotFound):
                continue  # deleted meanwhile: nothing left to settle
            # Match the attempt, like nack/release/extend: a delivery from before a replay (or
            # an expired lease) must not settle the row that replaced it.
            self.conn.executemany(
                "DELETE FROM inflight WHERE group_id = ? AND offset = ? AND lease = ?",
                [(g.id, d.offset, d.lease) for d in items],
            )
            keys = [d.key for d in items if d.key is not None]
            if keys and self._has_waiting(g.id):
                self._next_in_line(g.id, keys, now)

    def nack(self, d: Delivery, error: str, policy: RetryPolicy, now: float) -> bool:
        g = self.group(d.topic, d.group)
        if not policy.exhausted(d.attempt):
            self.conn.execute(
                "UPDATE inflight SET visible_at = ?, last_error = ?"
                " WHERE group_id = ? AND offset = ? AND lease = ?",
                (now + policy.backoff(d.attempt), error, g.id, d.offset, d.lease),
            )
            return False
        # Create the dead-letter topic before any write (even with auto_create_topics off):
        # failing after the DELETE below would commit the loss of the message.
        self.topic(dlq_topic(d.topic), create=True)
        gone = self.conn.execute(
            "DELETE FROM inflight WHERE group_id = ? AND offset = ? AND lease = ?",
            (g.id, d.offset, d.lease),
        ).rowcount
        if not gone:
            return False  # the lease had already passed to another consumer
        headers = dead_letter_headers(d, error, now)
        self.publish(
            dlq_topic(d.topic), [OutgoingMessage(d.value, d.key, headers)], now, internal=True
        )
        if d.key is not None:
            self._next_in_line(g.id, [d.key], now)
        return True

    def release(self, deliveries: Sequence[Delivery], now: float) -> None:
        for d in deliveries:
            try:
                g = self.group(d.topic, d.group)
            except (GroupNotFound, TopicNotFound):
                continue
            self.conn.execute(
                "UPDATE inflight SET visible_at = ?, attempt = attempt - 1"
                " WHERE group_id = ? AND offset = ? AND lease = ?",
                (now, g.id, d.offset, d.lease),
            )

    def extend(self, deliveries: Sequence[Delivery], lease_seconds: float, now: float) -> None:
        for d in deliveries:
            try:
                g = self.group(d.topic, d.group)
            except (GroupNotFound, TopicNotFound):
                continue
            self.conn.execute(
                "UPDATE inflight SET visible_at = ?"
                " WHERE group_id = ? AND offset = ? AND lease = ? AND visible_at < ?",
                (now + lease_seconds, g.id, d.offset, d.lease, WAITING_FOR_KEY),
            )

    # -- replay and dead letters --------------------------------------------------------------

    def replay(self, topic: str, group: str, offset: int | None, timestamp: float | None) -> int:
        check_replay_position(offset, timestamp)
        g = self.group(topic, group)
        table = message_table(g.topic.id)
        end = self.conn.execute(
            "SELECT next_offset FROM topics WHERE id = ?", (g.topic.id,)
        ).fetchone()[0]
        if timestamp is not None:
            found = self.conn.execute(
                f"SELECT offset FROM {table} WHERE published_at >= ?"
                " ORDER BY published_at, offset LIMIT 1",
                (timestamp,),
            ).fetchone()
            target = end if found is None else found[0]
        else:
            assert offset is not None
            target = min(offset, end)
        self.conn.execute("DELETE FROM inflight WHERE group_id = ? AND offset >= ?", (g.id, target))
        self.conn.execute("UPDATE groups SET next_offset = ? WHERE id = ?", (target, g.id))
        return int(target)

    def dlq_list(self, topic: str, limit: int) -> list[DeadLetter]:
        try:
            row = self.topic(dlq_topic(topic), create=False)
        except TopicNotFound:
            return []
        result = []
        for offset, key, value, raw in self.conn.execute(
            f"SELECT offset, key, value, headers FROM {message_table(row.id)}"
            " ORDER BY offset LIMIT ?",
            (limit,),
        ):
            result.append(read_dead_letter(offset, topic, key, value, decode_headers(raw)))
        return result

    def dlq_redrive(self, topic: str, offsets: Sequence[int] | None, now: float) -> int:
        try:
            dlq = self.topic(dlq_topic(topic), create=False)
        except TopicNotFound:
            return 0
        table = message_table(dlq.id)
        if offsets is None:
            rows = self.conn.execute(
                f"SELECT offset, key, value, headers, size FROM {table} ORDER BY offset"
            ).fetchall()
        else:
            wanted = sorted(set(offsets))
            rows = (
                self.conn.execute(
                    f"SELECT offset, key, value, headers, size FROM {table}"
                    f" WHERE offset IN ({','.join('?' * len(wanted))}) ORDER BY offset",
                    wanted,
                ).fetchall()
                if wanted
                else []
            )
        moved = 0
        for offset, key, value, raw, size in rows:
            headers = dict(decode_headers(raw))
            group_name = headers.get(HEADER_DLQ_GROUP, "")
            origin = headers.get(HEADER_DLQ_TOPIC, topic)
            try:
                g = self.group(origin, group_name)
            except (GroupNotFound, TopicNotFound):
                continue  # its group is gone; leave it for an operator to inspect
            clean = {k: v for k, v in headers.items() if not k.startswith("sampan-dlq-")}
            self.publish(
                origin, [OutgoingMessage(value, key, clean)], now, target_group=g.id, internal=True
            )
            self.conn.execute(f"DELETE FROM {table} WHERE offset = ?", (offset,))
            self.conn.execute(
                "UPDATE topics SET messages = messages - 1, bytes = bytes - ? WHERE id = ?",
                (size, dlq.id),
            )
            moved += 1
        return moved

    # -- retention ----------------------------------------------------------------------------

    def enforce_retention(self, now: float) -> int:
        self.conn.execute("DELETE FROM dedupe WHERE expires_at <= ?", (now,))
        removed = 0
        for topic_id, max_age, max_bytes, size in self.conn.execute(
            "SELECT id, max_age, max_bytes, bytes FROM topics"
            " WHERE max_age IS NOT NULL OR max_bytes IS NOT NULL"
        ).fetchall():
            table = message_table(topic_id)
            cutoff: int | None = None
            if max_age is not None:
                found = self.conn.execute(
                    f"SELECT offset FROM {table} WHERE published_at >= ?"
                    " ORDER BY published_at LIMIT 1",
                    (now - max_age,),
                ).fetchone()
                cutoff = (
                    self.conn.execute(f"SELECT max(offset) + 1 FROM {table}").fetchone()[0]
                    if found is None
                    else found[0]
                )
            if max_bytes is not None and size > max_bytes:
                excess = size - max_bytes
                freed = 0
                for offset, row_size in self.conn.execute(
                    f"SELECT offset, size FROM {table} ORDER BY offset"
                ):
                    freed += row_size
                    if freed >= excess:
                        cutoff = max(cutoff or 0, offset + 1)
                        break
            if not cutoff:
                continue
            protected = (
                f"offset < ? AND offset NOT IN (SELECT offset FROM inflight WHERE group_id IN"
                f" (SELECT id FROM groups WHERE topic_id = {int(topic_id)}))"
            )
            count, freed_bytes = self.conn.execute(
                f"SELECT count(*), coalesce(sum(size), 0) FROM {table} WHERE {protected}",
                (cutoff,),
            ).fetchone()
            if count:
                self.conn.execute(f"DELETE FROM {table} WHERE {protected}", (cutoff,))
                self.conn.execute(
                    "UPDATE topics SET messages = messages - ?, bytes = bytes - ? WHERE id = ?",
                    (count, freed_bytes, topic_id),
                )
                removed += count
        return removed

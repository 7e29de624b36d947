"""The embedded bus's operations, as plain synchronous SQL on one connection.

Every method runs inside a transaction opened by the caller (``SqliteBus`` batches many calls
into one transaction: group commit). Methods validate before they write so that a rejected
call leaves nothing behind in the shared transaction.

The consumer side keeps a group's ordinary leases in memory, in a ``GroupWindow`` of the one
store that owns the group, and writes ``inflight`` rows only for what is exceptional (see
``sqlite_window.py``). Key ordering: for one key, rows come before the window's messages; the
window leases a key's next message only once no row and no earlier message holds the key.
Rows of files written before version 3 may wait with ``visible_at = WAITING_FOR_KEY`` until the
row before them is settled.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
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
from sampan.bus.sqlite_insert import InsertStatements
from sampan.bus.sqlite_schema import WAITING_FOR_KEY, create_message_table, message_table
from sampan.bus.sqlite_tail import Row
from sampan.stored_json import dumps_kept

# 200 characters like the config allows, plus room for the ".dlq" suffix of its dead letters.
TOPIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}(\.dlq)?$")
EMPTY_HEADERS: Mapping[str, str] = MappingProxyType({})
RESERVED_HEADER_PREFIX = "sampan-"
NEVER = float("inf")

_APPEND = (
    "UPDATE topics SET next_offset = next_offset + ?, messages = messages + ?,"
    " bytes = bytes + ? WHERE id = ? RETURNING next_offset, created_at"
)
_APPEND_AFTER_OWN = (
    "UPDATE topics SET next_offset = next_offset + ?, messages = messages + ?,"
    " bytes = bytes + ? WHERE id = ? AND next_offset = ? AND created_at = ?"
)
"""Changes nothing when another process appended (or recreated the topic) since."""

InflightRow = tuple[int, int, str | None, float, int, str | None, int]
"""(group_id, offset, key, visible_at, attempt, last_error, lease) of an ``inflight`` row."""


def check_topic_name(name: str) -> None:
    if not TOPIC_NAME.match(name):
        raise BusError(
            f"invalid topic name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 200, starting with a letter or digit)"
        )


def check_headers(messages: Sequence[OutgoingMessage]) -> None:
    for message in messages:
        for name in message.headers or ():
            if name.startswith(RESERVED_HEADER_PREFIX):
                raise BusError(f"header {name!r}: the 'sampan-' prefix is reserved")


def encode_headers(headers: Mapping[str, str] | None) -> bytes | None:
    """Headers as stored: JSON (rows are kept in memory a while, see `sampan.stored_json`)."""
    if not headers:
        return None
    return dumps_kept(headers if type(headers) is dict else dict(headers))


EncodedHeaders = list[bytes | None]


def encode_all_headers(messages: Sequence[OutgoingMessage]) -> EncodedHeaders | None:
    """Each message's headers as stored, or None when no message has any.

    Done by the caller, on the event loop's thread: the database thread then only binds
    values, and Python work there holds the GIL that the loop is waiting for."""
    if not any(m.headers for m in messages):
        return None
    return [encode_headers(m.headers) for m in messages]


def decode_headers(raw: bytes | None) -> Mapping[str, str]:
    if not raw:
        return EMPTY_HEADERS
    decoded: dict[str, str] = orjson.loads(raw)
    return decoded


@dataclass(frozen=True, slots=True)
class GroupState:
    """What an owner loads when it takes a group: its watermark and its rows."""

    position: int
    row_keys: dict[str, int]
    rows: int
    rows_due_at: float
    skip: set[int]


@dataclass(frozen=True, slots=True)
class Claim:
    group_id: int
    topic_id: int
    epoch: int
    owner_until: float
    state: GroupState | None
    """None when the claim only renewed a group whose state the owner already holds."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    rows: list[Row]
    owner: str | None
    epoch: int


@dataclass(frozen=True, slots=True)
class RowsFetched:
    deliveries: list[Delivery]
    vanished: list[str | None]
    """Keys of rows whose message was gone (the rows were deleted)."""
    next_due: float


@dataclass(frozen=True, slots=True)
class Nacked:
    dead: bool
    removed: tuple[int, str | None] | None
    """``(group_id, key)`` of the row removed by dead-lettering."""


@dataclass(frozen=True, slots=True)
class GroupsState:
    first: int
    end: int
    groups: list[tuple[int, int, GroupInfo]]
    """``(group_id, epoch, info as the file sees it)``, by name."""


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
        self._inserts = InsertStatements()
        self.appended: list[tuple[str, list[Row], int]] = []
        """Rows this store inserted since the bus last took them (``take_appended``): after
        the commit they are handed to this process's consumers from memory."""
        self._own_runs: dict[int, tuple[int, int, float]] = {}
        """Per topic id, the newest run of consecutive offsets this store appended (start,
        end, and the topic's ``created_at``, which tells a topic recreated under the same id
        by another process): no other process wrote in between."""

    # -- lookups ------------------------------------------------------------------------------

    def take_appended(self) -> list[tuple[str, list[Row], int]]:
        taken, self.appended = self.appended, []
        return taken

    def rolled_back(self, keep: int = 0) -> None:
        """The transaction was rolled back: what it appended was never written (all but the
        first ``keep`` entries, committed before it), and the offsets it counted as this
        store's may be another process's next."""
        del self.appended[keep:]
        self._own_runs.clear()

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
        self._inserts.forget(message_table(topic.id))
        self._own_runs.pop(topic.id, None)
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
        checked: bool = False,
        encoded: EncodedHeaders | None = None,
    ) -> list[int]:
        """``internal`` publishes (dead letters, re-drives) may carry ``sampan-`` headers.
        ``checked``: the caller already ran `check_headers`; ``encoded``: the headers as
        `encode_all_headers` gave them."""
        if not messages:
            return []
        if not internal and not checked:
            check_headers(messages)
        row = self.topic(topic)
        if any(m.dedupe_key is not None for m in messages):
            return self._publish_deduplicated(row, messages, now, target_group)
        return self._append(row, messages, now, target_group, encoded)

    def publish_many(
        self,
        topic: str,
        batches: Sequence[tuple[Sequence[OutgoingMessage], EncodedHeaders | None]],
        now: float,
    ) -> list[list[int] | BusError]:
        """Several callers' publishes (no dedupe keys, headers checked and encoded by the
        callers) to one topic, written together; each batch stays atomic."""
        results: list[list[int] | BusError] = []
        valid: list[OutgoingMessage] = []
        headers: EncodedHeaders | None = None
        for messages, encoded in batches:
            results.append([])
            if encoded is not None and headers is None:
                headers = [None] * len(valid)
            if headers is not None:
                headers.extend(encoded if encoded is not None else [None] * len(messages))
            valid.extend(messages)
        if valid:
            offsets = iter(self._append(self.topic(topic), valid, now, None, headers))
            for i, (batch, _) in enumerate(batches):
                results[i] = [next(offsets) for _ in batch]
        return results

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
        encoded: EncodedHeaders | None = None,
    ) -> list[int]:
        count = len(messages)
        size = sum(len(m.value) for m in messages)
        run = self._own_runs.get(row.id)
        # While no other process wrote to the topic since this store's last append, its next
        # offset is known here: the update only checks it, and takes one SQLite step instead
        # of two (RETURNING steps again to finish), one GIL handoff fewer per topic and commit.
        if run is not None and self._append_after_own(row.id, run, count, size):
            start, first, created_at = run[0], run[1], run[2]
            end = first + count
        else:  # another process wrote since (or none was known): a new run starts here
            end, created_at = self.conn.execute(_APPEND, (count, count, size, row.id)).fetchone()
            start = first = end - count
        self._own_runs[row.id] = (start, end, created_at)
        if encoded is None and any(m.headers for m in messages):
            encoded = [encode_headers(m.headers) if m.headers else None for m in messages]
        if encoded is None:
            rows: list[Row] = [
                (first + i, m.key, m.value, None, now, m.deliver_at, target_group, len(m.value))
                for i, m in enumerate(messages)
            ]
        else:
            rows = [
                (first + i, m.key, m.value, h, now, m.deliver_at, target_group, len(m.value))
                for i, (m, h) in enumerate(zip(messages, encoded, strict=True))
            ]
        self._inserts.write(self.conn, message_table(row.id), rows)
        self.appended.append((row.name, rows, size))
        return list(range(first, end))

    def _append_after_own(
        self, topic_id: int, run: tuple[int, int, float], count: int, size: int
    ) -> bool:
        cursor = self.conn.execute(
            _APPEND_AFTER_OWN, (count, count, size, topic_id, run[1], run[2])
        )
        return cursor.rowcount == 1

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

    def groups(self, topic: str) -> GroupsState:
        """Every group of the topic as the file sees it; the owner of a group corrects its
        own groups from memory (``OwnedGroups.correct``)."""
        row = self.topic(topic, create=False)
        (next_offset,) = self.conn.execute(
            "SELECT next_offset FROM topics WHERE id = ?", (row.id,)
        ).fetchone()
        first = self.conn.execute(f"SELECT min(offset) FROM {message_table(row.id)}").fetchone()[0]
        first = next_offset if first is None else first
        result = []
        for group_id, name, position, epoch in self.conn.execute(
            "SELECT id, name, next_offset, epoch FROM groups WHERE topic_id = ? ORDER BY name",
            (row.id,),
        ).fetchall():
            in_flight = self.conn.execute(
                "SELECT count(*) FROM inflight WHERE group_id = ?", (group_id,)
            ).fetchone()[0]
            unread = max(0, next_offset - max(position, first))
            info = GroupInfo(topic, name, unread + in_flight, in_flight, position)
            result.append((group_id, epoch, info))
        return GroupsState(first, next_offset, result)

    # -- ownership ----------------------------------------------------------------------------

    def claim(
        self,
        topic: str,
        group: str,
        owner: str,
        known_epoch: int | None,
        now: float,
        lease_seconds: float,
    ) -> Claim | None:
        """Own the group (or keep owning it) until ``now + 2 * lease_seconds``; None while
        another live owner holds it. One process at a time consumes a group; a dead owner's
        claim ends with its last lease. ``state`` is None when ``known_epoch`` is current."""
        g = self.group(topic, group)
        found = self.conn.execute(
            "SELECT next_offset, owner, owner_until, epoch FROM groups WHERE id = ?", (g.id,)
        ).fetchone()
        if found is None:
            self.forget_cached_names()
            raise GroupNotFound(f"group {group!r} does not exist on topic {topic!r}")
        position, current, owner_until, epoch = found
        until = now + 2 * lease_seconds
        if current == owner:
            self.conn.execute(
                "UPDATE groups SET owner_until = ? WHERE id = ? AND epoch = ?",
                (max(until, owner_until), g.id, epoch),
            )
            if epoch == known_epoch:
                return Claim(g.id, g.topic.id, epoch, max(until, owner_until), None)
        else:
            if current is not None and owner_until > now:
                return None
            epoch += 1
            taken = self.conn.execute(
                "UPDATE groups SET owner = ?, owner_until = ?, epoch = ?"
                " WHERE id = ? AND epoch = ?",
                (owner, until, epoch, g.id, epoch - 1),
            ).rowcount
            if not taken:
                return None
        return Claim(g.id, g.topic.id, epoch, until, self._group_state(g.id, position))

    def _group_state(self, group_id: int, position: int) -> GroupState:
        row_keys = dict(
            self.conn.execute(
                "SELECT key, count(*) FROM inflight WHERE group_id = ? AND key IS NOT NULL"
                " GROUP BY key",
                (group_id,),
            ).fetchall()
        )
        rows, due = self.conn.execute(
            "SELECT count(*), min(visible_at) FROM inflight WHERE group_id = ?", (group_id,)
        ).fetchone()
        skip = {
            o
            for (o,) in self.conn.execute(
                "SELECT offset FROM inflight WHERE group_id = ? AND offset >= ?",
                (group_id, position),
            )
        }
        return GroupState(position, row_keys, rows, NEVER if due is None else due, skip)

    def save_watermarks(self, owner: str, marks: Sequence[tuple[int, int, int]]) -> None:
        """Persist owned groups' watermarks ``(group_id, epoch, base)``; a group taken over
        or replayed meanwhile (another epoch) is left alone."""
        self.conn.executemany(
            "UPDATE groups SET next_offset = ? WHERE id = ? AND owner = ? AND epoch = ?",
            [(base, group_id, owner, epoch) for group_id, epoch, base in marks],
        )

    def release_groups(self, owner: str, marks: Sequence[tuple[int, int, int]]) -> None:
        """Hand every owned group back (on close): another process may consume at once; what
        this one still leased is delivered again from the watermark."""
        self.save_watermarks(owner, marks)
        self.conn.execute(
            "UPDATE groups SET owner = NULL, owner_until = 0 WHERE owner = ?", (owner,)
        )

    def reserve_leases(self, count: int) -> range:
        """Fresh lease ids, unique for the life of the file (across replays and processes)."""
        end: int = self.conn.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'lease' RETURNING value", (count,)
        ).fetchone()[0]
        return range(end - count + 1, end + 1)

    # -- reading ------------------------------------------------------------------------------

    def read(
        self, topic_id: int, group_id: int, start: int, limit: int, held_to: int | None = None
    ) -> ReadResult:
        """Messages from ``start`` on (other processes' publishes, catch-up), with the
        group's owner and epoch so the reader notices a takeover or a replay.

        ``held_to``: the reader holds every message from ``start`` to there in memory (its
        own publishes): the rows are read only if the topic has messages after it that are
        not this store's (its own newer ones reach the reader's memory after their commit)."""
        rows: list[Row] = []
        if held_to is None or not self._only_own_after(topic_id, held_to):
            rows = self.conn.execute(
                "SELECT offset, key, value, headers, published_at, deliver_at, target_group,"
                f" size FROM {message_table(topic_id)} WHERE offset >= ? ORDER BY offset LIMIT ?",
                (start, limit),
            ).fetchall()
        found = self.conn.execute(
            "SELECT owner, epoch FROM groups WHERE id = ?", (group_id,)
        ).fetchone()
        owner, epoch = (None, -1) if found is None else found
        return ReadResult(rows, owner, epoch)

    def _only_own_after(self, topic_id: int, offset: int) -> bool:
        """Whether every message of the topic after ``offset`` was appended by this store."""
        found = self.conn.execute(
            "SELECT next_offset, created_at FROM topics WHERE id = ?", (topic_id,)
        ).fetchone()
        if found is None:
            return False  # gone: the full read finds out what became of it
        end, created_at = found
        if end <= offset + 1:
            return True
        run = self._own_runs.get(topic_id)
        if run is None:
            return False
        start, own_end, own_created_at = run
        return own_end == end and own_created_at == created_at and start <= offset + 1

    def fetch_rows(
        self,
        topic: str,
        group: str,
        consumer: str,
        max_messages: int,
        lease_seconds: float,
        now: float,
    ) -> RowsFetched:
        """Lease the group's rows that are due: retries, expired or released leases, delayed
        messages whose time has come, and rows whose predecessor of the same key was settled
        (files from before version 3, replays)."""
        g = self.group(topic, group)
        lease_until = now + lease_seconds
        conn = self.conn
        due = conn.execute(
            "SELECT offset, attempt, key FROM inflight WHERE group_id = ? AND visible_at <= ?"
            " ORDER BY visible_at LIMIT ?",
            (g.id, now, max_messages),
        ).fetchall()
        deliveries: list[Delivery] = []
        vanished: list[str | None] = []
        if due:
            leases = dict(zip((row[0] for row in due), self.reserve_leases(len(due)), strict=True))
            conn.executemany(
                "UPDATE inflight SET visible_at = ?, attempt = attempt + 1, consumer = ?,"
                " lease = ? WHERE group_id = ? AND offset = ?",
                [(lease_until, consumer, leases[offset], g.id, offset) for offset, _, _ in due],
            )
            attempts = {offset: attempt + 1 for offset, attempt, _ in due}
            placeholders = ",".join("?" * len(due))
            found = conn.execute(
                f"SELECT offset, key, value, headers, published_at FROM {message_table(g.topic.id)}"
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
                vanished = [key for offset, _, key in due if offset in attempts]
                keyed = [key for key in vanished if key is not None]
                if keyed and self._has_waiting(g.id):  # whatever waited behind them may go now
                    self._next_in_line(g.id, keyed, now)
        (next_due,) = conn.execute(
            "SELECT min(visible_at) FROM inflight WHERE group_id = ?", (g.id,)
        ).fetchone()
        return RowsFetched(deliveries, vanished, NEVER if next_due is None else next_due)

    def write_rows(self, rows: Sequence[InflightRow]) -> None:
        """Rows for what became exceptional in an owner's window (retry, release, expiry,
        delayed message): ``(group_id, offset, key, visible_at, attempt, last_error, lease)``."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO inflight"
            " (group_id, offset, key, visible_at, attempt, last_error, lease)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    # -- settling rows ------------------------------------------------------------------------

    def _next_in_line(self, group_id: int, keys: Sequence[str], now: float) -> None:
        """Let the next row of each key go, now that the one before it is settled (rows wait
        for their key only in files from before version 3, or after a replay)."""
        self.conn.executemany(
            "UPDATE inflight SET visible_at = ? WHERE group_id = ? AND visible_at >= ?"
            " AND offset = (SELECT min(offset) FROM inflight"
            "   WHERE group_id = ? AND key = ?)",
            [(now, group_id, WAITING_FOR_KEY, group_id, key) for key in keys],
        )

    def _has_waiting(self, group_id: int) -> bool:
        """One index probe that usually spares a per-key update."""
        return (
            self.conn.execute(
                "SELECT 1 FROM inflight WHERE group_id = ? AND visible_at >= ? LIMIT 1",
                (group_id, WAITING_FOR_KEY),
            ).fetchone()
            is not None
        )

    def _delete_row(self, g: GroupRow, d: Delivery) -> bool:
        """Settle a delivery that came from a row; False when its lease is stale."""
        found = self.conn.execute(
            "DELETE FROM inflight WHERE group_id = ? AND offset = ? AND lease = ? RETURNING key",
            (g.id, d.offset, d.lease),
        ).fetchone()
        return found is not None

    def ack(self, deliveries: Sequence[Delivery], now: float) -> list[tuple[int, str | None]]:
        """Settle deliveries that came from rows; returns ``(group_id, key)`` of each row
        removed (the owner's window frees those keys)."""
        by_group: dict[tuple[str, str], list[Delivery]] = {}
        for d in deliveries:
            by_group.setdefault((d.topic, d.group), []).append(d)
        removed: list[tuple[int, str | None]] = []
        for (topic, group), items in by_group.items():
            try:
                g = self.group(topic, group)
            except (GroupNotFound, TopicNotFound):
                continue  # deleted meanwhile: nothing left to settle
            # Match the lease, like nack/release/extend: a delivery from before a replay (or
            # an expired lease) must not settle the row that replaced it.
            gone = [d for d in items if self._delete_row(g, d)]
            removed.extend((g.id, d.key) for d in gone)
            keys = [d.key for d in gone if d.key is not None]
            if keys and self._has_waiting(g.id):
                self._next_in_line(g.id, keys, now)
        return removed

    def nack(self, d: Delivery, error: str, policy: RetryPolicy, now: float) -> Nacked:
        """Nack a delivery that came from a row (``dead_letter`` serves window leases)."""
        g = self.group(d.topic, d.group)
        if not policy.exhausted(d.attempt):
            self.conn.execute(
                "UPDATE inflight SET visible_at = ?, last_error = ?"
                " WHERE group_id = ? AND offset = ? AND lease = ?",
                (now + policy.backoff(d.attempt), error, g.id, d.offset, d.lease),
            )
            return Nacked(False, None)
        # Create the dead-letter topic before any write (even with auto_create_topics off):
        # failing after the DELETE below would commit the loss of the message.
        self.topic(dlq_topic(d.topic), create=True)
        if not self._delete_row(g, d):
            return Nacked(False, None)  # the lease had already passed to another consumer
        self.dead_letter(d, error, now)
        if d.key is not None and self._has_waiting(g.id):
            self._next_in_line(g.id, [d.key], now)
        return Nacked(True, (g.id, d.key))

    def dead_letter(self, d: Delivery, error: str, now: float) -> None:
        """Publish ``d`` to its dead-letter topic, created even with auto_create_topics off."""
        self.topic(dlq_topic(d.topic), create=True)
        headers = dead_letter_headers(d, error, now)
        self.publish(
            dlq_topic(d.topic), [OutgoingMessage(d.value, d.key, headers)], now, internal=True
        )

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

    def replay(
        self,
        topic: str,
        group: str,
        offset: int | None,
        timestamp: float | None,
        held: Callable[[int], Sequence[InflightRow]] | None = None,
    ) -> int:
        """``held(target)`` gives the rows for what the owner's window holds below the new
        position: it stays in flight, as if never held in memory."""
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
        if held is not None:
            self.write_rows(held(target))
        self.conn.execute("DELETE FROM inflight WHERE group_id = ? AND offset >= ?", (g.id, target))
        self.conn.execute(
            "UPDATE groups SET next_offset = ?, epoch = epoch + 1 WHERE id = ?", (target, g.id)
        )
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

    def enforce_retention(self, now: float, held: Mapping[str, Sequence[int]]) -> int:
        """``held``: offsets the owners' windows hold per topic (leased, waiting for a key);
        they stay, like the offsets of rows."""
        self.conn.execute("DELETE FROM dedupe WHERE expires_at <= ?", (now,))
        removed = 0
        for topic_id, name, max_age, max_bytes, size in self.conn.execute(
            "SELECT id, name, max_age, max_bytes, bytes FROM topics"
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
            # Rows and this process's windows (leased, waiting for their key) stay.
            held_here = orjson.dumps(list(held.get(name, ())))
            protected = (
                f"offset < ? AND offset NOT IN (SELECT offset FROM inflight WHERE group_id IN"
                f" (SELECT id FROM groups WHERE topic_id = {int(topic_id)}))"
                " AND offset NOT IN (SELECT value FROM json_each(?))"
            )
            count, freed_bytes = self.conn.execute(
                f"SELECT count(*), coalesce(sum(size), 0) FROM {table} WHERE {protected}",
                (cutoff, held_here),
            ).fetchone()
            if count:
                self.conn.execute(f"DELETE FROM {table} WHERE {protected}", (cutoff, held_here))
                self.conn.execute(
                    "UPDATE topics SET messages = messages - ?, bytes = bytes - ? WHERE id = ?",
                    (count, freed_bytes, topic_id),
                )
                removed += count
        return removed

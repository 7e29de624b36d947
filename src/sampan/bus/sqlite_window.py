"""The in-memory window of one consumer group owned by this bus instance (embedded backend).

Writing an ``inflight`` row for every leased message and deleting it on ack was most of the
embedded bus's cost. Instead, the bus instance that owns a group (``SqliteStore.claim``) keeps
the group's ordinary work in memory, Kafka-style:

* ``base`` (the watermark, persisted as ``groups.next_offset``): every offset below it is
  settled, or has an ``inflight`` row;
* ``read_to``: the next offset to read from the topic;
* between the two, the *open* offsets: leased (first deliveries; redeliveries come from rows) or
  waiting behind an earlier message with the same key.

Only what is exceptional becomes an ``inflight`` row: a retry scheduled by ``nack``, a delayed
message, a released or expired lease. A row keeps its key busy, so for one key the rows
always come before the window's entries. After a crash everything at or above the persisted
watermark is delivered again (at-least-once; duplicates are bounded by the window).

Not thread-safe: only the event loop's thread touches it (``OwnedGroups``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from sampan.bus.base import Delivery
from sampan.bus.sqlite_tail import Row

NEVER = float("inf")


@dataclass(slots=True)
class Parked:
    """A message read into the window but not leased (it waits for its key)."""

    key: str | None
    value: bytes
    headers: Mapping[str, str]
    published_at: float


@dataclass(eq=False, slots=True)
class GroupWindow:
    topic: str
    group: str
    group_id: int
    topic_id: int
    epoch: int
    base: int
    read_to: int
    persisted: int
    owner_until: float = 0.0
    rows_due_at: float = NEVER
    """The earliest ``visible_at`` of the group's rows: when the rows need a look."""
    next_poll: float = 0.0
    """When (``time.monotonic``) to look in the file for other processes' messages."""
    polling: bool = False
    """A look in the file runs in the background."""
    more_in_file: bool = False
    """The last look filled its batch: the file has more (a backlog), read on without waiting
    for ``next_poll``."""
    polled: list[Row] = field(default_factory=list)
    """What the last background look found, not taken yet (ascending offsets)."""
    leased: dict[int, Delivery] = field(default_factory=dict)
    until: dict[int, float] = field(default_factory=dict)
    min_until: float = NEVER
    parked: dict[int, Parked] = field(default_factory=dict)
    waiting: dict[str, deque[int]] = field(default_factory=dict)
    heads: set[str] = field(default_factory=set)
    """Keys with an entry in the window that is leased or ready to be leased."""
    ready: deque[int] = field(default_factory=deque)
    """Parked offsets whose key became free, in the order they may be leased."""
    order: deque[int] = field(default_factory=deque)
    """Open offsets in the order they were read (ascending): the watermark is its head."""
    row_keys: dict[str, int] = field(default_factory=dict)
    """How many ``inflight`` rows of the group carry each key (they keep the key busy)."""
    rows: int = 0
    skip: set[int] = field(default_factory=set)
    """Offsets at or above the watermark that already have a row (written by a former owner):
    reading them again must not deliver them twice."""

    # -- counting -----------------------------------------------------------------------------

    def open_count(self) -> int:
        return len(self.leased) + len(self.parked)

    def open_offsets(self) -> Iterator[int]:
        yield from self.leased
        yield from self.parked

    # -- reading new messages -----------------------------------------------------------------

    def lease_parked(
        self, offset: int, delivery: Delivery, lease_until: float, key: str | None
    ) -> Delivery:
        """Lease a parked message whose key became free (``take_ready``). New messages are
        leased by ``OwnedGroups._take``, which inlines this for speed."""
        self.leased[offset] = delivery
        self.until[offset] = lease_until
        self.min_until = min(self.min_until, lease_until)
        if key is not None:
            self.heads.add(key)
        return delivery

    def park(self, offset: int, message: Parked, key: str) -> None:
        """Keep a message whose key is busy until the key's earlier messages are settled."""
        self.order.append(offset)
        self.parked[offset] = message
        queue = self.waiting.get(key)
        if queue is None:
            queue = self.waiting[key] = deque()
        queue.append(offset)

    # -- settling -----------------------------------------------------------------------------

    def holds(self, d: Delivery) -> bool:
        """Whether ``d`` is this window's current lease of its offset (not a stale one)."""
        current = self.leased.get(d.offset)
        return current is not None and current.lease == d.lease

    def settle(self, d: Delivery) -> None:
        """Remove a held lease (ack, dead letter, or moved to a row); frees its key."""
        del self.leased[d.offset]
        del self.until[d.offset]
        if d.key is not None:
            self.heads.discard(d.key)
            self.promote(d.key)

    def to_row(self, d: Delivery) -> None:
        """A held lease becomes an ``inflight`` row (retry, release): the row keeps its key."""
        del self.leased[d.offset]
        del self.until[d.offset]
        if d.key is not None:
            self.heads.discard(d.key)
        self.add_row(d.key)

    def extend(self, d: Delivery, lease_until: float) -> None:
        self.until[d.offset] = lease_until

    def add_row(self, key: str | None) -> None:
        """A row was written for the group (retry, release, expiry, delayed message)."""
        self.rows += 1
        if key is not None:
            self.row_keys[key] = self.row_keys.get(key, 0) + 1

    def remove_row(self, key: str | None) -> None:
        """A row of the group is gone (acked, dead-lettered, vanished)."""
        self.rows = max(0, self.rows - 1)
        if key is None:
            return
        left = self.row_keys.get(key, 0) - 1
        if left > 0:
            self.row_keys[key] = left
            return
        self.row_keys.pop(key, None)
        self.promote(key)

    def promote(self, key: str) -> None:
        """Let the next parked message of ``key`` go, if nothing earlier holds the key."""
        if key in self.heads or key in self.row_keys:
            return
        queue = self.waiting.get(key)
        if not queue:
            return
        offset = queue.popleft()
        if not queue:
            del self.waiting[key]
        self.heads.add(key)
        self.ready.append(offset)

    def take_ready(self) -> tuple[int, Parked] | None:
        """The next parked message whose key is free; it becomes a head (lease it now)."""
        while self.ready:
            offset = self.ready.popleft()
            message = self.parked.pop(offset, None)
            if message is not None:
                return offset, message
        return None

    def expired(self, now: float) -> list[Delivery]:
        """Leases whose time is up, removed from the window (the caller writes their rows)."""
        if now < self.min_until:
            return []
        gone = [self.leased[o] for o, t in self.until.items() if t <= now]
        for d in gone:
            del self.leased[d.offset]
            del self.until[d.offset]
            if d.key is not None:
                self.heads.discard(d.key)
        self.min_until = min(self.until.values(), default=NEVER)
        return gone

    # -- the watermark ------------------------------------------------------------------------

    def advance(self) -> int:
        """Move the watermark past settled offsets; returns it."""
        order, leased, parked = self.order, self.leased, self.parked
        while order and order[0] not in leased and order[0] not in parked:
            order.popleft()
        self.base = order[0] if order else self.read_to
        return self.base

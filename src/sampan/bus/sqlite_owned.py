"""The consumer groups one embedded bus instance owns, served from memory on the event loop.

A fetch or an ack used to be a trip through the database thread, which waits behind the
commit (and fsync) of whatever is being published: the consumer got one batch per commit.
Here a group's ordinary work happens on the event loop without touching the database:

* messages published by this bus are handed over after their commit, from the tail cache;
* leases, acks and key ordering live in the group's ``GroupWindow``;
* the watermark is persisted in the background, batched (at-least-once allows it to lag).

The database is asked only for what memory cannot answer: taking or renewing the group,
messages from other processes (polled every ``poll_interval``, as before), rows (retries,
delayed messages, expired or released leases), fresh lease ids, settling rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from sampan.bus.base import Delivery, GroupInfo, take_leases
from sampan.bus.fast_messages import new_delivery
from sampan.bus.retry import RetryPolicy
from sampan.bus.sqlite_schema import WAITING_FOR_KEY
from sampan.bus.sqlite_store import (
    EMPTY_HEADERS,
    Claim,
    InflightRow,
    SqliteStore,
    decode_headers,
)
from sampan.bus.sqlite_tail import Row, TailCache
from sampan.bus.sqlite_window import GroupWindow, Parked
from sampan.bus.wakeups import Wakeups

log = logging.getLogger("sampan.bus.sqlite")

T = TypeVar("T")
LEASE_BLOCK = 65_536
"""Lease ids reserved from the file at a time."""
FLUSH_INTERVAL = 0.01
"""Seconds between watermark writes while acks keep coming."""


class Caller(Protocol):
    """Runs ``run`` on the database thread (``SqliteBus._call``)."""

    def __call__(
        self, run: Callable[[SqliteStore, float], T], *topics: str, must_sync: bool = False
    ) -> Awaitable[T]: ...


class OwnedGroups:
    def __init__(self, call: Caller, owner: str, poll_interval: float, max_in_flight: int) -> None:
        self._handing_back: set[asyncio.Task[None]] = set()  # see take_leases
        self._call = call
        self.owner = owner
        """This bus instance's name in ``groups.owner``."""
        self.poll_interval = poll_interval
        self.max_in_flight = max_in_flight
        self._windows: dict[tuple[str, str], GroupWindow] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tails: dict[str, TailCache] = {}
        self._lease_next = 0
        self._lease_end = 0
        self._flushing = False
        self._flush_task: asyncio.Future[None] | None = None
        self._polls: set[asyncio.Future[None]] = set()
        self.wakeups = Wakeups()
        self.closed = False

    # -- what this process published --------------------------------------------------------

    def published(self, appended: list[tuple[str, list[Row], int]]) -> None:
        """Committed rows of this process: consumers here read them from memory. Only topics
        consumed in this process keep a tail (`fetch` makes it): a flow's output topics,
        read elsewhere, would hold up to `TailCache`'s bound each for nothing, and every one
        of those rows is a tuple the garbage collector walks (~40 % of the young collections'
        work in the flows benchmark)."""
        for topic, rows, size in appended:
            tail = self._tails.get(topic)
            if tail is not None:
                tail.add(rows, size)
            self.wakeups.wake(topic)

    def forget_topic(self, topic: str) -> None:
        self._tails.pop(topic, None)
        for key in [k for k in self._windows if k[0] == topic]:
            del self._windows[key]
        self.wakeups.wake(topic)

    # -- fetching -----------------------------------------------------------------------------

    async def fetch(
        self,
        topic: str,
        group: str,
        consumer: str,
        max_messages: int,
        lease_seconds: float,
        wait_seconds: float,
    ) -> list[Delivery]:
        deadline = time.monotonic() + wait_seconds
        key = (topic, group)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        if topic not in self._tails:  # consumed here from now on: keep what we publish
            self._tails[topic] = TailCache()
        while True:
            wakeup = self.wakeups.waiter(topic)
            found = await take_leases(
                self._fetch_locked(
                    lock, topic, group, consumer, max_messages, lease_seconds, wait_seconds > 0
                ),
                self.release_all,
                self._handing_back,
            )
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or self.closed:
                return found
            # In-process publishes and settles wake us at once; other processes' messages,
            # due retries and expired leases are looked for every poll_interval.
            await self.wakeups.wait(wakeup, min(remaining, self.poll_interval))

    async def _fetch_locked(
        self,
        lock: asyncio.Lock,
        topic: str,
        group: str,
        consumer: str,
        max_messages: int,
        lease_seconds: float,
        background: bool,
    ) -> list[Delivery]:
        """One look, holding the group's lock (inside `take_leases`, which a cancelled fetch
        waits for: a fetch that gave up never overlaps the next one's read)."""
        async with lock:  # one fetch per group at a time: reads never overlap
            return await self._fetch_once(
                topic, group, consumer, max_messages, lease_seconds, background
            )

    async def _fetch_once(
        self,
        topic: str,
        group: str,
        consumer: str,
        max_messages: int,
        lease_seconds: float,
        background: bool,
    ) -> list[Delivery]:
        """``background``: the caller waits for a wake-up anyway, so a look in the file need
        not hold up what this process publishes meanwhile."""
        key = (topic, group)
        now = time.time()
        win = self._windows.get(key)
        if win is None or win.owner_until < now + lease_seconds:
            win = await self._claim(topic, group, win, now, lease_seconds)
            if win is None:
                return []
        if self._lease_end - self._lease_next < max_messages:
            block = max(max_messages, LEASE_BLOCK)
            ids = await self._call(lambda s, n: s.reserve_leases(block))
            self._lease_next, self._lease_end = ids.start, ids.stop
        lease_until = now + lease_seconds
        out: list[Delivery] = []
        expired = win.expired(now)
        if expired:  # redelivered through rows, so that their attempts are counted
            for d in expired:
                win.add_row(d.key)
            win.rows_due_at = now
            win.advance()
            await self._write_rows(
                win,
                [(win.group_id, d.offset, d.key, now, d.attempt, None, d.lease) for d in expired],
            )
        if win.rows and win.rows_due_at <= now:
            got = await self._call(
                lambda s, n: s.fetch_rows(topic, group, consumer, max_messages, lease_seconds, n)
            )
            out.extend(got.deliveries)
            if self._windows.get(key) is not win:
                return out
            win.rows_due_at = got.next_due
            for vanished in got.vanished:
                win.remove_row(vanished)
        while len(out) < max_messages and win.ready:
            item = win.take_ready()
            if item is None:
                break
            offset, p = item
            lease = self._lease_next
            self._lease_next += 1
            d = new_delivery(
                topic, group, offset, p.key, p.value, p.headers, p.published_at, 1, lease
            )
            out.append(win.lease_parked(offset, d, lease_until, p.key))
        room = min(max_messages - len(out), self.max_in_flight - win.open_count() - win.rows)
        if room <= 0:
            return out
        rows = self._from_polled(win, room) or self._from_tail(win, room)
        if background and time.monotonic() >= win.next_poll:
            # Even while this process's messages flow from memory: the look also notices a
            # replay or a takeover by another process (the group's epoch).
            self._poll(win, room)
        if not rows and self._must_read(win):
            if background:
                self._poll(win, room)
                return out
            if not await self._read(win, room):
                return out
            rows = self._from_polled(win, room)
        if rows:
            delayed = self._take(win, rows, out, lease_until, now)
            if delayed:
                await self._write_rows(win, delayed)
        return out

    def _from_tail(self, win: GroupWindow, room: int) -> list[Row]:
        tail = self._tails.get(win.topic)
        return [] if tail is None else tail.read(win.read_to, room)

    def _from_polled(self, win: GroupWindow, room: int) -> list[Row]:
        """Rows a look in the file found, from the window's read position on."""
        polled = win.polled
        if not polled:
            return []
        start = win.read_to
        taken = [row for row in polled if row[0] >= start][:room]
        win.polled = [row for row in polled if row[0] > taken[-1][0]] if taken else []
        return taken

    async def _read(self, win: GroupWindow, room: int) -> bool:
        """Look in the file past the window; False if the window is no longer ours."""
        start = win.read_to
        # What this process published from `start` on is in memory: the rows are read back
        # only when the topic has more (another process's). Read every 50 ms while a flow
        # consumed from memory, they took ~10 % of the database thread.
        tail = self._tails.get(win.topic)
        held_to = tail.last if tail is not None and tail.holds_all_from(start) else None
        win.polling = True
        try:
            got = await self._call(
                lambda s, n: s.read(win.topic_id, win.group_id, start, room, held_to)
            )
        finally:
            win.polling = False
        win.next_poll = time.monotonic() + self.poll_interval
        # A full read means the file has more (a backlog: written before a restart, by another
        # process, or before this one consumed the topic): once what it found is taken, read
        # on at once, not a batch per poll interval (that capped catching up at ~5,000 msg/s).
        win.more_in_file = len(got.rows) >= room
        if got.owner != self.owner or got.epoch != win.epoch:
            self._drop(win)  # taken over, or moved by a replay: start again from the file
            return False
        if self._windows.get((win.topic, win.group)) is not win:
            return False
        win.polled = got.rows
        return True

    def _poll(self, win: GroupWindow, room: int) -> None:
        """Look in the file in the background; the fetch waiting for work is woken."""
        if win.polling:
            return

        async def poll() -> None:
            try:
                if await self._read(win, room) and win.polled:
                    self.wakeups.wake(win.topic)
            except Exception as exc:  # the next fetch looks again
                log.debug("reading %s failed: %s", win.topic, exc)

        task = asyncio.ensure_future(poll())
        self._polls.add(task)
        task.add_done_callback(self._polls.discard)

    def _must_read(self, win: GroupWindow) -> bool:
        """Read the file when the last read left more there, when a poll is due, or when this
        process's newer messages show that another process wrote the ones before them."""
        if win.more_in_file or time.monotonic() >= win.next_poll:
            return True
        tail = self._tails.get(win.topic)
        return tail is not None and tail.last >= win.read_to

    def _take(
        self,
        win: GroupWindow,
        rows: list[Row],
        out: list[Delivery],
        lease_until: float,
        now: float,
    ) -> list[InflightRow]:
        """Take new messages into the window: lease them, or park them behind their key;
        returns the rows to write for delayed messages."""
        topic, group, group_id = win.topic, win.group, win.group_id
        skip, park = win.skip, win.park
        heads, row_keys = win.heads, win.row_keys
        leased, until, order = win.leased, win.until, win.order
        delayed: list[InflightRow] = []
        ids = self._lease_next
        start = win.read_to
        for offset, key, value, headers, published_at, deliver_at, target, _ in rows:
            if offset < start:
                continue  # read twice (a concurrent read got there first)
            if skip and offset in skip:
                skip.discard(offset)  # a former owner left a row for it
                continue
            if target is not None and target != group_id:
                continue  # re-driven for another group
            if deliver_at is not None and deliver_at > now:
                # Delayed messages are ordered by their due time, so they hold back no key.
                delayed.append((group_id, offset, None, deliver_at, 0, None, 0))
                continue
            if key is not None:
                if key in heads or key in row_keys:
                    park(offset, Parked(key, value, decode_headers(headers), published_at), key)
                    continue
                heads.add(key)
            d = new_delivery(
                topic,
                group,
                offset,
                key,
                value,
                decode_headers(headers) if headers else EMPTY_HEADERS,
                published_at,
                1,
                ids,
            )
            ids += 1
            order.append(offset)
            leased[offset] = d
            until[offset] = lease_until
            out.append(d)
        if ids != self._lease_next:
            win.min_until = min(win.min_until, lease_until)
        self._lease_next = ids
        win.read_to = max(win.read_to, rows[-1][0] + 1)
        for row in delayed:
            win.add_row(None)
            win.rows_due_at = min(win.rows_due_at, row[3])
        win.advance()
        return delayed

    async def _claim(
        self, topic: str, group: str, win: GroupWindow | None, now: float, lease_seconds: float
    ) -> GroupWindow | None:
        known = None if win is None else win.epoch
        claim: Claim | None = await self._call(
            lambda s, n: s.claim(topic, group, self.owner, known, n, lease_seconds)
        )
        key = (topic, group)
        current = self._windows.get(key)
        if claim is None:
            self._windows.pop(key, None)
            return None
        if claim.state is None:
            if current is not None and current.epoch == claim.epoch:
                current.owner_until = max(current.owner_until, claim.owner_until)
                return current
            claim = await self._call(
                lambda s, n: s.claim(topic, group, self.owner, None, n, lease_seconds)
            )
            if claim is None or claim.state is None:
                return None
        state = claim.state
        fresh = GroupWindow(
            topic,
            group,
            claim.group_id,
            claim.topic_id,
            claim.epoch,
            state.position,
            state.position,
            state.position,
            claim.owner_until,
            state.rows_due_at,
        )
        fresh.row_keys, fresh.rows, fresh.skip = dict(state.row_keys), state.rows, set(state.skip)
        self._windows[key] = fresh
        return fresh

    def _drop(self, win: GroupWindow) -> None:
        key = (win.topic, win.group)
        if self._windows.get(key) is win:
            del self._windows[key]

    async def _write_rows(self, win: GroupWindow, rows: list[InflightRow]) -> None:
        """Write rows the window already counts; if that fails, the window is reloaded."""
        try:
            await self._call(lambda s, n: s.write_rows(rows))
        except BaseException:
            self._drop(win)
            raise
        self.flush_soon()

    # -- settling -----------------------------------------------------------------------------

    def held(self, d: Delivery) -> GroupWindow | None:
        """The window holding ``d``'s lease, if ``d`` is a current window lease."""
        win = self._windows.get((d.topic, d.group))
        return win if win is not None and win.holds(d) else None

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Settle window leases in memory; returns the deliveries that came from rows (or
        are stale), which the database settles. (The hot path: ``GroupWindow.settle`` and
        ``advance`` inlined.)"""
        rest: list[Delivery] = []
        touched: list[GroupWindow] = []
        windows = self._windows
        topic = group = None
        win: GroupWindow | None = None
        leased: dict[int, Delivery] = {}
        until: dict[int, float] = {}
        for d in deliveries:
            if d.topic != topic or d.group != group:
                topic, group = d.topic, d.group
                win = windows.get((topic, group))
                if win is not None:
                    leased, until = win.leased, win.until
                    if win not in touched:
                        touched.append(win)
            current = leased.get(d.offset) if win is not None else None
            if current is None or current.lease != d.lease:
                rest.append(d)
                continue
            del leased[d.offset]
            del until[d.offset]
            key = d.key
            if key is not None and win is not None:
                win.heads.discard(key)
                if key in win.waiting:
                    win.promote(key)
        for w in touched:
            w.advance()
            if w.ready:
                self.wakeups.wake(w.topic)
        if touched:
            self.flush_soon()
        return rest

    def rows_removed(self, removed: Sequence[tuple[int, str | None]]) -> None:
        """Rows settled in the database: free their keys in the owners' windows."""
        if not removed:
            return
        by_id = {w.group_id: w for w in self._windows.values()}
        for group_id, key in removed:
            win = by_id.get(group_id)
            if win is not None:
                win.remove_row(key)
                if win.ready:
                    self.wakeups.wake(win.topic)

    def rows_changed(self, deliveries: Sequence[Delivery]) -> None:
        """Rows were rescheduled in the database (nack, release): look at them again."""
        for d in deliveries:
            win = self._windows.get((d.topic, d.group))
            if win is not None:
                win.rows_due_at = 0.0
                self.wakeups.wake(d.topic)

    async def nack(self, d: Delivery, error: str, policy: RetryPolicy) -> bool | None:
        """Nack a window lease; None when ``d`` is not one (the database handles it)."""
        win = self.held(d)
        if win is None:
            return None
        now = time.time()
        if not policy.exhausted(d.attempt):
            visible_at = now + policy.backoff(d.attempt)  # may raise: before any change
            win.to_row(d)
            win.rows_due_at = min(win.rows_due_at, visible_at)
            win.advance()
            await self._write_rows(
                win, [(win.group_id, d.offset, d.key, visible_at, d.attempt, error, d.lease)]
            )
            return False
        await self._call(lambda s, n: s.dead_letter(d, error, n), d.topic)
        if self.held(d) is win:
            win.settle(d)
            win.advance()
            self.flush_soon()
            self.wakeups.wake(d.topic)
        return True

    async def release(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Hand window leases back as rows due now (attempt not counted), written together;
        returns the rest."""
        rest: list[Delivery] = []
        now = time.time()
        rows: dict[GroupWindow, list[InflightRow]] = {}
        for d in deliveries:
            win = self.held(d)
            if win is None:
                rest.append(d)
                continue
            win.to_row(d)
            win.rows_due_at = now
            rows.setdefault(win, []).append(
                (win.group_id, d.offset, d.key, now, d.attempt - 1, None, d.lease)
            )
        for win, written in rows.items():
            win.advance()
            await self._write_rows(win, written)
            self.wakeups.wake(win.topic)
        return rest

    async def release_all(self, deliveries: Sequence[Delivery]) -> None:
        """`release` of window leases and of rows alike: ``SqliteBus.release``, and the
        leases of a cancelled fetch."""
        rest = await self.release(deliveries)
        if rest:
            topics = tuple({d.topic for d in rest})
            await self._call(lambda s, now: s.release(rest, now), *topics)
            self.rows_changed(rest)

    async def extend(self, deliveries: Sequence[Delivery], lease_seconds: float) -> list[Delivery]:
        """Renew window leases (and the ownership that covers them); returns the rest."""
        rest: list[Delivery] = []
        now = time.time()
        for d in deliveries:
            win = self.held(d)
            if win is None:
                rest.append(d)
                continue
            if win.owner_until < now + lease_seconds:
                await self._claim(d.topic, d.group, win, now, lease_seconds)
            if self.held(d) is win:
                win.extend(d, now + lease_seconds)
        return rest

    # -- the watermark ------------------------------------------------------------------------

    def flush_soon(self) -> None:
        """Persist moved watermarks in the background: at most one write every
        ``FLUSH_INTERVAL`` (each is a transaction publishes would queue behind; a crash
        meanwhile only redelivers a little more)."""
        if self._flushing or self.closed:
            return
        self._flushing = True
        asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._start_flush)

    def _start_flush(self) -> None:
        marks = self._marks()
        if not marks or self.closed:
            self._flushing = False
            return
        self._flush_task = asyncio.ensure_future(self._flush(marks))

    def _marks(self) -> list[tuple[int, int, int]]:
        return [
            (w.group_id, w.epoch, w.base) for w in self._windows.values() if w.base != w.persisted
        ]

    async def _flush(self, marks: list[tuple[int, int, int]]) -> None:
        try:
            await self._call(lambda s, n: s.save_watermarks(self.owner, marks))
        except Exception as exc:  # the next settle tries again; meanwhile a crash redelivers
            log.debug("watermark write failed: %s", exc)
            self._flushing = False
            return
        by_id = {w.group_id: w for w in self._windows.values()}
        for group_id, epoch, base in marks:
            win = by_id.get(group_id)
            if win is not None and win.epoch == epoch:
                win.persisted = base
        self._flushing = False
        if self._marks():
            self.flush_soon()

    async def close(self) -> None:
        """Hand the groups back with their watermarks."""
        self.closed = True
        if self._flush_task is not None:
            with contextlib.suppress(Exception):
                await self._flush_task
        marks = [(w.group_id, w.epoch, w.base) for w in self._windows.values()]
        with contextlib.suppress(Exception):
            await self._call(lambda s, n: s.release_groups(self.owner, marks))
        self._windows.clear()
        self.wakeups.wake_all()

    # -- operations ---------------------------------------------------------------------------

    def correct(
        self, first: int, end: int, groups: list[tuple[int, int, GroupInfo]]
    ) -> list[GroupInfo]:
        """Group infos as the file sees them, corrected from memory for owned groups."""
        by_id = {w.group_id: w for w in self._windows.values()}
        result = []
        for group_id, epoch, info in groups:
            win = by_id.get(group_id)
            if win is None or win.epoch != epoch:
                result.append(info)
                continue
            unread = max(0, end - max(win.read_to, first))
            in_flight = win.open_count() + win.rows
            result.append(
                GroupInfo(info.topic, info.group, unread + in_flight, in_flight, win.read_to)
            )
        return result

    def held_offsets(self) -> dict[str, list[int]]:
        """Offsets each topic's owned windows hold (retention keeps them)."""
        held: dict[str, list[int]] = {}
        for win in self._windows.values():
            held.setdefault(win.topic, []).extend(win.open_offsets())
        return held

    def detach(self, topic: str, group: str) -> Callable[[int], list[InflightRow]] | None:
        """Take the group's window away (a replay moves the group); returns what turns the
        part below the new position into rows."""
        win = self._windows.pop((topic, group), None)
        if win is None:
            return None
        self.wakeups.wake(topic)

        def below(target: int) -> list[InflightRow]:
            rows: list[InflightRow] = [
                (win.group_id, o, d.key, win.until[o], d.attempt, None, d.lease)
                for o, d in win.leased.items()
                if o < target
            ]
            ready = set(win.ready)
            rows.extend(
                (win.group_id, o, p.key, 0.0 if o in ready else WAITING_FOR_KEY, 0, None, 0)
                for o, p in win.parked.items()
                if o < target
            )
            return rows

        return below

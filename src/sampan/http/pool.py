"""Idle keep-alive connections per endpoint: LIFO reuse, a cap per endpoint, an idle timeout.

The most recently used connection is reused first (its upstream worker and TCP state are
warm, and the others age out). Expired connections are closed on the way (checked when
taken) and by one sweep timer per pool that only runs while something is idle, so a busy
pool pays no timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar


class Pooled(Protocol):
    idle_since: float

    @property
    def usable(self) -> bool:
        """Still open, and nothing happened on it while it was idle."""
        ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Pooled)
K = TypeVar("K", bound=Hashable)


class IdleConnections(Generic[K, C]):
    __slots__ = ("_idle", "_loop", "_sweep", "idle_timeout", "max_per_key")

    def __init__(self, *, max_per_key: int, idle_timeout: float) -> None:
        if max_per_key < 0:
            raise ValueError("max_idle_per_endpoint must be >= 0")
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0")
        self.max_per_key = max_per_key
        self.idle_timeout = idle_timeout
        self._idle: dict[K, list[C]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self, key: K, now: float) -> C | None:
        """The freshest usable idle connection for ``key`` (closing dead ones on the way)."""
        idle = self._idle.get(key)
        if not idle:
            return None
        deadline = now - self.idle_timeout
        for _ in range(len(idle)):  # bounded by the list
            conn = idle.pop()
            if conn.usable and conn.idle_since > deadline:
                return conn
            conn.close()
        return None

    def put(self, key: K, conn: C, now: float) -> bool:
        """Keep ``conn`` for reuse; False (caller closes it) when ``key`` has enough idle."""
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        if len(idle) >= self.max_per_key:
            return False
        conn.idle_since = now
        idle.append(conn)
        if self._sweep is None:
            self._arm()
        return True

    def discard(self, key: K, conn: C) -> None:
        """``conn`` closed while idle."""
        idle = self._idle.get(key)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)

    def count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def drain(self) -> list[C]:
        """Forget and return every idle connection (pool shutdown)."""
        out = [conn for idle in self._idle.values() for conn in idle]
        self._idle.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        return out

    def _arm(self) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(max(self.idle_timeout / 2, 0.05), self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        assert self._loop is not None
        deadline = self._loop.time() - self.idle_timeout
        for key in list(self._idle):
            idle = self._idle[key]
            # Oldest first: the list is in release order.
            expired = 0
            for conn in idle:
                if conn.idle_since > deadline and conn.usable:
                    break
                expired += 1
            if expired:
                dead, idle[:expired] = idle[:expired], []
                for conn in dead:
                    conn.close()
            if not idle:
                del self._idle[key]
        if self._idle:
            self._arm()

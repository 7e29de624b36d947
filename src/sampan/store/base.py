"""The interface every state store implements (SQLite by default, Redis, PostgreSQL).

Stateful flow steps (aggregator, idempotent receiver, resequencer, throttler, claim check)
keep their state here rather than in memory, so that a crash or a restart of a node loses
no aggregation group and forgets no dedupe key, and so that several nodes sharing a Redis or
PostgreSQL store share the state. Every write returns only once it is durable for that
backend. Namespaces keep the steps of different flows apart.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass


class StoreError(Exception):
    """The store could not do what was asked (connection lost, bad URL, ...)."""


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """An open group (an aggregation or a resequencing buffer)."""

    group: str
    count: int
    """Members currently in the group."""
    first_at: float
    """Unix time the group's first current member was added."""


class StateStore(abc.ABC):
    """Keys with optional time-to-live, counters, and groups of members."""

    url: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and create what is missing (tables, ...)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- keys ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, namespace: str, key: str) -> bytes | None:
        """The value, or None when missing or expired."""

    @abc.abstractmethod
    async def put(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Set the value; ``ttl`` seconds later it is gone (None = never)."""

    @abc.abstractmethod
    async def put_if_absent(
        self, namespace: str, key: str, value: bytes, ttl: float | None = None
    ) -> bool:
        """Set the value only if the key is missing or expired; True when it was set."""

    @abc.abstractmethod
    async def delete(self, namespace: str, key: str) -> None: ...

    @abc.abstractmethod
    async def incr(
        self, namespace: str, key: str, amount: int = 1, ttl: float | None = None
    ) -> int:
        """Add to a counter (missing = 0) and return the new value; ``ttl`` applies only when
        the call creates the counter (fixed windows: the first hit starts the window)."""

    # -- groups -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def group_add(
        self, namespace: str, group: str, member: str, value: bytes
    ) -> GroupSummary:
        """Add a member to a group (created on first add) and return the group afterwards.

        Adding a member id already in the group changes nothing: a message redelivered after
        a crash is not counted twice."""

    @abc.abstractmethod
    async def group_members(self, namespace: str, group: str) -> list[tuple[str, bytes]]:
        """The members as (member, value), in the order they were first added."""

    @abc.abstractmethod
    async def group_remove(
        self, namespace: str, group: str, members: Sequence[str] | None = None
    ) -> None:
        """Remove these members (None = the whole group)."""

    @abc.abstractmethod
    async def groups(self, namespace: str) -> list[GroupSummary]:
        """Every open group of the namespace, oldest first."""

    # -- maintenance --------------------------------------------------------------------------

    @abc.abstractmethod
    async def purge_expired(self) -> int:
        """Delete expired keys now; returns how many. (Reads never return expired keys.)"""

"""A bounded least-recently-used cache whose entries expire: enrichment lookups repeat."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

_MISSING = object()


class TtlCache(Generic[V]):
    def __init__(
        self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self.hits = 0
        self.misses = 0

    def get(self, key: str, *, count: bool = True) -> tuple[bool, V | None]:
        """(found, value): a cached None is a hit too (a lookup that found nothing).
        ``count=False``: a second look for a lookup already counted (``hits``/``misses``
        count lookups, not looks)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            if entry is not None:
                del self._entries[key]
            if count:
                self.misses += 1
            return False, None
        self._entries.move_to_end(key)
        if count:
            self.hits += 1
        return True, entry[1]

    def put(self, key: str, value: V) -> None:
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

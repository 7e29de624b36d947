"""The enrich step's cache: least recently used entries go first, entries expire, and the
hit and miss counters count lookups (a second look at the same lookup is not counted)."""

from __future__ import annotations

from sampan.flows.ttl_cache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_none_is_a_hit_and_entries_expire() -> None:
    clock = Clock()
    cache: TtlCache[object] = TtlCache(10, ttl=5.0, clock=clock)
    assert cache.get("/c/1") == (False, None)
    cache.put("/c/1", None)
    assert cache.get("/c/1") == (True, None)
    clock.now += 5.0
    assert cache.get("/c/1") == (False, None)
    assert len(cache) == 0  # the expired entry went with the look that found it expired
    assert (cache.hits, cache.misses) == (1, 2)


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: TtlCache[int] = TtlCache(2, ttl=60.0, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == (True, 1)  # "b" is now the least recently used
    cache.put("c", 3)
    assert cache.get("b") == (False, None)
    assert cache.get("a") == (True, 1) and cache.get("c") == (True, 3)


def test_a_second_look_is_not_counted() -> None:
    cache: TtlCache[int] = TtlCache(10, ttl=60.0, clock=Clock())
    assert cache.get("k") == (False, None)
    assert cache.get("k", count=False) == (False, None)  # the same lookup, looked at again
    cache.put("k", 7)
    assert cache.get("k", count=False) == (True, 7)
    assert (cache.hits, cache.misses) == (0, 1)

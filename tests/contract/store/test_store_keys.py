"""Keys, TTLs and counters: the same behaviour on every backend."""

from __future__ import annotations

import asyncio
import math

import pytest
from store_contract_helpers import OpenStore, StoreBackend

from sampan.store.base import StateStore, StoreError

SHORT_TTL = 0.2
AFTER_SHORT_TTL = 0.4


async def test_missing_key_is_none(store: StateStore, ns: str) -> None:
    assert await store.get(ns, "nope") is None


async def test_put_then_get_returns_the_exact_bytes(store: StateStore, ns: str) -> None:
    every_byte = bytes(range(256))
    await store.put(ns, "k", every_byte)
    await store.put(ns, "empty", b"")
    assert await store.get(ns, "k") == every_byte
    assert await store.get(ns, "empty") == b""


async def test_put_overwrites_value_and_ttl(store: StateStore, ns: str) -> None:
    await store.put(ns, "k", b"one", ttl=SHORT_TTL)
    await store.put(ns, "k", b"two")
    await asyncio.sleep(AFTER_SHORT_TTL)
    assert await store.get(ns, "k") == b"two"


async def test_keys_with_odd_names(store: StateStore, ns: str) -> None:
    names = ["a:b", "k:x", "{brace}", "ti\u1ebfng vi\u1ec7t", "*?[]", "a" * 300]
    for i, name in enumerate(names):
        await store.put(ns, name, str(i).encode())
    for i, name in enumerate(names):
        assert await store.get(ns, name) == str(i).encode()


async def test_namespaces_are_separate(store: StateStore, ns: str) -> None:
    await store.put(ns + "-a", "k", b"a")
    await store.put(ns + "-b", "k", b"b")
    assert await store.get(ns + "-a", "k") == b"a"
    assert await store.get(ns + "-b", "k") == b"b"
    await store.delete(ns + "-a", "k")
    assert await store.get(ns + "-a", "k") is None
    assert await store.get(ns + "-b", "k") == b"b"


async def test_ttl_expires_the_key(store: StateStore, ns: str) -> None:
    await store.put(ns, "k", b"v", ttl=SHORT_TTL)
    assert await store.get(ns, "k") == b"v"
    await asyncio.sleep(AFTER_SHORT_TTL)
    assert await store.get(ns, "k") is None


async def test_delete_removes_and_missing_delete_is_fine(store: StateStore, ns: str) -> None:
    await store.put(ns, "k", b"v")
    await store.delete(ns, "k")
    await store.delete(ns, "k")
    await store.delete(ns, "never")
    assert await store.get(ns, "k") is None


async def test_put_if_absent_sets_only_once(store: StateStore, ns: str) -> None:
    assert await store.put_if_absent(ns, "k", b"first") is True
    assert await store.put_if_absent(ns, "k", b"second") is False
    assert await store.get(ns, "k") == b"first"


async def test_put_if_absent_after_delete(store: StateStore, ns: str) -> None:
    await store.put(ns, "k", b"old")
    assert await store.put_if_absent(ns, "k", b"new") is False
    await store.delete(ns, "k")
    assert await store.put_if_absent(ns, "k", b"new") is True
    assert await store.get(ns, "k") == b"new"


async def test_put_if_absent_over_an_expired_key(store: StateStore, ns: str) -> None:
    assert await store.put_if_absent(ns, "k", b"first", ttl=SHORT_TTL) is True
    await asyncio.sleep(AFTER_SHORT_TTL)
    assert await store.put_if_absent(ns, "k", b"second", ttl=SHORT_TTL) is True
    assert await store.get(ns, "k") == b"second"
    # The new TTL applies to the new value.
    await asyncio.sleep(AFTER_SHORT_TTL)
    assert await store.get(ns, "k") is None


async def test_incr_counts_from_zero(store: StateStore, ns: str) -> None:
    assert await store.incr(ns, "c") == 1
    assert await store.incr(ns, "c") == 2
    assert await store.incr(ns, "c", 10) == 12
    assert await store.incr(ns, "c", -20) == -8
    assert await store.incr(ns, "other", 5) == 5


async def test_counter_reads_as_decimal_bytes(store: StateStore, ns: str) -> None:
    await store.incr(ns, "c", 42)
    assert await store.get(ns, "c") == b"42"
    await store.put(ns, "d", b"7")
    assert await store.incr(ns, "d") == 8


async def test_incr_of_a_value_that_is_not_a_counter_fails(store: StateStore, ns: str) -> None:
    await store.put(ns, "k", b"not a number")
    with pytest.raises(StoreError, match="not a counter"):
        await store.incr(ns, "k")
    assert await store.get(ns, "k") == b"not a number"
    # The store is still usable afterwards (no transaction left open).
    assert await store.incr(ns, "c") == 1


async def test_incr_ttl_applies_only_when_the_counter_is_created(
    store: StateStore, ns: str
) -> None:
    ttl = 0.4
    assert await store.incr(ns, "window", ttl=ttl) == 1
    await asyncio.sleep(0.25)
    # A later hit with a TTL must not push the window's end out.
    assert await store.incr(ns, "window", ttl=ttl) == 2
    await asyncio.sleep(0.3)
    assert await store.get(ns, "window") is None
    # The expired counter restarts: a new window.
    assert await store.incr(ns, "window", ttl=ttl) == 1


async def test_incr_without_ttl_never_expires(store: StateStore, ns: str) -> None:
    await store.incr(ns, "c")
    await store.incr(ns, "c", ttl=SHORT_TTL)  # not the creating call: no TTL added
    await asyncio.sleep(AFTER_SHORT_TTL)
    assert await store.get(ns, "c") == b"2"


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf])
async def test_bad_ttls_are_refused_everywhere(store: StateStore, ns: str, ttl: float) -> None:
    with pytest.raises(StoreError, match="ttl must be a positive number"):
        await store.put(ns, "k", b"v", ttl=ttl)
    with pytest.raises(StoreError, match="ttl must be a positive number"):
        await store.put_if_absent(ns, "k", b"v", ttl=ttl)
    with pytest.raises(StoreError, match="ttl must be a positive number"):
        await store.incr(ns, "k", ttl=ttl)
    assert await store.get(ns, "k") is None


async def test_purge_expired_deletes_only_expired_keys(
    store: StateStore, ns: str, store_backend: StoreBackend
) -> None:
    for i in range(3):
        await store.put(ns, f"short{i}", b"v", ttl=SHORT_TTL)
    await store.put(ns, "long", b"v", ttl=60)
    await store.put(ns, "forever", b"v")
    await asyncio.sleep(AFTER_SHORT_TTL)
    purged = await store.purge_expired()
    if store_backend.exact_purge:
        assert purged == 3
    else:
        assert purged >= 0
    for i in range(3):
        assert await store.get(ns, f"short{i}") is None
    assert await store.get(ns, "long") == b"v"
    assert await store.get(ns, "forever") == b"v"
    if store_backend.exact_purge:
        assert await store.purge_expired() == 0


async def test_data_outlives_the_instance(
    store: StateStore, ns: str, store_backend: StoreBackend, open_started: OpenStore
) -> None:
    if not store_backend.shared:
        pytest.skip("memory:// keeps nothing after close")
    await store.put(ns, "k", b"v")
    await store.incr(ns, "c", 3)
    await store.group_add(ns, "g", "m", b"x")
    await store.close()
    again = await open_started()
    assert await again.get(ns, "k") == b"v"
    assert await again.incr(ns, "c") == 4
    assert await again.group_members(ns, "g") == [("m", b"x")]


async def test_closed_store_raises_store_error(store: StateStore, ns: str) -> None:
    await store.close()
    with pytest.raises(StoreError, match="not started"):
        await store.get(ns, "k")
    with pytest.raises(StoreError, match="not started"):
        await store.purge_expired()

"""Concurrent callers, in one store and across two stores sharing a URL, get exact results."""

from __future__ import annotations

import asyncio

import pytest
from store_contract_helpers import OpenStore, StoreBackend

from sampan.store.base import StateStore


async def _pair(store_backend: StoreBackend, open_started: OpenStore) -> list[StateStore]:
    if not store_backend.shared:
        pytest.skip("memory:// stores do not share state between instances")
    return [await open_started(), await open_started()]


async def test_concurrent_incr_is_exact(store: StateStore, ns: str) -> None:
    results = await asyncio.gather(*(store.incr(ns, "c") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    assert await store.get(ns, "c") == b"50"


async def test_concurrent_incr_with_ttl_starts_one_window(store: StateStore, ns: str) -> None:
    results = await asyncio.gather(*(store.incr(ns, "c", ttl=30) for _ in range(50)))
    assert sorted(results) == list(range(1, 51))


async def test_concurrent_incr_across_stores_is_exact(
    store_backend: StoreBackend, open_started: OpenStore, ns: str
) -> None:
    one, two = await _pair(store_backend, open_started)
    calls = [(one if i % 2 else two).incr(ns, "c", 2) for i in range(50)]
    results = await asyncio.gather(*calls)
    assert sorted(results) == list(range(2, 101, 2))


async def test_concurrent_put_if_absent_has_one_winner(store: StateStore, ns: str) -> None:
    won = await asyncio.gather(*(store.put_if_absent(ns, "k", str(i).encode()) for i in range(30)))
    assert won.count(True) == 1
    assert await store.get(ns, "k") == str(won.index(True)).encode()


async def test_concurrent_put_if_absent_across_stores_has_one_winner(
    store_backend: StoreBackend, open_started: OpenStore, ns: str
) -> None:
    one, two = await _pair(store_backend, open_started)
    for round_ in range(5):
        key = f"k{round_}"
        calls = [(one if i % 2 else two).put_if_absent(ns, key, b"v", ttl=30) for i in range(20)]
        assert (await asyncio.gather(*calls)).count(True) == 1


async def test_concurrent_put_if_absent_over_an_expired_key(store: StateStore, ns: str) -> None:
    await store.put(ns, "k", b"old", ttl=0.1)
    await asyncio.sleep(0.3)
    won = await asyncio.gather(*(store.put_if_absent(ns, "k", b"new") for _ in range(20)))
    assert won.count(True) == 1


async def test_concurrent_group_adds_count_every_member_once(
    store_backend: StoreBackend, open_started: OpenStore, ns: str
) -> None:
    """Every add sees a distinct count, so exactly one caller sees the group complete."""
    one, two = await _pair(store_backend, open_started)
    members = [f"m{i}" for i in range(30)]
    adds = [(one if i % 2 else two).group_add(ns, "g", m, b"x") for i, m in enumerate(members)]
    summaries = await asyncio.gather(*adds)
    assert sorted(s.count for s in summaries) == list(range(1, 31))
    assert sorted(m for m, _ in await one.group_members(ns, "g")) == sorted(members)


async def test_concurrent_adds_of_one_member_count_it_once(store: StateStore, ns: str) -> None:
    summaries = await asyncio.gather(
        *(store.group_add(ns, "g", "same", str(i).encode()) for i in range(20))
    )
    assert {s.count for s in summaries} == {1}
    assert len(await store.group_members(ns, "g")) == 1

"""Groups of members (aggregations, resequencing buffers): the same on every backend."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from sampan.store.base import GroupSummary, StateStore

CLOCK_SLACK = 2.0
"""Redis and PostgreSQL stamp members with the server's clock; locally it is ours."""


async def test_group_add_creates_the_group_and_counts(store: StateStore, ns: str) -> None:
    before = time.time()
    first = await store.group_add(ns, "g", "m1", b"one")
    assert first.group == "g"
    assert first.count == 1
    assert before - CLOCK_SLACK <= first.first_at <= time.time() + CLOCK_SLACK
    second = await store.group_add(ns, "g", "m2", b"two")
    assert second.count == 2
    assert second.first_at == first.first_at


async def test_group_add_is_idempotent_by_member(store: StateStore, ns: str) -> None:
    first = await store.group_add(ns, "g", "m1", b"original")
    await store.group_add(ns, "g", "m2", b"two")
    again = await store.group_add(ns, "g", "m1", b"redelivered")
    assert again == GroupSummary("g", 2, first.first_at)
    # The first value and the first position stay.
    assert await store.group_members(ns, "g") == [("m1", b"original"), ("m2", b"two")]


async def test_members_come_back_in_first_add_order(store: StateStore, ns: str) -> None:
    ids = [f"m{n}" for n in random.Random(7).sample(range(1000), 40)]
    for i, member in enumerate(ids):
        await store.group_add(ns, "g", member, i.to_bytes(2, "big") + b"\x00\xff")
    assert await store.group_members(ns, "g") == [
        (member, i.to_bytes(2, "big") + b"\x00\xff") for i, member in enumerate(ids)
    ]


async def test_missing_group_is_empty(store: StateStore, ns: str) -> None:
    assert await store.group_members(ns, "nope") == []
    await store.group_remove(ns, "nope")
    await store.group_remove(ns, "nope", ["m"])
    assert await store.groups(ns) == []


async def test_group_remove_some_members_keeps_the_order(store: StateStore, ns: str) -> None:
    for member in "abcde":
        await store.group_add(ns, "g", member, member.encode())
    await store.group_remove(ns, "g", ["b", "d", "not-there"])
    assert await store.group_members(ns, "g") == [("a", b"a"), ("c", b"c"), ("e", b"e")]
    await store.group_remove(ns, "g", [])
    assert [s.count for s in await store.groups(ns)] == [3]
    assert (await store.group_add(ns, "g", "f", b"f")).count == 4


async def test_group_remove_whole_group_closes_it(store: StateStore, ns: str) -> None:
    await store.group_add(ns, "g", "a", b"a")
    await store.group_add(ns, "g", "b", b"b")
    await store.group_add(ns, "other", "a", b"a")
    await store.group_remove(ns, "g")
    assert await store.group_members(ns, "g") == []
    assert [s.group for s in await store.groups(ns)] == ["other"]
    # The group starts afresh: a new first_at, members counted from one.
    again = await store.group_add(ns, "g", "a", b"new")
    assert again.count == 1
    assert await store.group_members(ns, "g") == [("a", b"new")]


async def test_removing_every_member_closes_the_group(store: StateStore, ns: str) -> None:
    await store.group_add(ns, "g", "a", b"a")
    await store.group_add(ns, "g", "b", b"b")
    await store.group_remove(ns, "g", ["a", "b"])
    assert await store.groups(ns) == []


async def test_a_removed_member_readded_goes_last(store: StateStore, ns: str) -> None:
    for member in "abc":
        await store.group_add(ns, "g", member, b"1")
    await store.group_remove(ns, "g", ["a"])
    await store.group_add(ns, "g", "a", b"2")
    assert await store.group_members(ns, "g") == [("b", b"1"), ("c", b"1"), ("a", b"2")]


async def test_first_at_follows_the_oldest_current_member(store: StateStore, ns: str) -> None:
    first = await store.group_add(ns, "g", "a", b"a")
    await asyncio.sleep(0.1)
    await store.group_add(ns, "g", "b", b"b")
    await store.group_remove(ns, "g", ["a"])
    (summary,) = await store.groups(ns)
    assert summary.count == 1
    assert summary.first_at >= first.first_at + 0.05


async def test_groups_are_listed_oldest_first(store: StateStore, ns: str) -> None:
    # Names out of alphabetical order, so only age can explain the order.
    for name in ["m", "z", "a", "q"]:
        await store.group_add(ns, name, "x", b"x")
        await asyncio.sleep(0.02)
    await store.group_add(ns, "a", "y", b"y")
    await store.group_add(ns, "z", "x", b"again")
    listed = await store.groups(ns)
    assert [(s.group, s.count) for s in listed] == [("m", 1), ("z", 1), ("a", 2), ("q", 1)]
    assert [s.first_at for s in listed] == sorted(s.first_at for s in listed)
    summaries = {s.group: s for s in listed}
    assert summaries["a"] == await store.group_add(ns, "a", "y", b"y")


async def test_groups_are_per_namespace(store: StateStore, ns: str) -> None:
    await store.group_add(ns + "-a", "g", "m", b"a")
    await store.group_add(ns + "-b", "g", "m", b"b")
    await store.group_add(ns + "-b", "g", "n", b"b")
    assert [s.count for s in await store.groups(ns + "-a")] == [1]
    assert [s.count for s in await store.groups(ns + "-b")] == [2]
    await store.group_remove(ns + "-a", "g")
    assert await store.group_members(ns + "-b", "g") == [("m", b"b"), ("n", b"b")]


async def test_group_and_member_names_with_separators(store: StateStore, ns: str) -> None:
    await store.group_add(ns, "g:v", "a:b", b"1")
    await store.group_add(ns, "g", "v:a:b", b"2")
    await store.group_add(ns, "{g}", "\u0111\u01a1n-h\u00e0ng", b"3")
    assert await store.group_members(ns, "g:v") == [("a:b", b"1")]
    assert await store.group_members(ns, "g") == [("v:a:b", b"2")]
    assert await store.group_members(ns, "{g}") == [("\u0111\u01a1n-h\u00e0ng", b"3")]
    assert sorted(s.group for s in await store.groups(ns)) == sorted(["g:v", "g", "{g}"])


async def test_groups_and_keys_do_not_collide(store: StateStore, ns: str) -> None:
    await store.put(ns, "g", b"key")
    await store.group_add(ns, "g", "m", b"member")
    await store.incr(ns, "groups")
    assert await store.get(ns, "g") == b"key"
    assert await store.group_members(ns, "g") == [("m", b"member")]
    assert [s.group for s in await store.groups(ns)] == ["g"]


async def test_a_single_string_is_not_a_list_of_members(store: StateStore, ns: str) -> None:
    await store.group_add(ns, "g", "m", b"x")
    await store.group_add(ns, "g", "m12", b"x")
    with pytest.raises(TypeError, match="not a single string"):
        await store.group_remove(ns, "g", "m12")
    assert [m for m, _ in await store.group_members(ns, "g")] == ["m", "m12"]

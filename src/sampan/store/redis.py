"""The Redis state store: shared state for nodes that scale out.

Every operation that touches more than one key, or reads before it writes, is one Lua
script, so counters and group counts stay exact however many nodes share the server.
Key layout (``ns`` is the namespace, used as a Redis Cluster hash tag so that a
namespace's keys share a slot and its scripts stay single-slot)::

    sampan:store:{ns}:k:<key>       string value (TTL as PX)
    sampan:store:{ns}:gv:<group>    hash   member -> value
    sampan:store:{ns}:gt:<group>    hash   member -> time added (server clock)
    sampan:store:{ns}:go:<group>    zset   member -> insertion sequence
    sampan:store:{ns}:groups        zset   group  -> time its oldest member was added
    sampan:store:{ns}:seq           counter of insertion sequences

Durability is Redis's: a write is acknowledged once it is in the server's memory, and it
survives a server crash only as far as its ``appendonly``/``appendfsync`` settings say.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from sampan.store.base import GroupSummary, StateStore, StoreError
from sampan.store.factory import redact_url
from sampan.store.sqlite import check_ttl, member_ids, not_a_counter

KEY_PREFIX = "sampan:store:"

# KEYS: counter. ARGV: amount, ttl in ms ('' = none). The TTL is set only when this call
# creates the counter (a missing or expired key), which starts a fixed window.
_INCR = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""

# KEYS: values, times, order, index, seq. ARGV: group, member, value.
# Returns {count, first_at as the index's score string}.
_GROUP_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 1 then
  local now = redis.call('TIME')
  local at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
  redis.call('HSET', KEYS[2], ARGV[2], at)
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), ARGV[2])
  redis.call('ZADD', KEYS[4], 'NX', at, ARGV[1])
end
return {redis.call('HLEN', KEYS[1]), redis.call('ZSCORE', KEYS[4], ARGV[1])}
"""

# KEYS: values, order. Returns member, value, member, value, ... in insertion order.
_GROUP_MEMBERS = """
local out = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  out[#out + 1] = member
  out[#out + 1] = redis.call('HGET', KEYS[1], member)
end
return out
"""

# KEYS: values, times, order, index. ARGV: group, '1' = whole group, then member ids.
# The group's first_at moves to its oldest remaining member; an emptied group is closed.
_GROUP_REMOVE = """
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 0
end
for i = 3, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('ZREM', KEYS[3], ARGV[i])
end
local head = redis.call('ZRANGE', KEYS[3], 0, 0)
if #head == 0 then
  redis.call('ZREM', KEYS[4], ARGV[1])
else
  redis.call('ZADD', KEYS[4], redis.call('HGET', KEYS[2], head[1]), ARGV[1])
end
return 0
"""

# KEYS: index. ARGV: prefix of the groups' value hashes (same namespace, same hash slot).
# Returns group, first_at, count, ... oldest first.
_GROUPS = """
local index = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #index, 2 do
  out[#out + 1] = index[i]
  out[#out + 1] = index[i + 1]
  out[#out + 1] = redis.call('HLEN', ARGV[1] .. index[i])
end
return out
"""


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _ttl_ms(ttl: float | None) -> int | None:
    """Redis counts in whole milliseconds; round up so a key never outlives less than asked."""
    check_ttl(ttl)
    return None if ttl is None else max(1, math.ceil(ttl * 1000))


class RedisStore(StateStore):
    """State on a Redis server (``redis://`` or ``rediss://`` for TLS), shared by nodes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._shown = redact_url(url)
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    async def start(self) -> None:
        if self._client is not None:
            return
        try:
            client = aioredis.Redis.from_url(self.url)
        except (ValueError, RedisError) as exc:
            raise StoreError(f"state store {self._shown}: {exc}") from exc
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            raise StoreError(f"state store {self._shown}: cannot connect ({exc})") from exc
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("incr", _INCR),
                ("group_add", _GROUP_ADD),
                ("group_members", _GROUP_MEMBERS),
                ("group_remove", _GROUP_REMOVE),
                ("groups", _GROUPS),
            )
        }
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreError(f"state store {self._shown}: not started (or closed)")
        return self._client

    async def _do(self, call: Awaitable[Any]) -> Any:
        """Await a command, turning Redis failures into the store's error."""
        try:
            return await call
        except RedisError as exc:
            raise StoreError(f"state store {self._shown}: {exc}") from exc

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        self._redis  # noqa: B018 -- "not started" rather than a KeyError on the script
        return await self._do(self._scripts[name](keys=keys, args=args))

    @staticmethod
    def _ns(namespace: str) -> str:
        return KEY_PREFIX + "{" + namespace + "}:"

    def _key(self, namespace: str, key: str) -> str:
        return self._ns(namespace) + "k:" + key

    def _group_keys(self, namespace: str, group: str) -> list[str]:
        ns = self._ns(namespace)
        return [ns + "gv:" + group, ns + "gt:" + group, ns + "go:" + group, ns + "groups"]

    # -- keys ---------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> bytes | None:
        raw = await self._do(self._redis.get(self._key(namespace, key)))
        return None if raw is None else bytes(raw)

    async def put(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        await self._do(self._redis.set(self._key(namespace, key), value, px=_ttl_ms(ttl)))

    async def put_if_absent(
        self, namespace: str, key: str, value: bytes, ttl: float | None = None
    ) -> bool:
        done = await self._do(
            self._redis.set(self._key(namespace, key), value, px=_ttl_ms(ttl), nx=True)
        )
        return bool(done)

    async def delete(self, namespace: str, key: str) -> None:
        await self._do(self._redis.delete(self._key(namespace, key)))

    async def incr(
        self, namespace: str, key: str, amount: int = 1, ttl: float | None = None
    ) -> int:
        ms = _ttl_ms(ttl)
        try:
            value = await self._script(
                "incr", [self._key(namespace, key)], [amount, "" if ms is None else ms]
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, ResponseError) and "not an integer" in str(exc):
                # The same error as the other backends give for a non-counter value.
                raise not_a_counter(namespace, key) from exc.__cause__
            raise
        return int(value)

    # -- groups -------------------------------------------------------------------------------

    async def group_add(
        self, namespace: str, group: str, member: str, value: bytes
    ) -> GroupSummary:
        keys = [*self._group_keys(namespace, group), self._ns(namespace) + "seq"]
        count, first_at = await self._script("group_add", keys, [group, member, value])
        return GroupSummary(group, int(count), float(_text(first_at)))

    async def group_members(self, namespace: str, group: str) -> list[tuple[str, bytes]]:
        values, _, order, _ = self._group_keys(namespace, group)
        flat = await self._script("group_members", [values, order], [])
        return [(_text(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def group_remove(
        self, namespace: str, group: str, members: Sequence[str] | None = None
    ) -> None:
        chosen = None if members is None else member_ids(members)
        if chosen == []:
            return
        args: list[Any] = [group, "1" if chosen is None else "0", *(chosen or ())]
        await self._script("group_remove", self._group_keys(namespace, group), args)

    async def groups(self, namespace: str) -> list[GroupSummary]:
        ns = self._ns(namespace)
        flat = await self._script("groups", [ns + "groups"], [ns + "gv:"])
        return [
            GroupSummary(_text(flat[i]), int(flat[i + 2]), float(_text(flat[i + 1])))
            for i in range(0, len(flat), 3)
        ]

    # -- maintenance --------------------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Redis deletes expired keys by itself (and never returns them), so there is nothing
        to purge: always 0."""
        if self._client is None:
            raise StoreError(f"state store {self._shown}: not started (or closed)")
        return 0

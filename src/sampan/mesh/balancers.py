"""The four balancers. Each ``pick`` runs once per request, so they avoid per-call work that
is not needed: no sorting, no per-call dicts, at most one small list (weighted sampling).

Every balancer is given only the endpoints that may be picked now (the caller filters with
``EndpointState.available(now)`` and, with a traffic split, by version); endpoint weights are
integers >= 1 (the config guarantees it). ``make_balancer`` in ``balancer.py`` builds them.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from hashlib import blake2b
from itertools import accumulate
from operator import attrgetter

from sampan.mesh.endpoint import EndpointState
from sampan.mesh.peak_ewma import cost

_weight = attrgetter("weight")


def pick_two(
    endpoints: Sequence[EndpointState], random_: random.Random
) -> tuple[EndpointState, EndpointState]:
    """Two distinct endpoints drawn at random, each with probability proportional to its
    weight (the second from the rest). Needs ``len(endpoints) >= 2``."""
    rand = random_.random
    n = len(endpoints)
    total = sum(map(_weight, endpoints))
    if total == n:  # every weight is 1: uniform, no list needed
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        return endpoints[i], endpoints[j]
    cumulative = list(accumulate(map(_weight, endpoints)))
    i = min(bisect_right(cumulative, rand() * total), n - 1)
    first = endpoints[i]
    w = first.weight
    start = cumulative[i] - w
    # Draw from the others: a point in [0, total - w), shifted past the first's interval.
    x = rand() * (total - w)
    if x >= start:
        x += w
    j = min(bisect_right(cumulative, x), n - 1)
    if j == i:  # float rounding at an interval's edge
        j = j + 1 if j + 1 < n else j - 1
    return first, endpoints[j]


class RoundRobin:
    """Smooth weighted round-robin (as nginx does it) over the endpoints given.

    Each pick adds every endpoint's weight to its running score, takes the highest score
    and subtracts the total weight from it: weights 5, 1, 1 give ``a a b a c a a`` — exact
    shares over every cycle of ``sum(weights)`` picks, interleaved rather than in bursts.
    When every weight is 1 it is a plain rotation (one counter, O(1)). Scores are kept per
    endpoint, so an endpoint that sits out (unavailable) simply does not score meanwhile.
    """

    __slots__ = ("_next", "_scores")

    def __init__(self) -> None:
        self._next = 0
        self._scores: dict[EndpointState, int] = {}

    def pick(
        self, endpoints: Sequence[EndpointState], key: bytes | None, now: float
    ) -> EndpointState | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        if sum(map(_weight, endpoints)) == n:
            i = self._next % n
            self._next = i + 1
            return endpoints[i]
        scores = self._scores
        if len(scores) > 2 * n + 64:  # forget endpoints that went away
            scores = self._scores = {e: scores.get(e, 0) for e in endpoints}
        get = scores.get
        total = 0
        best = endpoints[0]
        best_score = None
        for endpoint in endpoints:
            w = endpoint.weight
            total += w
            score = get(endpoint, 0) + w
            scores[endpoint] = score
            if best_score is None or score > best_score:
                best, best_score = endpoint, score
        scores[best] -= total
        return best


class LeastRequest:
    """Power of two choices on outstanding requests: two distinct endpoints drawn at random
    by weight, the one with fewer ``in_flight / weight`` wins (a tie goes to the first drawn,
    so an idle service is balanced by weight)."""

    __slots__ = ("_random",)

    def __init__(self, random_: random.Random) -> None:
        self._random = random_

    def pick(
        self, endpoints: Sequence[EndpointState], key: bytes | None, now: float
    ) -> EndpointState | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        a, b = pick_two(endpoints, self._random)
        # a.in_flight / a.weight <= b.in_flight / b.weight, without division
        return a if a.in_flight * b.weight <= b.in_flight * a.weight else b


class PeakEwmaP2C:
    """Power of two choices on peak-EWMA cost (Finagle's and Linkerd's default): two distinct
    endpoints drawn at random by weight, the lower ``peak_ewma.cost`` wins; equal costs go
    to the one with fewer requests in flight, then to the first drawn."""

    __slots__ = ("_decay", "_default_rtt", "_random")

    def __init__(self, random_: random.Random, decay: float, default_rtt: float) -> None:
        self._random = random_
        self._decay = decay
        self._default_rtt = default_rtt

    def pick(
        self, endpoints: Sequence[EndpointState], key: bytes | None, now: float
    ) -> EndpointState | None:
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        a, b = pick_two(endpoints, self._random)
        cost_a = cost(a, now, self._decay, self._default_rtt)
        cost_b = cost(b, now, self._decay, self._default_rtt)
        if cost_a < cost_b:
            return a
        if cost_b < cost_a:
            return b
        return b if b.in_flight < a.in_flight else a


VNODES_PER_WEIGHT = 100
"""Points on the hash ring per unit of endpoint weight."""
MAX_VNODES = 10_000
"""Points per endpoint at most (weights above 100 count as 100 on the ring)."""
_HASH_BITS = 48  # ring positions; the low 16 bits of a ring entry hold the endpoint's index
_INDEX_BITS = 64 - _HASH_BITS
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_MAX_ENDPOINTS = 1 << _INDEX_BITS
_RINGS_CACHED = 8
_POINTS_CACHED = 1024


def ring_hash(data: bytes) -> int:
    """A 48-bit position on the ring; stable across processes and nodes (not ``hash()``)."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big") >> _INDEX_BITS


class _Ring:
    """Sorted ring entries ``position << 16 | index`` (one ``array('Q')``) for one endpoint
    set; ``endpoints[index]`` owns the arc that ends at ``position``."""

    __slots__ = ("endpoints", "entries")

    def __init__(self, endpoints: tuple[EndpointState, ...], entries: array[int]) -> None:
        self.endpoints = endpoints
        self.entries = entries

    def lookup(self, position: int) -> EndpointState:
        entries = self.entries
        i = bisect_right(entries, (position << _INDEX_BITS) | _INDEX_MASK)
        if i == len(entries):
            i = 0  # past the last point: wrap to the first
        return self.endpoints[entries[i] & _INDEX_MASK]


class ConsistentHash:
    """Consistent hashing (a ring with virtual nodes) on the request's hash key, for
    stickiness: the same key goes to the same endpoint while that endpoint is available.

    Each endpoint owns ``100 x weight`` points placed by hashing its URL, so the mapping does
    not depend on endpoint order or on which node computes it, and an endpoint leaving moves
    only the keys it owned (to the next point clockwise: the same result as walking the
    ring past an unavailable endpoint); every other key stays put. Rings are cached by the
    endpoint set (identity and weight) — the last few sets, so an endpoint flapping in and
    out or a traffic split alternating between versions does not rebuild on every pick.

    Requests without a key (``hash_key`` returned None) are balanced by ``fallback``
    (p2c-peak-ewma from ``make_balancer``).
    """

    __slots__ = ("_fallback", "_last_key", "_last_ring", "_points", "_rings")

    def __init__(self, fallback: PeakEwmaP2C) -> None:
        self._fallback = fallback
        self._rings: dict[tuple[tuple[EndpointState, ...], tuple[int, ...]], _Ring] = {}
        self._points: dict[tuple[str, int], list[int]] = {}
        self._last_key: tuple[tuple[EndpointState, ...], tuple[int, ...]] | None = None
        self._last_ring: _Ring | None = None

    def pick(
        self, endpoints: Sequence[EndpointState], key: bytes | None, now: float
    ) -> EndpointState | None:
        if key is None:
            return self._fallback.pick(endpoints, None, now)
        n = len(endpoints)
        if n <= 1:
            return endpoints[0] if n else None
        ring_key = (tuple(endpoints), tuple(map(_weight, endpoints)))
        ring = self._last_ring
        if ring is None or ring_key != self._last_key:
            ring = self._ring(ring_key)
            self._last_key, self._last_ring = ring_key, ring
        return ring.lookup(ring_hash(key))

    def _ring(self, ring_key: tuple[tuple[EndpointState, ...], tuple[int, ...]]) -> _Ring:
        rings = self._rings
        ring = rings.pop(ring_key, None)
        if ring is None:
            ring = self._build(*ring_key)
            if len(rings) >= _RINGS_CACHED:
                del rings[next(iter(rings))]  # the least recently used
        rings[ring_key] = ring  # (re)insert as the most recently used
        return ring

    def _build(self, endpoints: tuple[EndpointState, ...], weights: tuple[int, ...]) -> _Ring:
        if len(endpoints) > _MAX_ENDPOINTS:
            raise ValueError(f"consistent hashing supports up to {_MAX_ENDPOINTS} endpoints")
        if len(self._points) > _POINTS_CACHED:
            self._points.clear()
        entries: list[int] = []
        for index, (endpoint, weight) in enumerate(zip(endpoints, weights, strict=True)):
            positions = self._positions(endpoint.url, weight)
            entries.extend([(p << _INDEX_BITS) | index for p in positions])
        entries.sort()
        return _Ring(endpoints, array("Q", entries))

    def _positions(self, url: str, weight: int) -> list[int]:
        vnodes = min(VNODES_PER_WEIGHT * max(weight, 1), MAX_VNODES)
        cached = self._points.get((url, vnodes))
        if cached is None:
            prefix = url.encode()
            cached = [ring_hash(b"%s#%d" % (prefix, i)) for i in range(vnodes)]
            self._points[(url, vnodes)] = cached
        return cached

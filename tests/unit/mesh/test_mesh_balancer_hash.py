"""Consistent hashing: stickiness, balance, minimal remapping, and the hash key."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sampan.http.client import Endpoint
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.mesh.balancer import hash_key, make_balancer
from sampan.mesh.balancers import ConsistentHash
from sampan.mesh.config import BalancerConfig
from sampan.mesh.endpoint import EndpointState

CONFIG = BalancerConfig(type="consistent-hash", hash_on={"header": "x-user"})
KEYS = [b"user-%d" % i for i in range(10_000)]


def endpoints(n: int, weight: int = 1, start: int = 0) -> list[EndpointState]:
    return [
        EndpointState(
            url=f"http://10.0.0.{i}:80", endpoint=Endpoint(f"10.0.0.{i}", 80), weight=weight
        )
        for i in range(start, start + n)
    ]


def mapping(balancer: object, eps: list[EndpointState]) -> dict[bytes, str]:
    assert isinstance(balancer, ConsistentHash)
    out = {}
    for key in KEYS:
        chosen = balancer.pick(eps, key, 0.0)
        assert chosen is not None
        out[key] = chosen.url
    return out


def request(*headers: tuple[bytes, bytes]) -> Request:
    return Request("GET", b"/", "/", b"", Headers(list(headers)))


def test_same_key_same_endpoint() -> None:
    ch = make_balancer(CONFIG, random.Random(1))
    eps = endpoints(5)
    for key in KEYS[:200]:
        first = ch.pick(eps, key, 0.0)
        assert all(ch.pick(eps, key, t) is first for t in (1.0, 2.0, 3.0))


def test_mapping_is_independent_of_order_and_of_the_instance() -> None:
    eps = endpoints(7)
    shuffled = eps[:]
    random.Random(5).shuffle(shuffled)
    fresh = endpoints(7)  # other objects, same URLs: another node's view of the service
    one = mapping(make_balancer(CONFIG), eps)
    assert one == mapping(make_balancer(CONFIG), shuffled)
    assert one == mapping(make_balancer(CONFIG), fresh)


def test_keys_spread_evenly() -> None:
    eps = endpoints(10)
    counts = Counter(mapping(make_balancer(CONFIG), eps).values())
    assert len(counts) == 10
    assert all(0.07 < c / len(KEYS) < 0.13 for c in counts.values())


def test_weight_gives_a_proportional_share() -> None:
    eps = endpoints(3)
    eps[0].weight = 2  # 2 : 1 : 1
    counts = Counter(mapping(make_balancer(CONFIG), eps).values())
    assert 0.44 < counts[eps[0].url] / len(KEYS) < 0.56


@pytest.mark.parametrize("n", [3, 5, 10, 20])
def test_an_endpoint_leaving_moves_only_its_own_keys(n: int) -> None:
    ch = make_balancer(CONFIG)
    eps = endpoints(n)
    before = mapping(ch, eps)
    gone = eps[n // 2]
    after = mapping(ch, [e for e in eps if e is not gone])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == gone.url for k in moved)  # nobody else's keys moved
    assert len(moved) / len(KEYS) <= 1 / n + 0.05
    # ...and when it comes back (available again), every key returns to where it was
    assert mapping(ch, eps) == before


def test_an_endpoint_joining_takes_about_one_nth() -> None:
    ch = make_balancer(CONFIG)
    eps = endpoints(9)
    before = mapping(ch, eps)
    (joined,) = endpoints(1, start=9)
    after = mapping(ch, [*eps, joined])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == joined.url for k in moved)
    assert len(moved) / len(KEYS) <= 1 / 10 + 0.05


def test_rings_are_cached_per_endpoint_set() -> None:
    ch = make_balancer(CONFIG)
    assert isinstance(ch, ConsistentHash)
    eps = endpoints(4)
    subset = eps[:3]
    rings = set()
    for i in range(100):  # an endpoint flapping in and out (half-open breaker)
        ch.pick(eps if i % 2 else subset, b"k%d" % i, 0.0)
        rings.add(id(ch._last_ring))
    assert len(rings) == 2  # built once per set, then reused
    eps[0].weight = 3  # a weight change is a new set
    ch.pick(eps, b"k", 0.0)
    assert id(ch._last_ring) not in rings
    for i in range(20):  # more sets than are cached: the oldest go
        ch.pick(endpoints(2, start=10 + i), b"k", 0.0)
    assert len(ch._rings) <= 8


def test_requests_without_key_fall_back_to_p2c_ewma() -> None:
    ch = make_balancer(CONFIG, random.Random(1))
    eps = endpoints(3)
    eps[0].in_flight = 30
    picks = Counter(id(ch.pick(eps, None, 0.0)) for _ in range(300))
    assert picks[id(eps[0])] == 0
    assert ch.pick([], None, 0.0) is None
    assert ch.pick([], b"k", 0.0) is None
    assert ch.pick(eps[:1], b"k", 0.0) is eps[0]


def test_hash_key_from_header() -> None:
    cfg = BalancerConfig(type="consistent-hash", hash_on={"header": "X-User"})
    assert hash_key(cfg, request((b"x-user", b"42"), (b"x-user", b"43")), "1.2.3.4") == b"42"
    assert hash_key(cfg, request((b"x-other", b"42")), "1.2.3.4") is None
    assert hash_key(cfg, request((b"x-user", b"")), "1.2.3.4") is None


def test_hash_key_from_cookie() -> None:
    cfg = BalancerConfig(type="consistent-hash", hash_on={"cookie": "sid"})
    cookies = (b"cookie", b"theme=dark; sid=abc123; lang=vi")
    assert hash_key(cfg, request(cookies), "") == b"abc123"
    assert hash_key(cfg, request((b"cookie", b'sid="q v"')), "") == b"q v"
    assert hash_key(cfg, request((b"cookie", b"a=1"), (b"cookie", b"sid=x")), "") == b"x"
    assert hash_key(cfg, request((b"cookie", b"xsid=1; SID=2; sid")), "") is None
    assert hash_key(cfg, request((b"cookie", b"sid=")), "") is None
    assert hash_key(cfg, request((b"x-sid", b"sid=1")), "") is None


def test_hash_key_from_client_ip() -> None:
    cfg = BalancerConfig(type="consistent-hash", hash_on={"client_ip": True})
    assert hash_key(cfg, request(), "203.0.113.9") == b"203.0.113.9"
    assert hash_key(cfg, request(), "") is None


def test_hash_key_is_none_for_other_balancers() -> None:
    assert hash_key(BalancerConfig(), request((b"x-user", b"1")), "1.2.3.4") is None
    other = BalancerConfig(type="round-robin", hash_on={"header": "x-user"})
    assert hash_key(other, request((b"x-user", b"1")), "1.2.3.4") is None

"""Least-request: power of two choices on in_flight / weight."""

from __future__ import annotations

import random
from collections import Counter

from sampan.http.client import Endpoint
from sampan.mesh.balancer import make_balancer
from sampan.mesh.balancers import pick_two
from sampan.mesh.config import BalancerConfig
from sampan.mesh.endpoint import EndpointState


def endpoints(*weights: int) -> list[EndpointState]:
    return [
        EndpointState(url=f"http://10.0.0.{i}:80", endpoint=Endpoint(f"10.0.0.{i}", 80), weight=w)
        for i, w in enumerate(weights)
    ]


def test_empty_and_single() -> None:
    lr = make_balancer(BalancerConfig(type="least-request"), random.Random(1))
    assert lr.pick([], None, 0.0) is None
    (only,) = endpoints(1)
    only.in_flight = 100
    assert lr.pick([only], None, 0.0) is only


def test_avoids_the_loaded_endpoint() -> None:
    eps = endpoints(1, 1, 1)
    eps[1].in_flight = 50
    lr = make_balancer(BalancerConfig(type="least-request"), random.Random(1))
    picks = Counter(id(lr.pick(eps, None, 0.0)) for _ in range(3000))
    assert picks[id(eps[1])] == 0  # two distinct candidates: the loaded one always loses
    assert 1300 < picks[id(eps[0])] < 1700


def test_load_is_divided_by_weight() -> None:
    eps = endpoints(4, 1)
    eps[0].in_flight = 3  # 3 / 4 < 1 / 1
    eps[1].in_flight = 1
    lr = make_balancer(BalancerConfig(type="least-request"), random.Random(1))
    assert all(lr.pick(eps, None, 0.0) is eps[0] for _ in range(100))
    eps[0].in_flight = 5  # 5 / 4 > 1 / 1
    assert all(lr.pick(eps, None, 0.0) is eps[1] for _ in range(100))


def test_idle_service_is_balanced_by_weight() -> None:
    eps = endpoints(3, 1, 1, 5)
    lr = make_balancer(BalancerConfig(type="least-request"), random.Random(2))
    n = 40_000
    picks = Counter(id(lr.pick(eps, None, 0.0)) for _ in range(n))
    for e in eps:
        assert abs(picks[id(e)] / n - e.weight / 10) < 0.015


def test_closed_loop_load_spreads_evenly() -> None:
    """Requests that each stay in flight for a while: in_flight stays level across endpoints."""
    eps = endpoints(1, 1, 1, 1)
    rng = random.Random(3)
    lr = make_balancer(BalancerConfig(type="least-request"), rng)
    active: list[EndpointState] = []
    gaps = []
    for _ in range(5000):
        chosen = lr.pick(eps, None, 0.0)
        assert chosen is not None
        chosen.in_flight += 1
        active.append(chosen)
        if len(active) > 40:
            done = active.pop(rng.randrange(len(active)))
            done.in_flight -= 1
        gaps.append(max(e.in_flight for e in eps) - min(e.in_flight for e in eps))
    # 41 requests over 4 endpoints: random placement averages ~5.9 apart (max 14)
    assert sum(gaps) / len(gaps) < 3.0


def test_pick_two_draws_by_weight_and_distinct() -> None:
    eps = endpoints(1, 2, 7)
    rng = random.Random(4)
    firsts: Counter[int] = Counter()
    for _ in range(30_000):
        a, b = pick_two(eps, rng)
        assert a is not b
        firsts[id(a)] += 1
    for e in eps:
        assert abs(firsts[id(e)] / 30_000 - e.weight / 10) < 0.015

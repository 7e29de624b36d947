"""Round-robin: smooth weighted round-robin, exact shares over every cycle."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from sampan.http.client import Endpoint
from sampan.mesh.balancer import make_balancer
from sampan.mesh.config import BalancerConfig
from sampan.mesh.endpoint import EndpointState


def endpoints(*weights: int) -> list[EndpointState]:
    return [
        EndpointState(url=f"http://10.0.0.{i}:80", endpoint=Endpoint(f"10.0.0.{i}", 80), weight=w)
        for i, w in enumerate(weights)
    ]


def names(picks: list[EndpointState | None], eps: list[EndpointState]) -> str:
    return "".join("abcdefghij"[eps.index(p)] for p in picks if p is not None)


def test_empty_and_single() -> None:
    rr = make_balancer(BalancerConfig(type="round-robin"))
    assert rr.pick([], None, 0.0) is None
    (only,) = endpoints(3)
    assert all(rr.pick([only], None, 0.0) is only for _ in range(5))


def test_equal_weights_rotate() -> None:
    eps = endpoints(1, 1, 1)
    rr = make_balancer(BalancerConfig(type="round-robin"))
    picks = [rr.pick(eps, None, 0.0) for _ in range(9)]
    assert names(picks, eps) == "abcabcabc"


def test_weights_are_exact_over_every_cycle_and_smooth() -> None:
    eps = endpoints(5, 1, 1)
    rr = make_balancer(BalancerConfig(type="round-robin"))
    picks = [rr.pick(eps, None, 0.0) for _ in range(7 * 20)]
    assert names(picks[:7], eps) == "aabacaa"  # interleaved, not aaaaabc
    for cycle in range(20):
        counts = Counter(names(picks[cycle * 7 : cycle * 7 + 7], eps))
        assert counts == {"a": 5, "b": 1, "c": 1}


def test_many_weights_exact_counts() -> None:
    weights = (7, 3, 2, 1, 10)
    eps = endpoints(*weights)
    rr = make_balancer(BalancerConfig(type="round-robin"))
    total = sum(weights)
    picks = [rr.pick(eps, None, 0.0) for _ in range(total * 5)]
    counts = Counter(id(p) for p in picks)
    assert [counts[id(e)] for e in eps] == [w * 5 for w in weights]
    # Smooth: the heaviest (10 of 23) never waits more than ceil(23 / 10) picks.
    positions = [i for i, p in enumerate(picks) if p is eps[4]]
    assert max(b - a for a, b in pairwise(positions)) <= 3


def test_unavailable_endpoint_sits_out_and_shares_hold_among_the_rest() -> None:
    eps = endpoints(2, 1, 1)
    rr = make_balancer(BalancerConfig(type="round-robin"))
    subset = [eps[0], eps[2]]
    picks = [rr.pick(subset, None, 0.0) for _ in range(30)]
    counts = Counter(id(p) for p in picks)
    assert counts[id(eps[0])] == 20 and counts[id(eps[2])] == 10
    picks = [rr.pick(eps, None, 0.0) for _ in range(40)]
    counts = Counter(id(p) for p in picks)
    assert [counts[id(e)] for e in eps] == [20, 10, 10]


def test_scores_of_departed_endpoints_are_forgotten() -> None:
    rr = make_balancer(BalancerConfig(type="round-robin"))
    for _ in range(200):
        rr.pick(endpoints(2, 1), None, 0.0)  # fresh endpoint objects every time
    scores = rr._scores  # type: ignore[attr-defined]
    assert len(scores) <= 2 * 2 + 64 + 2

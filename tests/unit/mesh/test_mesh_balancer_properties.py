"""Property tests for every balancer: pick returns one of the given endpoints, None iff empty."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from sampan.http.client import Endpoint
from sampan.mesh.balancer import make_balancer
from sampan.mesh.balancers import pick_two
from sampan.mesh.config import BalancerConfig
from sampan.mesh.endpoint import EndpointState

KINDS = ["p2c-peak-ewma", "least-request", "round-robin", "consistent-hash"]

endpoint_specs = st.lists(
    st.tuples(
        st.integers(1, 1000),  # weight
        st.integers(0, 50),  # in_flight
        st.floats(0.0, 5.0),  # ewma
        st.floats(0.0, 100.0),  # ewma_at
    ),
    max_size=12,
)


def build(specs: list[tuple[int, int, float, float]]) -> list[EndpointState]:
    out = []
    for i, (weight, in_flight, ewma, ewma_at) in enumerate(specs):
        e = EndpointState(url=f"http://h{i}:80", endpoint=Endpoint(f"h{i}", 80), weight=weight)
        e.in_flight, e.ewma, e.ewma_at = in_flight, ewma, ewma_at
        out.append(e)
    return out


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    rounds=st.lists(
        st.tuples(endpoint_specs, st.one_of(st.none(), st.binary(max_size=16))), max_size=6
    ),
    seed=st.integers(0, 2**32),
    now=st.floats(0.0, 1000.0),
)
def test_pick_returns_a_given_endpoint_or_none_iff_empty(
    kind: str,
    rounds: list[tuple[list[tuple[int, int, float, float]], bytes | None]],
    seed: int,
    now: float,
) -> None:
    hash_on = {"header": "x-k"} if kind == "consistent-hash" else None
    config = BalancerConfig(type=kind, hash_on=hash_on)
    balancer = make_balancer(config, random.Random(seed))
    for specs, key in rounds:  # one balancer, changing endpoint sets
        eps = build(specs)
        for _ in range(3):
            chosen = balancer.pick(eps, key, now)
            if eps:
                assert chosen is not None and any(chosen is e for e in eps)
            else:
                assert chosen is None


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(1, 1000), min_size=2, max_size=10), seed=st.integers(0, 99))
def test_pick_two_gives_two_distinct_members(weights: list[int], seed: int) -> None:
    eps = build([(w, 0, 0.0, 0.0) for w in weights])
    rng = random.Random(seed)
    for _ in range(20):
        a, b = pick_two(eps, rng)
        assert a is not b and any(a is e for e in eps) and any(b is e for e in eps)


@settings(max_examples=30, deadline=None)
@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=6))
def test_round_robin_gives_exact_weights_over_a_cycle(weights: list[int]) -> None:
    eps = build([(w, 0, 0.0, 0.0) for w in weights])
    rr = make_balancer(BalancerConfig(type="round-robin"))
    picks = Counter(id(rr.pick(eps, None, 0.0)) for _ in range(sum(weights) * 3))
    assert [picks[id(e)] for e in eps] == [w * 3 for w in weights]


def test_factory_builds_each_type() -> None:
    for kind in KINDS:
        hash_on = {"cookie": "sid"} if kind == "consistent-hash" else None
        balancer = make_balancer(BalancerConfig(type=kind, hash_on=hash_on))
        assert callable(balancer.pick)

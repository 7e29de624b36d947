"""Traffic split between versions by weight (canary)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from sampan.http.client import Endpoint
from sampan.mesh.config import SplitEntry
from sampan.mesh.endpoint import EndpointState
from sampan.mesh.traffic_split import TrafficSplit


def endpoints(*versions: str | None) -> list[EndpointState]:
    return [
        EndpointState(url=f"http://10.0.0.{i}:80", endpoint=Endpoint(f"10.0.0.{i}", 80), version=v)
        for i, v in enumerate(versions)
    ]


def split(rng: random.Random | None = None, **weights: int) -> TrafficSplit:
    entries = [SplitEntry(version=v, weight=w) for v, w in weights.items()]
    return TrafficSplit(entries, rng if rng is not None else random.Random(1))


def versions_of(chosen: object) -> set[str | None]:
    assert isinstance(chosen, (list, tuple))
    return {e.version for e in chosen}


def test_no_split_returns_all_endpoints() -> None:
    eps = endpoints("v1", "v2", None)
    ts = TrafficSplit([])
    assert not ts.configured
    assert ts.choose(eps) is eps


def test_ninety_ten_within_tolerance() -> None:
    eps = endpoints("v1", "v1", "v1", "v2")
    ts = split(v1=90, v2=10)
    n = 20_000
    counts: Counter[str | None] = Counter()
    for _ in range(n):
        chosen = ts.choose(eps)
        (version,) = versions_of(chosen)
        counts[version] += 1
        assert len(chosen) == (3 if version == "v1" else 1)
    assert abs(counts["v2"] / n - 0.10) < 0.01


def test_weights_renormalise_over_versions_present() -> None:
    eps = endpoints("v1", "v3")  # v2 has no available endpoint
    ts = split(v1=60, v2=30, v3=10)
    n = 10_000
    counts = Counter(next(iter(versions_of(ts.choose(eps)))) for _ in range(n))
    assert abs(counts["v1"] / n - 60 / 70) < 0.015
    assert abs(counts["v3"] / n - 10 / 70) < 0.015


def test_only_one_version_present_gets_everything() -> None:
    eps = endpoints("v1", "v1")
    ts = split(v1=1, v2=99)
    assert all(ts.choose(eps) is eps for _ in range(100))


def test_unlisted_and_zero_weight_versions_get_nothing() -> None:
    eps = endpoints("v1", "v2", None, "v3")
    ts = split(v1=50, v2=0)
    assert ts.versions == {"v1": 50}
    assert all(versions_of(ts.choose(eps)) == {"v1"} for _ in range(100))
    assert ts.choose(endpoints("v2", None, "v3")) == ()
    assert ts.choose([]) == ()
    assert split(v1=0).choose(eps) == ()


def test_repeated_version_weights_add_up() -> None:
    ts = TrafficSplit([SplitEntry(version="a", weight=1), SplitEntry(version="a", weight=2)])
    assert ts.versions == {"a": 3}


@given(
    weights=st.dictionaries(st.sampled_from(["v1", "v2", "v3"]), st.integers(0, 100), min_size=1),
    present=st.lists(st.sampled_from(["v1", "v2", "v3", None]), max_size=8),
    seed=st.integers(0, 1000),
)
def test_choice_is_a_present_weighted_version(
    weights: dict[str, int], present: list[str | None], seed: int
) -> None:
    eps = endpoints(*present)
    ts = split(random.Random(seed), **weights)
    eligible = {v for v in present if v is not None and weights.get(v, 0) > 0}
    chosen = ts.choose(eps)
    if not eligible:
        assert len(chosen) == 0
        return
    (version,) = versions_of(chosen)
    assert version in eligible
    assert [e for e in eps if e.version == version] == list(chosen)

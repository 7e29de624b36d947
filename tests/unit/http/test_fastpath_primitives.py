"""The compiled front's own arithmetic, against the Python it must agree with: SHA-256
(key-auth digests) against hashlib, and the GCRA buckets against RateLimitPlugin's
dictionary implementation, decision by decision."""

from __future__ import annotations

import hashlib
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sampan.http import _fastpath  # type: ignore[attr-defined]


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_sha256_matches_hashlib(data: bytes) -> None:
    assert _fastpath.sha256(data) == hashlib.sha256(data).digest()


def test_sha256_padding_boundaries() -> None:
    """The lengths where the final block's padding changes shape."""
    for n in (0, 1, 54, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 1000, 100_000):
        data = bytes(range(256)) * (n // 256 + 1)
        assert _fastpath.sha256(data[:n]) == hashlib.sha256(data[:n]).digest(), n


class Reference:
    """RateLimitPlugin._local before the compiled buckets (the same formulas)."""

    def __init__(self, interval: float, tolerance: float) -> None:
        self.interval = interval
        self.tolerance = tolerance
        self.tats: dict[bytes, float] = {}

    def take(self, key: bytes, now: float) -> tuple[bool, float, float, int]:
        tat = max(self.tats.get(key, now), now)
        new_tat = tat + self.interval
        if new_tat - now > self.tolerance:
            return False, new_tat - self.tolerance - now, tat - now, 0
        self.tats[key] = new_tat
        remaining = math.floor((self.tolerance - (new_tat - now)) / self.interval + 1e-9)
        return True, 0.0, new_tat - now, remaining


@given(
    rate=st.integers(1, 50),
    period=st.sampled_from([0.5, 1.0, 10.0, 60.0]),
    burst=st.integers(1, 20),
    steps=st.lists(
        st.tuples(st.sampled_from([b"c:a", b"c:b", b"ip:127.0.0.1"]), st.floats(0, 3)),
        max_size=60,
    ),
)
@settings(max_examples=200, deadline=None)
def test_buckets_decide_as_the_python_limiter(
    rate: int, period: float, burst: int, steps: list[tuple[bytes, float]]
) -> None:
    interval = period / rate
    compiled = _fastpath.Buckets(interval, burst * interval)
    reference = Reference(interval, burst * interval)
    now = 1000.0
    for key, advance in steps:
        now += advance
        got = compiled.take(key, now)
        want = reference.take(key, now)
        assert got[0] == want[0]
        assert got[3] == want[3]
        assert math.isclose(got[1], want[1], abs_tol=1e-9)
        assert math.isclose(got[2], want[2], abs_tol=1e-9)


def test_buckets_forget_full_buckets() -> None:
    """As the Python limiter: when the count passes the sweep mark (1,024, then twice what a
    sweep kept), buckets that are full again are dropped (the same as never seen)."""
    buckets = _fastpath.Buckets(0.001, 0.001)
    for i in range(1025):
        buckets.take(b"old%d" % i, 0.0)  # the sweep at 1,025 finds none full: mark 2,050
    assert buckets.size() == 1025
    for i in range(1026):
        buckets.take(b"new%d" % i, 10.0)  # the 2,051st key sweeps: the old ones are full
    assert buckets.size() == 1026
    assert buckets.take(b"new0", 10.0)[0] is False  # kept ones still count


def test_buckets_reject_bad_arguments() -> None:
    import pytest

    with pytest.raises(ValueError):
        _fastpath.Buckets(0.0, 1.0)

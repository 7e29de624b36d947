"""Deadline: header parsing, shortening-only semantics, propagation arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sampan.mesh.deadline import Deadline


@pytest.mark.parametrize(
    ("value", "remaining", "source"),
    [
        (b"850", 0.85, "header"),
        (b" 850\t", 0.85, "header"),
        (b"0", 0.0, "header"),
        (None, 30.0, "default"),
        (b"", 30.0, "default"),
        (b"-5", 30.0, "default"),
        (b"+5", 30.0, "default"),
        (b"1.5", 30.0, "default"),
        (b"850ms", 30.0, "default"),
        (b"\xd9\xa3", 30.0, "default"),  # a non-ASCII digit
        (b"12345678901", 30.0, "default"),  # over MAX_DIGITS
        (b"9999999999", 30.0, "default"),  # valid but beyond our own total: capped
        (b"30000", 30.0, "default"),
        (b"29999", 29.999, "header"),
    ],
)
def test_from_header(value: bytes | None, remaining: float, source: str) -> None:
    deadline = Deadline.from_header(value, now=100.0, default_total=30.0)
    assert deadline.remaining(100.0) == pytest.approx(remaining)
    assert deadline.source == source


def test_zero_means_already_expired() -> None:
    deadline = Deadline.from_header(b"0", now=5.0, default_total=30.0)
    assert deadline.expired(5.0)
    assert deadline.header_value(5.0) == b"0"


def test_remaining_and_expiry() -> None:
    deadline = Deadline.after(10.0, 2.0)
    assert deadline.remaining(11.5) == pytest.approx(0.5)
    assert not deadline.expired(11.999)
    assert deadline.expired(12.0)
    assert deadline.remaining(13.0) == 0.0
    assert Deadline.after(10.0, -1.0).expired(10.0)


def test_header_value_subtracts_time_spent_here_and_rounds_down() -> None:
    deadline = Deadline.from_header(b"1000", now=50.0, default_total=30.0)
    assert deadline.header_value(50.0) == b"1000"
    assert deadline.header_value(50.2505) == b"749"
    assert deadline.header_value(51.5) == b"0"


def test_per_try_timeout_is_the_nearer_of_per_try_and_the_deadline() -> None:
    deadline = Deadline.after(0.0, 3.0)
    assert deadline.per_try_timeout(0.0, 1.0) == 1.0
    assert deadline.per_try_timeout(2.5, 1.0) == pytest.approx(0.5)
    assert deadline.per_try_timeout(4.0, 1.0) == 0.0


@given(
    start=st.floats(0, 1e6),
    ms=st.integers(0, 10**7),
    hops=st.lists(st.floats(0, 5), max_size=6),
)
def test_propagation_never_lengthens_the_deadline(start: float, ms: int, hops: list[float]) -> None:
    """Each hop re-reads what the previous one sent after spending some time: no hop
    downstream believes it has more time left than the original caller."""
    original = Deadline.from_header(str(ms).encode(), now=start, default_total=1e5)
    deadline, now = original, start
    for spent in hops:
        now += spent
        sent = deadline.header_value(now)
        assert int(sent) <= deadline.remaining(now) * 1000 + 1e-3
        deadline = Deadline.from_header(sent, now=now, default_total=1e5)
        assert deadline.remaining(now) <= original.remaining(now) + 1e-6
        assert deadline.expired(now) or deadline.at <= original.at + 1e-6

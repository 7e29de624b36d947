"""RetryBudget: reserve, ratio, sliding-window expiry, and an exact model-based property."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sampan.mesh.config import RetryBudgetConfig
from sampan.mesh.retry_budget import SLICES, RetryBudget


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def budget(
    ratio: float = 0.2, min_per_second: float = 0.0, window: float = 10.0, now: float = 0.0
) -> tuple[RetryBudget, FakeClock]:
    clock = FakeClock(now)
    config = RetryBudgetConfig(ratio=ratio, min_per_second=min_per_second, window=window)
    return RetryBudget(config, clock), clock


def test_reserve_allows_min_per_second_times_window_without_requests() -> None:
    b, _ = budget(ratio=0.2, min_per_second=1.0, window=10.0)
    assert [b.try_withdraw() for _ in range(11)] == [True] * 10 + [False]
    assert (b.retries_allowed, b.retries_denied) == (10, 1)


def test_ratio_of_requests() -> None:
    b, _ = budget(ratio=0.2)
    assert not b.try_withdraw()
    for _ in range(10):
        b.deposit()
    assert b.balance == 2.0
    assert [b.try_withdraw() for _ in range(3)] == [True, True, False]
    assert b.requests_in_window == 10
    assert b.retries_in_window == 2


def test_float_ratio_is_not_rounded_away() -> None:
    b, _ = budget(ratio=0.1)
    for _ in range(30):
        b.deposit()
    assert sum(b.try_withdraw() for _ in range(5)) == 3


def test_requests_expire_after_the_window() -> None:
    b, clock = budget(ratio=1.0, window=10.0)
    b.deposit()
    clock.now = 9.99  # still in the window (slice 0 of 10 is the oldest kept)
    assert b.requests_in_window == 1
    clock.now = 10.0
    assert b.requests_in_window == 0
    assert not b.try_withdraw()


def test_withdrawals_expire_too() -> None:
    b, clock = budget(ratio=0.0, min_per_second=0.1, window=10.0)  # reserve: 1 per window
    assert b.try_withdraw()
    assert not b.try_withdraw()
    clock.now = 10.0
    assert b.try_withdraw()


def test_a_long_silence_clears_everything() -> None:
    b, clock = budget(ratio=1.0)
    for _ in range(100):
        b.deposit()
    clock.now = 1e6
    assert b.requests_in_window == 0
    assert b.balance == 0.0


def test_clock_going_backwards_does_not_corrupt_counts() -> None:
    b, clock = budget(ratio=1.0, now=5.0)
    b.deposit()
    clock.now = 3.0
    b.deposit()
    assert b.requests_in_window == 2


# -- property: the budget allows exactly what the documented rule allows

_WINDOWS = (2.5, 5.0, 10.0, 20.0)  # slice lengths are binary fractions: no float edge cases
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.integers(1, 20)),
        st.tuples(st.just("retry"), st.integers(1, 20)),
        st.tuples(st.just("advance"), st.integers(1, 200)),  # in 1/8 s
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 3.0]),
    min_per_second=st.sampled_from([0.0, 0.5, 1.0, 10.0]),
    window=st.sampled_from(_WINDOWS),
    ops=_OPS,
)
def test_budget_matches_the_documented_rule(
    ratio: float, min_per_second: float, window: float, ops: list[tuple[str, int]]
) -> None:
    b, clock = budget(ratio, min_per_second, window)
    reserve = min_per_second * window
    slice_length = window / SLICES
    deposits: list[float] = []
    retries: list[float] = []

    def in_window(times: list[float], now: float) -> int:
        current = math.floor(now / slice_length)
        return sum(1 for t in times if math.floor(t / slice_length) > current - SLICES)

    for op, n in ops:
        if op == "advance":
            clock.now += n / 8
            continue
        for _ in range(n):
            if op == "deposit":
                b.deposit()
                deposits.append(clock.now)
                continue
            expected = in_window(retries, clock.now) + 1 <= (
                ratio * in_window(deposits, clock.now) + reserve + 1e-9
            )
            assert b.try_withdraw() is expected
            if expected:
                retries.append(clock.now)
                # The headline guarantee, in plain time: retries in the last 0.9 window
                # never exceed ratio x requests in the last window + the reserve.
                recent = sum(1 for t in retries if t > clock.now - window * 0.9)
                counted = sum(1 for t in deposits if t > clock.now - window)
                assert recent <= ratio * counted + reserve + 1e-9
    assert b.retries_allowed == len(retries)

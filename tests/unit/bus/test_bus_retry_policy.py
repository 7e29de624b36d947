"""RetryPolicy: exponential backoff with a cap and bounded jitter; invalid values rejected."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sampan.bus.retry import RetryPolicy


def test_backoff_grows_exponentially_without_jitter() -> None:
    """Without jitter the delay is initial * multiplier ** (attempt - 1)."""
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=100, jitter=0.0)
    assert [policy.backoff(a) for a in (1, 2, 3, 4)] == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_backoff_is_capped_at_max_backoff() -> None:
    """The delay never exceeds max_backoff."""
    policy = RetryPolicy(initial_backoff=1.0, multiplier=3.0, max_backoff=5.0, jitter=0.0)
    assert policy.backoff(3) == 5.0
    assert policy.backoff(500) == 5.0


def test_backoff_is_capped_for_huge_attempt_numbers() -> None:
    """A huge attempt number (a message redelivered for days) still gets max_backoff."""
    policy = RetryPolicy(max_attempts=10**9, multiplier=2.0, max_backoff=5.0, jitter=0.0)
    assert policy.backoff(2_000) == 5.0


def test_attempt_zero_or_negative_is_treated_as_first() -> None:
    """A non-positive attempt number gets the initial delay (never a fraction of it)."""
    policy = RetryPolicy(initial_backoff=0.3, jitter=0.0)
    assert policy.backoff(0) == policy.backoff(-5) == policy.backoff(1) == 0.3


def test_jitter_stays_within_its_bounds() -> None:
    """With jitter j the delay lies in [base*(1-j), base*(1+j)] and actually varies."""
    policy = RetryPolicy(initial_backoff=1.0, jitter=0.5, max_backoff=10)
    rng = random.Random(42)
    draws = [policy.backoff(1, rng) for _ in range(500)]
    assert all(0.5 <= d <= 1.5 for d in draws)
    assert max(draws) - min(draws) > 0.5


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    """The same seed gives the same delays."""
    policy = RetryPolicy(jitter=1.0)
    assert [policy.backoff(2, random.Random(3)) for _ in range(3)] == [
        policy.backoff(2, random.Random(3)) for _ in range(3)
    ]


def test_exhausted_after_max_attempts() -> None:
    """A message is exhausted once it failed max_attempts deliveries (1 = no retry)."""
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(a) for a in (1, 2, 3, 4)] == [False, False, True, True]
    assert RetryPolicy(max_attempts=1).exhausted(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"initial_backoff": -0.1},
        {"max_backoff": -1.0},
        {"jitter": -0.01},
        {"jitter": 1.01},
    ],
)
def test_invalid_values_are_rejected(kwargs: dict[str, float]) -> None:
    """Nonsensical settings raise ValueError when the policy is built."""
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("multiplier", [-2.0, -0.5])
def test_negative_multiplier_is_rejected(multiplier: float) -> None:
    """A negative multiplier (which makes negative delays) is rejected."""
    with pytest.raises(ValueError):
        RetryPolicy(multiplier=multiplier)


@pytest.mark.parametrize("field", ["initial_backoff", "max_backoff", "multiplier"])
def test_nan_is_rejected(field: str) -> None:
    """NaN settings are rejected (a NaN delay cannot be stored or compared)."""
    with pytest.raises(ValueError):
        RetryPolicy(**{field: float("nan")})  # type: ignore[arg-type]


@given(
    initial=st.floats(0.0, 60.0),
    cap=st.floats(0.0, 600.0),
    multiplier=st.floats(1.0, 10.0),
    jitter=st.floats(0.0, 1.0),
    attempt=st.integers(-3, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_backoff_lies_within_jitter_bounds_and_is_never_negative(
    initial: float, cap: float, multiplier: float, jitter: float, attempt: int, seed: int
) -> None:
    """backoff is in [base*(1-jitter), base*(1+jitter)] for base = capped exponential, and >= 0."""
    policy = RetryPolicy(
        initial_backoff=initial, max_backoff=cap, multiplier=multiplier, jitter=jitter
    )
    base = min(cap, initial * multiplier ** max(0, attempt - 1))
    delay = policy.backoff(attempt, random.Random(seed))
    assert delay >= 0
    slack = 1e-9 * max(1.0, base)
    assert base * (1 - jitter) - slack <= delay <= base * (1 + jitter) + slack

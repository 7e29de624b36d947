"""RetryDecider: which failures are retried, and the backoff schedule."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sampan.mesh.config import BackoffConfig, MeshRetryConfig
from sampan.mesh.retry_policy import RetryDecider


def decider(**overrides: object) -> RetryDecider:
    return RetryDecider(MeshRetryConfig.model_validate(overrides), random.Random(1))


def test_connect_errors_are_retried_for_any_method_and_body() -> None:
    d = decider()
    assert d.retryable("POST", error_kind="connect", body_replayable=False)
    assert d.retryable("PATCH", error_kind="connect", before_response=True)


def test_connect_not_in_on_is_not_retried() -> None:
    assert not decider(retry_on=["503"]).retryable("GET", error_kind="connect")


@pytest.mark.parametrize(
    ("method", "before_response", "replayable", "idempotent_only", "expected"),
    [
        ("GET", True, True, True, True),
        ("get", True, True, True, True),
        ("DELETE", True, True, True, True),
        ("GET", False, True, True, False),  # response bytes already arrived
        ("GET", True, False, True, False),  # body cannot be sent again
        ("POST", True, True, True, False),  # may have been executed
        ("POST", True, True, False, True),
        ("POST", False, True, False, False),
    ],
)
def test_reset(
    method: str, before_response: bool, replayable: bool, idempotent_only: bool, expected: bool
) -> None:
    d = decider(idempotent_only=idempotent_only)
    got = d.retryable(
        method, error_kind="reset", before_response=before_response, body_replayable=replayable
    )
    assert got is expected


def test_timeout_only_when_listed() -> None:
    assert not decider().retryable("GET", error_kind="timeout")
    d = decider(retry_on=["timeout"])
    assert d.retryable("GET", error_kind="timeout")
    assert not d.retryable("GET", error_kind="timeout", before_response=False)
    assert not d.retryable("POST", error_kind="timeout")


def test_protocol_and_unknown_errors_are_never_retried() -> None:
    d = decider(idempotent_only=False)
    assert not d.retryable("GET", error_kind="protocol")
    assert not d.retryable("GET", error_kind="gremlins")


def test_statuses() -> None:
    d = decider()
    assert d.retryable("GET", status=503)
    assert d.retryable("PUT", status=502)
    assert not d.retryable("GET", status=500)
    assert not d.retryable("GET", status=200)
    assert not d.retryable("POST", status=503)
    assert not d.retryable("GET", status=503, body_replayable=False)
    assert decider(idempotent_only=False).retryable("POST", status=503)
    assert decider(retry_on=["429"]).retryable("GET", status=429)


def test_nothing_to_judge_is_not_retried() -> None:
    assert not decider().retryable("GET")


def test_backoff_without_jitter_doubles_up_to_max() -> None:
    d = RetryDecider(MeshRetryConfig(backoff=BackoffConfig(initial=0.025, max=0.25, jitter=0.0)))
    assert [d.backoff(n) for n in range(1, 7)] == [0.025, 0.05, 0.1, 0.2, 0.25, 0.25]
    assert d.backoff(10**6) == 0.25


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="from 1"):
        decider().backoff(0)


def test_attempts_exposed() -> None:
    assert decider(attempts=4).attempts == 4


@given(
    attempt=st.integers(1, 2000),
    initial=st.floats(0, 10),
    cap=st.floats(0, 10),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_within_the_jitter_band_and_the_cap(
    attempt: int, initial: float, cap: float, jitter: float, seed: int
) -> None:
    config = MeshRetryConfig(backoff=BackoffConfig(initial=initial, max=cap, jitter=jitter))
    delay = RetryDecider(config, random.Random(seed)).backoff(attempt)
    full = min(cap, initial * 2.0 ** min(attempt - 1, 1000))
    assert 0.0 <= delay <= cap
    assert full * (1 - jitter) - 1e-12 <= delay <= full + 1e-12


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
    kind=st.sampled_from(["reset", "timeout", "protocol"]),
    replayable=st.booleans(),
    idempotent_only=st.booleans(),
)
def test_nothing_but_connect_is_retried_once_the_response_started(
    method: str, kind: str, replayable: bool, idempotent_only: bool
) -> None:
    d = decider(retry_on=["connect", "reset", "timeout"], idempotent_only=idempotent_only)
    assert not d.retryable(
        method, error_kind=kind, before_response=False, body_replayable=replayable
    )

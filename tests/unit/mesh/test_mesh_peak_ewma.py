"""Peak-EWMA: jumps to peaks, decays gradually, cost grows with load and shrinks with weight."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sampan.http.client import Endpoint
from sampan.mesh.endpoint import EndpointState
from sampan.mesh.peak_ewma import cost, decayed, observe


def endpoint(weight: int = 1) -> EndpointState:
    return EndpointState(url="http://h:80", endpoint=Endpoint("h", 80), weight=weight)


def test_first_observation_sets_the_estimate() -> None:
    e = endpoint()
    observe(e, 0.030, now=5.0, decay=10.0)
    assert (e.ewma, e.ewma_at) == (0.030, 5.0)


def test_peaks_replace_the_estimate_at_once() -> None:
    e = endpoint()
    observe(e, 0.010, 1.0, 10.0)
    observe(e, 0.500, 1.0, 10.0)
    assert e.ewma == 0.500


def test_lower_observations_are_weighted_by_elapsed_time() -> None:
    e = endpoint()
    observe(e, 0.100, 0.0, 10.0)
    observe(e, 0.010, 10.0, 10.0)  # one decay time later: w = 1/e
    w = math.exp(-1.0)
    assert e.ewma == pytest.approx(0.100 * w + 0.010 * (1 - w))
    assert e.ewma_at == 10.0
    observe(e, 0.001, 10.0, 10.0)  # no time passed: no weight for the new sample
    assert e.ewma == pytest.approx(0.100 * w + 0.010 * (1 - w))


def test_estimate_converges_to_a_steady_latency() -> None:
    e = endpoint()
    observe(e, 1.0, 0.0, 1.0)
    for i in range(1, 200):
        observe(e, 0.020, i * 0.1, 1.0)
    assert e.ewma == pytest.approx(0.020, rel=1e-6)


def test_clock_going_backwards_does_not_corrupt() -> None:
    e = endpoint()
    observe(e, 0.05, 10.0, 1.0)
    observe(e, 0.01, 9.0, 1.0)
    assert (e.ewma, e.ewma_at) == (0.05, 10.0)
    observe(e, -1.0, 11.0, 1.0)
    assert 0.0 <= e.ewma < 0.05


def test_cost_uses_default_rtt_until_measured() -> None:
    e = endpoint()
    assert cost(e, 100.0, 10.0, 0.01) == pytest.approx(0.01)
    e.in_flight = 3
    assert cost(e, 100.0, 10.0, 0.01) == pytest.approx(0.04)
    assert decayed(e, 100.0, 10.0, 0.01) == 0.01


def test_cost_decays_with_idle_time_and_divides_by_weight() -> None:
    e = endpoint(weight=2)
    observe(e, 0.2, 0.0, 10.0)
    assert cost(e, 0.0, 10.0, 0.01) == pytest.approx(0.1)
    assert cost(e, 10.0, 10.0, 0.01) == pytest.approx(0.1 * math.exp(-1))
    assert decayed(e, 20.0, 10.0, 0.01) == pytest.approx(0.2 * math.exp(-2))


@given(
    ewma=st.floats(0.0, 10.0),
    ewma_at=st.floats(0.0, 1e4),
    now=st.floats(0.0, 1e4),
    weight=st.integers(1, 1000),
    in_flight=st.integers(0, 10_000),
    decay=st.floats(0.01, 100.0),
    default_rtt=st.floats(1e-4, 1.0),
)
def test_cost_is_monotone_in_in_flight(
    ewma: float,
    ewma_at: float,
    now: float,
    weight: int,
    in_flight: int,
    decay: float,
    default_rtt: float,
) -> None:
    e = endpoint(weight)
    e.ewma, e.ewma_at, e.in_flight = ewma, ewma_at, in_flight
    lower = cost(e, now, decay, default_rtt)
    e.in_flight += 1
    higher = cost(e, now, decay, default_rtt)
    assert 0.0 <= lower <= higher
    e.weight = weight + 1
    assert cost(e, now, decay, default_rtt) <= higher


@given(
    samples=st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 10.0)), min_size=1),
    decay=st.floats(0.01, 100.0),
)
def test_estimate_stays_within_observed_range(
    samples: list[tuple[float, float]], decay: float
) -> None:
    e = endpoint()
    now = 0.0
    for rtt, gap in samples:
        now += gap
        observe(e, rtt, now, decay)
        assert e.ewma <= max(r for r, _ in samples) + 1e-12
    assert e.ewma >= 0.0
    assert e.ewma_at == now

"""OutlierDetector: consecutive-5xx and success-rate ejection, growth, cap, restore."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampan.http.client import Endpoint
from sampan.mesh.config import OutlierConfig
from sampan.mesh.endpoint import EndpointState
from sampan.mesh.outlier import MAX_MULTIPLIER, OutlierDetector


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def endpoints(n: int) -> list[EndpointState]:
    return [EndpointState(f"http://h{i}:80", Endpoint(f"h{i}", 80)) for i in range(n)]


def detector(n: int, **overrides: object) -> tuple[OutlierDetector, FakeClock, list[EndpointState]]:
    clock = FakeClock(1000.0)
    d = OutlierDetector(OutlierConfig.model_validate(overrides), clock)
    eps = endpoints(n)
    d.track(eps)
    return d, clock, eps


def test_consecutive_5xx_eject_at_the_threshold() -> None:
    d, clock, (a, _b, _c) = detector(3, consecutive_5xx=3, base_ejection=30.0)
    d.record(a, status=500, error=False)
    d.record(a, status=None, error=True)  # connect error counts as a 5xx
    assert a.consecutive_5xx == 2
    assert a.available(clock.now)
    d.record(a, status=503, error=False)
    assert not a.available(clock.now)
    assert a.ejected_until == clock.now + 30.0
    assert a.ejections == 1
    assert d.ejected_consecutive_5xx == 1
    assert a.consecutive_5xx == 0


def test_a_success_resets_the_streak() -> None:
    d, clock, (a, _b) = detector(2, consecutive_5xx=2)
    d.record(a, status=500, error=False)
    d.record(a, status=404, error=False)  # 4xx is the caller's fault, not the endpoint's
    d.record(a, status=500, error=False)
    assert a.available(clock.now)


def test_ejection_time_grows_and_is_capped() -> None:
    d, clock, (a, _b) = detector(2, consecutive_5xx=1, base_ejection=10.0)
    durations = []
    for _ in range(12):
        d.record(a, status=500, error=False)
        durations.append(a.ejected_until - clock.now)
        clock.now = a.ejected_until
        d.evaluate([a, _b])  # restores it; the interval (10 s) has not passed since
    assert durations[:3] == [10.0, 20.0, 30.0]
    assert durations[-1] == 10.0 * MAX_MULTIPLIER
    assert a.ejections == 12


def test_the_multiplier_shrinks_while_healthy() -> None:
    d, clock, eps = detector(2, consecutive_5xx=1, base_ejection=10.0, interval=10.0)
    a = eps[0]
    for _ in range(3):
        d.record(a, status=500, error=False)
        clock.now = a.ejected_until
        d.evaluate(eps)
    for _ in range(2):  # two healthy intervals: multiplier 3 -> 1
        clock.now += 10.0
        d.evaluate(eps)
    d.record(a, status=500, error=False)
    assert a.ejected_until - clock.now == 20.0


def test_evaluate_restores_expired_ejections() -> None:
    d, clock, eps = detector(3, consecutive_5xx=1, base_ejection=5.0)
    d.record(eps[0], status=500, error=False)
    assert d.ejected_count() == 1
    clock.now += 5.0
    d.evaluate(eps)
    assert d.restored == 1
    assert d.ejected_count() == 0
    assert eps[0].available(clock.now)


def test_max_ejection_percent_caps_ejections() -> None:
    d, clock, eps = detector(4, consecutive_5xx=1, max_ejection_percent=50)
    for ep in eps:
        d.record(ep, status=500, error=False)
    assert d.ejected_count() == 2
    assert d.refused == 2
    assert sum(ep.available(clock.now) for ep in eps) == 2


def test_refused_consecutive_ejection_is_retried_on_the_next_failure() -> None:
    d, clock, (a, b) = detector(2, consecutive_5xx=2, max_ejection_percent=50, base_ejection=1)
    for _ in range(2):
        d.record(a, status=500, error=False)
    for _ in range(2):
        d.record(b, status=500, error=False)
    assert not a.available(clock.now)
    assert b.available(clock.now)
    clock.now += 1.0
    d.evaluate([a, b])
    d.record(b, status=500, error=False)  # still past the threshold
    assert not b.available(clock.now)


def test_max_ejected_rounding_rule() -> None:
    def allowed(n: int, percent: int) -> int:
        d = OutlierDetector(OutlierConfig(max_ejection_percent=percent))
        return d.max_ejected(n)

    assert allowed(10, 50) == 5
    assert allowed(3, 50) == 1
    assert allowed(3, 10) == 1  # rounded down to 0, raised to one
    assert allowed(2, 10) == 1
    assert allowed(1, 50) == 0  # the only endpoint stays
    assert allowed(1, 100) == 1
    assert allowed(10, 0) == 0
    assert allowed(0, 100) == 0


def feed(d: OutlierDetector, ep: EndpointState, ok: int, bad: int) -> None:
    # interleave so the consecutive-5xx rule never fires
    for i in range(ok + bad):
        status = 500 if i % 2 == 1 and bad > 0 else 200
        if status == 500:
            bad -= 1
        d.record(ep, status=status, error=False)


def test_success_rate_ejects_the_outlier() -> None:
    d, clock, eps = detector(
        5, consecutive_5xx=1000, success_rate_min_requests=50, success_rate_min_hosts=3
    )
    for ep in eps[:4]:
        feed(d, ep, ok=99, bad=1)
    feed(d, eps[4], ok=50, bad=50)
    assert d.evaluate(eps) == [eps[4]]
    assert d.ejected_success_rate == 1
    assert not eps[4].available(clock.now)
    assert d.evaluate(eps) == []  # statistics started again


def test_success_rate_skips_endpoints_with_too_few_requests() -> None:
    d, _, eps = detector(
        5, consecutive_5xx=1000, success_rate_min_requests=50, success_rate_min_hosts=3
    )
    for ep in eps[:4]:
        feed(d, ep, ok=99, bad=1)
    feed(d, eps[4], ok=20, bad=20)  # as bad as the outlier above, but only 40 requests
    assert d.evaluate(eps) == []


@pytest.mark.parametrize(("min_hosts", "ejected"), [(3, True), (4, False)])
def test_success_rate_needs_min_hosts_judged(min_hosts: int, ejected: bool) -> None:
    d, _, eps = detector(
        4,
        consecutive_5xx=1000,
        success_rate_min_requests=50,
        success_rate_min_hosts=min_hosts,
        success_rate_stdev_factor=1.0,
    )
    feed(d, eps[0], ok=100, bad=0)
    feed(d, eps[1], ok=100, bad=0)
    feed(d, eps[2], ok=50, bad=50)
    feed(d, eps[3], ok=20, bad=20)  # not judged: 3 endpoints qualify
    assert d.evaluate(eps) == ([eps[2]] if ejected else [])


def test_equal_success_rates_eject_nobody() -> None:
    d, _, eps = detector(6, consecutive_5xx=1000, success_rate_min_requests=10)
    for ep in eps:
        feed(d, ep, ok=9, bad=1)
    assert d.evaluate(eps) == []


def test_evaluate_forgets_removed_endpoints() -> None:
    d, _, eps = detector(4, consecutive_5xx=1, max_ejection_percent=50)
    d.record(eps[0], status=500, error=False)
    d.record(eps[1], status=500, error=False)
    d.evaluate(eps[1:])  # eps[0] removed by discovery: 1 of 3 ejected
    assert d.ejected_count() == 1
    assert d.max_ejected() == 1


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(1, 8),
    percent=st.sampled_from([0, 10, 34, 50, 100]),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["ok", "5xx", "error", "advance", "evaluate"]), st.integers(0, 7)
        ),
        max_size=120,
    ),
)
def test_never_more_than_the_cap_ejected(n: int, percent: int, ops: list[tuple[str, int]]) -> None:
    d, clock, eps = detector(
        n,
        consecutive_5xx=2,
        max_ejection_percent=percent,
        success_rate_min_requests=2,
        success_rate_min_hosts=1,
        base_ejection=3.0,
        interval=1.0,
    )
    for op, i in ops:
        ep = eps[i % n]
        if op == "advance":
            clock.now += i
        elif op == "evaluate":
            d.evaluate(eps)
        else:
            d.record(ep, status=200 if op == "ok" else 500, error=op == "error")
        ejected = sum(not ep.available(clock.now) for ep in eps)
        assert ejected <= d.max_ejected(n)
        for ep in eps:
            assert ep.ejected_until <= clock.now + 3.0 * MAX_MULTIPLIER

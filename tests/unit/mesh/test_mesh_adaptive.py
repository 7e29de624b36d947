"""AdaptiveLimiter: AIMD and gradient updates, and a deterministic overload simulation."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

import pytest

from sampan.mesh.adaptive import AdaptiveLimiter
from sampan.mesh.config import AdaptiveConcurrencyConfig


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(**overrides: object) -> tuple[AdaptiveLimiter, FakeClock]:
    clock = FakeClock()
    config = AdaptiveConcurrencyConfig.model_validate(overrides)
    return AdaptiveLimiter(config, clock), clock


def test_admits_up_to_the_limit_then_sheds() -> None:
    lim, _ = limiter(initial_limit=3)
    assert [lim.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert (lim.in_flight, lim.admitted, lim.shed) == (3, 3, 1)
    lim.release(0.01, dropped=False)
    assert lim.in_flight == 2
    assert lim.try_acquire()


def test_initial_limit_is_clamped_and_min_above_max_is_refused() -> None:
    lim, _ = limiter(initial_limit=50, max_limit=10)
    assert lim.limit == 10
    with pytest.raises(ValueError, match="min_limit"):
        limiter(min_limit=5, max_limit=2)


def fill(lim: AdaptiveLimiter) -> None:
    while lim.try_acquire():
        pass


def test_aimd_grows_by_one_after_limit_good_samples_when_used() -> None:
    lim, _ = limiter(algorithm="aimd", initial_limit=4, latency_threshold=0.1)
    for _ in range(4):
        fill(lim)
        lim.release(0.01, dropped=False)
    assert lim.limit == 5


def test_aimd_does_not_grow_when_underused() -> None:
    lim, _ = limiter(algorithm="aimd", initial_limit=10, latency_threshold=0.1)
    for _ in range(100):
        assert lim.try_acquire()
        lim.release(0.01, dropped=False)  # 1 in flight of 10
    assert lim.limit == 10


def test_aimd_backs_off_on_drops_and_slow_samples_down_to_min() -> None:
    lim, _ = limiter(algorithm="aimd", initial_limit=100, min_limit=5, latency_threshold=0.1)
    lim.try_acquire()
    lim.release(0.01, dropped=True)
    assert lim.estimate == pytest.approx(90.0)
    lim.try_acquire()
    lim.release(0.2, dropped=False)
    assert lim.estimate == pytest.approx(81.0)
    for _ in range(100):
        lim.try_acquire()
        lim.release(1.0, dropped=False)
    assert lim.limit == 5


def test_aimd_never_exceeds_max() -> None:
    lim, _ = limiter(algorithm="aimd", initial_limit=3, max_limit=4, latency_threshold=1)
    for _ in range(50):
        fill(lim)
        lim.release(0.0, dropped=False)
        while lim.in_flight:
            lim.release(0.0, dropped=False)
    assert lim.limit == 4


def test_gradient_tracks_min_rtt_over_rolling_windows() -> None:
    lim = AdaptiveLimiter(
        AdaptiveConcurrencyConfig(initial_limit=4), (clock := FakeClock()), min_rtt_window=10.0
    )
    assert lim.min_rtt is None
    lim.try_acquire()
    lim.release(0.05, dropped=False)
    lim.try_acquire()
    lim.release(0.02, dropped=False)
    assert lim.min_rtt == 0.02
    clock.now = 10.0  # a new window: the previous one's minimum still counts
    lim.try_acquire()
    lim.release(0.04, dropped=False)
    assert lim.min_rtt == 0.02
    clock.now = 20.0  # the window with 0.02 is now two windows old
    assert lim.min_rtt == 0.04
    clock.now = 45.0  # silence for over two windows: nothing is known
    assert lim.min_rtt is None


def test_gradient_grows_at_min_rtt_and_shrinks_when_slow() -> None:
    lim, _ = limiter(initial_limit=16)
    fill(lim)
    lim.release(0.01, dropped=False)  # sets min_rtt; gradient 1: 16 -> 16 + 0.2 * 4
    assert lim.estimate == pytest.approx(16.8)
    for _ in range(20):
        fill(lim)
        lim.release(0.04, dropped=False)  # 4x min_rtt: gradient clamps at 0.5
    assert lim.limit < 16


def test_gradient_halves_towards_half_on_drop() -> None:
    lim, _ = limiter(initial_limit=100)
    lim.try_acquire()
    lim.release(0.01, dropped=True)
    assert lim.estimate == pytest.approx(100 * 0.8 + 50 * 0.2)


def test_gradient_ignores_good_samples_while_underused() -> None:
    lim, _ = limiter(initial_limit=100)
    for _ in range(50):
        lim.try_acquire()
        lim.release(0.01, dropped=False)
    assert lim.estimate == 100.0
    assert lim.min_rtt == 0.01


def test_release_ignores_nonsense_rtt() -> None:
    lim, _ = limiter(initial_limit=10)
    lim.try_acquire()
    lim.release(math.nan, dropped=False)
    lim.try_acquire()
    lim.release(-1.0, dropped=True)
    assert lim.estimate == 10.0
    assert lim.in_flight == 0


# -- simulation: a service whose latency rises with concurrency


@dataclass
class Outcome:
    p99: float
    served: int
    shed: int


def simulate(lim: AdaptiveLimiter | None, clock: FakeClock, seconds: float = 6.0) -> Outcome:
    """Poisson arrivals at 2000/s into a service that serves 10 requests at a time in
    10 ms each (1000/s at most); beyond 10 in flight every request slows down in
    proportion (latency = 10 ms x in_flight / 10). Fully deterministic (seeded)."""
    rng = random.Random(7)
    events: list[tuple[float, int, float]] = []  # (time, kind 0=done 1=arrival, latency)
    heapq.heappush(events, (0.0, 1, 0.0))
    in_flight = 0
    served = shed = 0
    latencies: list[float] = []
    while events:
        now, kind, latency = heapq.heappop(events)
        clock.now = now
        if kind == 0:
            in_flight -= 1
            served += 1
            if now > seconds / 2:  # steady state only
                latencies.append(latency)
            if lim is not None:
                lim.release(latency, dropped=False)
            continue
        if now < seconds:
            heapq.heappush(events, (now + rng.expovariate(2000.0), 1, 0.0))
        if lim is not None and not lim.try_acquire():
            shed += 1
            continue
        in_flight += 1
        latency = 0.010 * max(1.0, in_flight / 10)
        heapq.heappush(events, (now + latency, 0, latency))
    latencies.sort()
    return Outcome(latencies[int(len(latencies) * 0.99)], served, shed)


@pytest.mark.parametrize(
    ("algorithm", "bound"), [("gradient", 0.05), ("aimd", 0.1)], ids=["gradient", "aimd"]
)
def test_limiter_sheds_before_latency_explodes(algorithm: str, bound: float) -> None:
    unlimited = simulate(None, FakeClock())
    clock = FakeClock()
    config = AdaptiveConcurrencyConfig.model_validate(
        {"algorithm": algorithm, "initial_limit": 20, "latency_threshold": 0.05}
    )
    limited = simulate(AdaptiveLimiter(config, clock), clock)
    assert unlimited.p99 > 1.0  # queueing without bound: latency explodes
    assert limited.p99 < bound  # admitted requests stay fast...
    assert limited.shed > 0  # ...because the excess is shed (503)...
    assert limited.served >= 0.9 * 1000 * 6.0  # ...while the service still runs near capacity

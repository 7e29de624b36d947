"""P2C peak-EWMA, checked in a small discrete-event simulation (simulated time, no sleeping):
a slow endpoint is starved relative to round-robin, and wins its traffic back once it
recovers."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sampan.http.client import Endpoint
from sampan.mesh.balancer import Balancer, make_balancer
from sampan.mesh.config import BalancerConfig
from sampan.mesh.endpoint import EndpointState
from sampan.mesh.peak_ewma import observe

FAST, SLOW = 0.010, 0.100  # seconds: one endpoint has 10x the latency


def endpoints(*weights: int) -> list[EndpointState]:
    return [
        EndpointState(url=f"http://10.0.0.{i}:80", endpoint=Endpoint(f"10.0.0.{i}", 80), weight=w)
        for i, w in enumerate(weights)
    ]


@dataclass
class Simulation:
    """Poisson arrivals; each request takes its endpoint's latency x U(0.5, 1.5); on completion
    ``in_flight`` drops and the latency is observed, as the mesh's client does."""

    balancer: Balancer
    endpoints: list[EndpointState]
    latency: dict[int, float]
    decay: float
    rate: float = 200.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    now: float = 0.0
    pending: list[tuple[float, int, EndpointState, float]] = field(default_factory=list)
    seq: int = 0

    def run(self, duration: float) -> list[float]:
        """Simulate ``duration`` seconds; the share of requests each endpoint got."""
        counts = dict.fromkeys(map(id, self.endpoints), 0)
        end = self.now + duration
        while True:
            self.now += self.rng.expovariate(self.rate)
            self._complete(until=min(self.now, end))
            if self.now >= end:
                self.now = end
                break
            chosen = self.balancer.pick(self.endpoints, None, self.now)
            assert chosen is not None
            counts[id(chosen)] += 1
            chosen.in_flight += 1
            rtt = self.latency[id(chosen)] * (0.5 + self.rng.random())
            self.seq += 1
            heapq.heappush(self.pending, (self.now + rtt, self.seq, chosen, self.now))
        total = sum(counts.values())
        return [counts[id(e)] / total for e in self.endpoints]

    def _complete(self, until: float) -> None:
        while self.pending and self.pending[0][0] <= until:
            finished, _, endpoint, started = heapq.heappop(self.pending)
            endpoint.in_flight -= 1
            observe(endpoint, finished - started, finished, self.decay)


def simulation(kind: str, decay: float = 10.0) -> tuple[Simulation, EndpointState]:
    eps = endpoints(1, 1, 1)
    config = BalancerConfig(type=kind, decay=decay)
    balancer = make_balancer(config, random.Random(1))
    latency = {id(eps[0]): FAST, id(eps[1]): FAST, id(eps[2]): SLOW}
    return Simulation(balancer, eps, latency, decay), eps[2]


def test_slow_endpoint_gets_a_small_share_while_round_robin_gives_it_a_third() -> None:
    sim, _ = simulation("p2c-peak-ewma")
    shares = sim.run(60.0)
    assert shares[2] < 0.10
    assert abs(shares[0] - shares[1]) < 0.05

    rr, _ = simulation("round-robin")
    assert rr.run(60.0)[2] == pytest.approx(1 / 3, abs=0.01)


def test_recovered_endpoint_gets_its_traffic_back() -> None:
    sim, slow = simulation("p2c-peak-ewma", decay=1.0)
    assert sim.run(30.0)[2] < 0.05
    sim.latency[id(slow)] = FAST  # it recovers
    sim.run(10.0)  # the estimate decays and is re-measured
    shares = sim.run(30.0)
    assert shares[2] > 0.28


def test_recovery_takes_about_the_decay_time() -> None:
    sim, slow = simulation("p2c-peak-ewma", decay=10.0)
    sim.run(30.0)
    sim.latency[id(slow)] = FAST
    early = sim.run(2.0)[2]
    sim.run(40.0)
    late = sim.run(30.0)[2]
    assert early < 0.15
    assert late > 0.28


def test_unmeasured_endpoints_use_default_rtt_and_weights() -> None:
    eps = endpoints(1, 4)
    p2c = make_balancer(BalancerConfig(decay=10.0, default_rtt=0.01), random.Random(1))
    # Both idle and unmeasured: cost 0.01 / weight, the heavier wins every pair.
    assert all(p2c.pick(eps, None, 1.0) is eps[1] for _ in range(50))
    eps[1].in_flight = 4  # 0.01 * 5 / 4 > 0.01 * 1 / 1
    assert all(p2c.pick(eps, None, 1.0) is eps[0] for _ in range(50))


def test_measured_faster_endpoint_wins_and_ties_go_to_fewer_in_flight() -> None:
    eps = endpoints(1, 1)
    p2c = make_balancer(BalancerConfig(decay=10.0), random.Random(1))
    observe(eps[0], 0.050, 1.0, 10.0)
    observe(eps[1], 0.020, 1.0, 10.0)
    assert all(p2c.pick(eps, None, 1.0) is eps[1] for _ in range(20))
    # Equal cost: 0.02 * (1 + 1) == 0.04 * (0 + 1), and eps[0] has fewer in flight.
    observe(eps[0], 0.020, 1.0, 10.0)
    eps[0].ewma = 0.040
    eps[1].in_flight = 1
    assert all(p2c.pick(eps, None, 1.0) is eps[0] for _ in range(20))


def test_empty_and_single() -> None:
    p2c = make_balancer(BalancerConfig(), random.Random(1))
    assert p2c.pick([], None, 0.0) is None
    (only,) = endpoints(1)
    assert p2c.pick([only], None, 0.0) is only


@pytest.mark.parametrize("kind", ["least-request", "p2c-peak-ewma"])
def test_p2c_balancers_beat_round_robin_on_a_slow_endpoint(kind: str) -> None:
    shares: Callable[[str], float] = lambda k: simulation(k)[0].run(30.0)[2]  # noqa: E731
    assert shares(kind) < shares("round-robin") - 0.15

"""CircuitBreaker: the closed/open/half-open machine, rate window, stale results."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sampan.http.client import Endpoint
from sampan.mesh.breaker import CircuitBreaker
from sampan.mesh.config import CircuitBreakerConfig
from sampan.mesh.endpoint import EndpointBreaker, EndpointState


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def breaker(**overrides: object) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock(100.0)
    return CircuitBreaker(CircuitBreakerConfig.model_validate(overrides), clock), clock


def fail(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        b.record(False, epoch=b.on_start())


def succeed(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        b.record(True, epoch=b.on_start())


def test_consecutive_failures_open_it_for_open_for() -> None:
    b, clock = breaker(consecutive_failures=3, open_for=5.0)
    fail(b, 2)
    succeed(b)
    fail(b, 2)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open"
    assert b.opened_count == 1
    assert b.reopens_at == 105.0
    assert not b.allows(clock.now)
    assert not b.allows(104.999)
    assert b.allows(105.0)
    assert b.state == "half-open"


def test_half_open_admits_limited_probes_and_closes_after_enough_successes() -> None:
    b, clock = breaker(consecutive_failures=1, open_for=1.0, half_open_probes=2)
    fail(b)
    clock.now += 1.0
    assert b.allows(clock.now)
    first = b.on_start()
    assert b.allows(clock.now)
    second = b.on_start()
    assert not b.allows(clock.now)  # both probe slots taken
    assert b.probes_in_flight == 2
    b.record(True, epoch=first)
    assert b.state == "half-open"
    assert b.allows(clock.now)  # a slot freed, but one more success is needed
    b.record(True, epoch=second)
    assert b.state == "closed"
    assert b.reopens_at is None


def test_a_failed_probe_reopens() -> None:
    b, clock = breaker(consecutive_failures=1, open_for=2.0, half_open_probes=3)
    fail(b)
    clock.now += 2.0
    succeed(b)
    fail(b)
    assert b.state == "open"
    assert b.opened_count == 2
    assert b.reopens_at == clock.now + 2.0


def test_failure_rate_over_the_window_opens_it() -> None:
    b, _ = breaker(consecutive_failures=100, failure_rate=0.5, min_requests=10)
    for _ in range(4):
        succeed(b)
        fail(b)
    succeed(b)
    assert b.state == "closed"  # 4/9: too few requests anyway
    fail(b)
    assert b.state == "open"  # 5 of 10 failed


def test_rate_needs_min_requests() -> None:
    b, _ = breaker(consecutive_failures=100, failure_rate=0.5, min_requests=20)
    for _ in range(9):
        fail(b)
        succeed(b)
    assert b.state == "closed"


def test_old_failures_leave_the_window() -> None:
    b, clock = breaker(consecutive_failures=100, failure_rate=0.5, min_requests=4, window=10.0)
    fail(b)
    succeed(b)
    fail(b)
    clock.now += 10.0
    succeed(b)
    succeed(b)
    fail(b)
    # Counting the old ones, 3 of 6 failed (the rate); only 1 of 3 is recent.
    assert b.state == "closed"
    succeed(b)
    assert b.state == "closed"


def test_rate_boundary_is_inclusive() -> None:
    b, _ = breaker(consecutive_failures=100, failure_rate=0.5, min_requests=4)
    succeed(b)
    fail(b)
    succeed(b)
    fail(b)
    assert b.state == "open"


def test_results_from_before_opening_are_stale() -> None:
    b, clock = breaker(consecutive_failures=2, open_for=1.0, half_open_probes=1)
    early = b.on_start()  # sent while closed
    fail(b, 2)
    assert b.state == "open"
    b.record(False, epoch=early)  # lands while open
    clock.now += 1.0
    late = b.on_start()
    assert b.state == "half-open"
    b.record(False, epoch=early)  # lands while half-open: must not reopen
    assert b.state == "half-open"
    assert b.stale_results == 2
    b.record(True, epoch=late)
    assert b.state == "closed"


def test_without_epoch_a_result_in_half_open_counts_only_if_a_probe_is_out() -> None:
    b, clock = breaker(consecutive_failures=1, open_for=1.0, half_open_probes=1)
    fail(b)
    clock.now += 1.0
    b.record(False)  # no probe sent yet: ignored
    assert b.state == "half-open"
    b.on_start()
    b.record(False)
    assert b.state == "open"


def test_abandon_frees_the_probe_slot_without_a_verdict() -> None:
    b, clock = breaker(consecutive_failures=1, open_for=1.0, half_open_probes=1)
    fail(b)
    clock.now += 1.0
    epoch = b.on_start()
    assert not b.allows(clock.now)
    b.abandon(epoch=epoch)
    assert b.allows(clock.now)
    assert b.state == "half-open"


def test_is_an_endpoint_breaker() -> None:
    b, clock = breaker(consecutive_failures=1, open_for=1.0)
    as_protocol: EndpointBreaker = b
    state = EndpointState("http://a:1", Endpoint("a", 1), breaker=as_protocol)
    assert state.available(clock.now)
    fail(b)
    assert not state.available(clock.now)
    assert state.available(clock.now + 1.0)


class BreakerMachine(RuleBasedStateMachine):
    """Random traffic through a breaker whose callers respect allows()."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.config = CircuitBreakerConfig(
            consecutive_failures=3,
            failure_rate=0.5,
            window=4.0,
            min_requests=6,
            open_for=2.0,
            half_open_probes=2,
        )
        self.breaker = CircuitBreaker(self.config, self.clock)
        self.in_flight: list[int] = []
        self.opened = 0

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 5.0]))
    def advance(self, dt: float) -> None:
        was_open = self.breaker.state == "open"
        reopens_at = self.breaker.reopens_at
        self.clock.now += dt
        if was_open:
            assert reopens_at is not None
            expected = "half-open" if self.clock.now >= reopens_at else "open"
            assert self.breaker.state == expected

    @rule()
    def send(self) -> None:
        if self.breaker.allows(self.clock.now):
            self.in_flight.append(self.breaker.on_start())
        else:
            assert self.breaker.state != "closed"

    @precondition(lambda self: bool(self.in_flight))
    @rule(index=st.integers(0, 100), success=st.booleans(), abandon=st.booleans())
    def finish(self, index: int, success: bool, abandon: bool) -> None:
        epoch = self.in_flight.pop(index % len(self.in_flight))
        before = self.breaker.state
        current = epoch == self.breaker.epoch
        if abandon:
            self.breaker.abandon(epoch=epoch)
            assert self.breaker.state == before
            return
        self.breaker.record(success, epoch=epoch)
        after = self.breaker.state
        if not current:
            assert after == before  # stale results change nothing
        elif before == "half-open":
            assert after in ("half-open", "closed") if success else after == "open"
        elif before == "closed" and success:
            assert after == "closed"
        if after == "open" and before != "open":
            self.opened += 1

    @invariant()
    def consistent(self) -> None:
        b = self.breaker
        state = b.state
        assert state in ("closed", "open", "half-open")
        assert b.opened_count == self.opened
        assert b.probes_in_flight <= self.config.half_open_probes
        if state == "closed":
            assert b.consecutive_failures < self.config.consecutive_failures
            assert b.allows(self.clock.now)
        if state == "open":
            assert not b.allows(self.clock.now)
            assert b.probes_in_flight == 0
        if state != "half-open":
            assert b.probes_in_flight == 0


BreakerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_breaker_state_machine = BreakerMachine.TestCase

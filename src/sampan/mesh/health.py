"""Health checks: active probes and passive judgement of live traffic.

Active (``ActiveHealthChecker``): every endpoint of the service is probed with ``GET path``
every ``interval``; a probe fails when it does not answer within ``timeout`` (connect and
response together), cannot connect, or answers a status not in ``expected_statuses``. After
``unhealthy_threshold`` failures in a row ``state.healthy`` turns False (the balancers skip
the endpoint); after ``healthy_threshold`` successes in a row it turns True again. New
endpoints start healthy (traffic is not held back waiting for a first probe) and are
probed from the moment they join the set; removed ones stop being probed. Each endpoint's
first probe comes at a random point of the first interval, so endpoints (and nodes) do not
probe in step. Probes go through the node's connection pool, so a probe may reuse a
keep-alive connection and vice versa; the path is appended to the endpoint's base path.

Passive (``PassiveHealth``): the mesh reports every attempt's outcome with
``record(state, ok=...)``. After ``consecutive_failures`` failures in a row the endpoint
sits out for ``unhealthy_for`` (``state.unhealthy_until``) and its streak starts again from
zero; failures reported while it sits out (calls that were already in flight) do not
extend the sentence. The passive streak is kept here, apart from the state's own
counters, so it does not interfere with outlier detection or the circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from sampan.http.body import BodyTooLarge
from sampan.http.client import ConnectionPool, UpstreamError
from sampan.http.headers import Headers
from sampan.mesh.config import ActiveHealthCheck, PassiveHealthCheck
from sampan.mesh.endpoint import EndpointState
from sampan.mesh.endpoint_set import EndpointSet

__all__ = ["ActiveHealthChecker", "PassiveHealth", "ProbeRecord"]

log = logging.getLogger(__name__)

USER_AGENT = b"sampan-health-check/1"
MAX_PROBE_BODY = 64 * 1024
"""A probe reads at most this much of the body (so the connection can be reused)."""

TransitionHook = Callable[[EndpointState, bool], None]
"""Called with (endpoint, healthy) when a verdict flips."""
ProbeHook = Callable[[EndpointState, bool, float], None]
"""Called with (endpoint, ok, seconds) after every probe."""


@dataclass(slots=True)
class ProbeRecord:
    """The active checker's memory of one endpoint."""

    successes: int = 0
    """Successes in a row."""
    failures: int = 0
    """Failures in a row."""
    probes: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_at: float | None = None


class ActiveHealthChecker:
    """Probes every endpoint of ``endpoint_set`` and keeps ``state.healthy`` up to date."""

    def __init__(
        self,
        service: str,
        config: ActiveHealthCheck,
        endpoint_set: EndpointSet,
        pool: ConnectionPool,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_transition: TransitionHook | None = None,
        on_probe: ProbeHook | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.endpoint_set = endpoint_set
        self.pool = pool
        self.clock = clock
        self.on_transition = on_transition
        self.on_probe = on_probe
        self._rng = rng if rng is not None else random.Random()
        path = config.path if config.path.startswith("/") else f"/{config.path}"
        self._path = path
        self._expected = frozenset(config.expected_statuses)
        self._tasks: dict[EndpointState, asyncio.Task[None]] = {}
        self._records: dict[EndpointState, ProbeRecord] = {}
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._unsubscribe is not None:
            return
        self._unsubscribe = self.endpoint_set.on_change(self._sync)
        self._sync()

    async def stop(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def record(self, state: EndpointState) -> ProbeRecord | None:
        """What the checker knows about ``state`` (None if never seen)."""
        return self._records.get(state)

    def _sync(self) -> None:
        """Probe the endpoints that joined; stop probing the ones that left."""
        if self._unsubscribe is None:
            return
        current = set(self.endpoint_set.all())
        for state in [s for s in self._tasks if s not in current]:
            self._tasks.pop(state).cancel()
            self._records.pop(state, None)
        interval = float(self.config.interval)
        for state in current:
            if state not in self._tasks:
                self._records[state] = ProbeRecord()
                self._tasks[state] = asyncio.create_task(
                    self._loop(state, self._rng.uniform(0.0, interval)),
                    name=f"health-check:{self.service}:{state.url}",
                )

    async def _loop(self, state: EndpointState, first_delay: float) -> None:
        interval = float(self.config.interval)
        await asyncio.sleep(first_delay)
        while state in self._tasks:  # ends when the endpoint leaves or on stop()
            started = time.monotonic()
            try:
                await self.check(state)
            except Exception:  # a bug must not end the probing of this endpoint
                log.exception("service %s: health check of %s failed", self.service, state.url)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(interval - elapsed, 0.0))

    # -- probing ------------------------------------------------------------------------------

    async def check(self, state: EndpointState) -> bool:
        """Probe ``state`` once, update its verdict; returns whether the probe passed."""
        started = time.monotonic()
        status, error = await self._probe(state)
        seconds = time.monotonic() - started
        ok = error is None
        record = self._records.get(state)
        if record is None:
            record = self._records[state] = ProbeRecord()
        record.probes += 1
        record.last_status = status
        record.last_error = error
        record.last_at = self.clock()
        if self.on_probe is not None:
            self.on_probe(state, ok, seconds)
        config = self.config
        if ok:
            record.failures = 0
            record.successes += 1
            if not state.healthy and record.successes >= config.healthy_threshold:
                state.healthy = True
                log.info("service %s: %s is healthy again", self.service, state.url)
                self._flipped(state, True)
        else:
            record.successes = 0
            record.failures += 1
            if state.healthy and record.failures >= config.unhealthy_threshold:
                state.healthy = False
                state.last_error = f"health check: {error}"
                log.warning(
                    "service %s: %s is unhealthy after %d failed probes (%s)",
                    self.service,
                    state.url,
                    record.failures,
                    error,
                )
                self._flipped(state, False)
        return ok

    def _flipped(self, state: EndpointState, healthy: bool) -> None:
        if self.on_transition is not None:
            try:
                self.on_transition(state, healthy)
            except Exception:
                log.exception("service %s: health transition hook failed", self.service)

    async def _probe(self, state: EndpointState) -> tuple[int | None, str | None]:
        """(status or None, None if it passed else why not)."""
        timeout = float(self.config.timeout)
        target = (state.base_path + self._path).encode()
        headers = Headers([(b"user-agent", USER_AGENT), (b"accept", b"*/*")])
        try:
            async with asyncio.timeout(timeout):
                response = await self.pool.request(
                    state.endpoint,
                    "GET",
                    target,
                    headers,
                    None,
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    write_timeout=timeout,
                )
                try:
                    if response.content is None:
                        await response.body.read(MAX_PROBE_BODY)
                except (BodyTooLarge, UpstreamError):
                    pass  # the status decides; the connection is closed below
                finally:
                    await response.aclose()
        except TimeoutError:
            return None, f"no answer within {timeout:g}s"
        except UpstreamError as exc:
            return None, f"{exc.kind}: {exc}"
        except OSError as exc:
            return None, f"connect: {exc}"
        if response.status not in self._expected:
            return response.status, f"status {response.status}"
        return response.status, None


class PassiveHealth:
    """Takes an endpoint out for ``unhealthy_for`` after consecutive failures on live
    traffic (connect errors, resets, timeouts, 5xx — what counts is the caller's call)."""

    def __init__(
        self,
        config: PassiveHealthCheck,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_unhealthy: Callable[[EndpointState], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.on_unhealthy = on_unhealthy
        # Failures in a row per endpoint; only endpoints with a streak are in it, and an
        # endpoint that leaves the set leaves this map with it.
        self._streaks: weakref.WeakKeyDictionary[EndpointState, int] = weakref.WeakKeyDictionary()

    def streak(self, state: EndpointState) -> int:
        return self._streaks.get(state, 0)

    def record(self, state: EndpointState, *, ok: bool) -> bool:
        """Count one outcome; returns True when this failure took the endpoint out."""
        streaks = self._streaks
        if ok:
            if streaks:
                streaks.pop(state, None)
            return False
        now = self.clock()
        if now < state.unhealthy_until:
            return False  # already sitting out: a call that was in flight failed
        count = streaks.get(state, 0) + 1
        if count < self.config.consecutive_failures:
            streaks[state] = count
            return False
        streaks.pop(state, None)
        state.unhealthy_until = now + float(self.config.unhealthy_for)
        log.warning(
            "endpoint %s: %d failures in a row on live traffic; out for %gs",
            state.url,
            count,
            float(self.config.unhealthy_for),
        )
        if self.on_unhealthy is not None:
            with contextlib.suppress(Exception):
                self.on_unhealthy(state)
        return True

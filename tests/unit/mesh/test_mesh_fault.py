"""Fault injection: config validation, percentages, header trigger, abort responses."""

from __future__ import annotations

import random

import orjson
import pytest
from pydantic import ValidationError

from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.mesh.fault import FaultConfig, FaultInjector


def request(*headers: tuple[bytes, bytes]) -> Request:
    return Request("GET", b"/x", "/x", b"", Headers(list(headers)))


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def injector(config: dict[str, object], seed: int = 1) -> tuple[FaultInjector, Sleeps]:
    sleeps = Sleeps()
    return FaultInjector(FaultConfig.model_validate(config), random.Random(seed), sleep=sleeps), (
        sleeps
    )


def test_config_parses_durations_and_defaults() -> None:
    config = FaultConfig.model_validate({"delay": {"fixed": "250ms"}, "abort": {"status": 503}})
    assert config.delay is not None and config.delay.fixed == 0.25
    assert config.delay.percent == 100.0
    assert config.abort is not None and config.abort.percent == 100.0
    assert config.allow_header_trigger is False
    assert FaultConfig().delay is None


@pytest.mark.parametrize(
    "bad",
    [
        {"abort": {"status": 200}},
        {"abort": {"status": 600}},
        {"abort": {"status": 503, "percent": 101}},
        {"delay": {"fixed": "1s", "percent": -1}},
        {"delay": {"fixed": "soon"}},
        {"delay": {"percent": 10}},
        {"delay": {"fixed": "1s", "jitter": 1}},
        {"latency": {}},
    ],
)
def test_config_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FaultConfig.model_validate(bad)


def test_config_fields_are_described() -> None:
    schema = FaultConfig.model_json_schema()
    for name in ("delay", "abort", "allow_header_trigger"):
        assert schema["properties"][name].get("description")


async def test_nothing_configured_does_nothing() -> None:
    fault, sleeps = injector({})
    assert await fault.apply(request()) is None
    assert sleeps.calls == []


async def test_delay_then_abort_at_100_percent() -> None:
    fault, sleeps = injector({"delay": {"fixed": "2s"}, "abort": {"status": 503}})
    response = await fault.apply(request())
    assert sleeps.calls == [2.0]
    assert response is not None
    assert response.status == 503
    assert response.headers.get(b"content-type") == b"application/problem+json"
    assert response.headers.get(b"x-sampan-fault") == b"abort"
    assert isinstance(response.body, bytes)
    body = orjson.loads(response.body)
    assert body["status"] == 503
    assert body["title"] == "Service Unavailable"
    assert body["fault"] == "abort"
    assert (fault.delays, fault.aborts) == (1, 1)


async def test_unnamed_status_gets_a_generic_title() -> None:
    fault, _ = injector({"abort": {"status": 599}})
    response = await fault.apply(request())
    assert response is not None and isinstance(response.body, bytes)
    assert orjson.loads(response.body)["title"] == "Injected fault"


async def test_percentages_are_honoured() -> None:
    fault, sleeps = injector(
        {"delay": {"fixed": 0.1, "percent": 30}, "abort": {"status": 500, "percent": 5}}
    )
    aborted = 0
    for _ in range(10_000):
        if await fault.apply(request()) is not None:
            aborted += 1
    assert 2700 < len(sleeps.calls) < 3300
    assert 400 < aborted < 600


async def test_zero_percent_never_fires() -> None:
    fault, sleeps = injector(
        {"delay": {"fixed": 1, "percent": 0}, "abort": {"status": 500, "percent": 0}}
    )
    for _ in range(1000):
        assert await fault.apply(request()) is None
    assert sleeps.calls == []


async def test_header_is_ignored_unless_allowed() -> None:
    fault, sleeps = injector(
        {"delay": {"fixed": 1, "percent": 0}, "abort": {"status": 500, "percent": 0}}
    )
    assert await fault.apply(request((b"x-sampan-fault", b"abort, delay"))) is None
    assert sleeps.calls == []


async def test_header_forces_configured_faults_when_allowed() -> None:
    fault, sleeps = injector(
        {
            "delay": {"fixed": 1, "percent": 0},
            "abort": {"status": 504, "percent": 0},
            "allow_header_trigger": True,
        }
    )
    assert await fault.apply(request()) is None
    assert await fault.apply(request((b"x-sampan-fault", b"delay"))) is None
    assert sleeps.calls == [1.0]
    response = await fault.apply(request((b"x-sampan-fault", b"Abort")))
    assert response is not None and response.status == 504
    assert len(sleeps.calls) == 1
    both = await fault.apply(request((b"x-sampan-fault", b"delay, abort")))
    assert both is not None and len(sleeps.calls) == 2
    assert await fault.apply(request((b"x-sampan-fault", b"explode"))) is None


async def test_header_naming_an_unconfigured_fault_does_nothing() -> None:
    fault, sleeps = injector({"delay": {"fixed": 1, "percent": 0}, "allow_header_trigger": True})
    assert await fault.apply(request((b"x-sampan-fault", b"abort"))) is None
    assert sleeps.calls == []


async def test_real_sleep_is_used_by_default() -> None:
    fault = FaultInjector(FaultConfig.model_validate({"delay": {"fixed": "1ms"}}))
    assert await fault.apply(request()) is None
    assert fault.delays == 1

"""Declarative flow tests (`sampan flow test FILE`), like Benthos' config tests.

A test file names a config and lists cases: messages to put on the flows' inputs, answers
of the services the flows call, and what must come out (messages on topics, calls to
services, messages sent to connector sinks, dead letters). Each case runs the real flows on
an in-memory bus and store, with retries sped up, until nothing is left in flight and what
the case expects has come out (stateful steps release some outputs on a timer), or until the
case's ``timeout``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from sampan.bus.base import Bus
from sampan.bus.factory import open_bus
from sampan.bus.retry_config import RetryConfig
from sampan.config import SampanConfig, load_config
from sampan.config_loader import (
    ConfigError,
    load_document,
    read_config_file,
    validate_document,
)
from sampan.flows.endpoint import Sink
from sampan.flows.fixture_services import FixtureAnswer, FixtureServiceCaller
from sampan.flows.message import FlowMessage, decode_payload
from sampan.flows.service import FlowService
from sampan.flows.spec import StepSpec
from sampan.observe.metrics import Metrics
from sampan.store.factory import open_store
from sampan.units import Duration

TEST_GROUP = "sampan-flow-test"


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str | None = Field(None, description="Topic to publish to (default: the flow's input).")
    key: str | None = Field(None, description="Message key.")
    headers: dict[str, str] = Field(default_factory=dict, description="Message headers.")
    data: Any = Field(None, description="Payload (JSON).")
    text: str | None = Field(None, description="Payload as text, instead of data.")


class ExpectedMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Any = Field(None, description="Payload: objects match if these keys match.")
    key: str | None = Field(None, description="Key, if it matters.")
    headers: dict[str, str] = Field(default_factory=dict, description="Headers that must be set.")
    error_contains: str | None = Field(None, description="Dead letters: text in the error.")


class FlowTestCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="What the case shows.")
    flow: str | None = Field(None, description="Run only this flow (default: all).")
    services: dict[str, list[FixtureAnswer]] = Field(
        default_factory=dict, description="Service -> answers, for enrichers and service sinks."
    )
    input: list[InputMessage] = Field(description="Messages put on the flow's input, in order.")
    expect: dict[str, list[ExpectedMessage]] = Field(
        default_factory=dict,
        description="Topic -> messages expected on it, in order; `dlq` = dead letters of the "
        "flow's input; `service:<name>` = calls made; `sink:<kind>` = connector sinks.",
    )
    timeout: Duration = Field(10.0, gt=0, description="Longest wait for the flows to settle.")


class FlowTestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="The sampan config holding the flows, relative to this file.")
    tests: list[FlowTestCase] = Field(min_length=1, description="The cases.")


@dataclass
class CaseResult:
    name: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems


class RecordingSink(Sink):
    def __init__(self, sent: list[FlowMessage]) -> None:
        self._sent = sent

    async def send(self, message: FlowMessage) -> None:
        self._sent.append(message.copy())


def load_test_file(path: Path) -> FlowTestFile:
    text, problem = read_config_file(path, str(path))
    if problem is not None:
        raise ConfigError([problem])
    assert text is not None
    doc = load_document(text, filename=str(path), base_dir=path.parent, env={})
    return validate_document(FlowTestFile, doc)


async def run_test_file(path: Path) -> list[CaseResult]:
    spec = load_test_file(path)
    config_path = (path.parent / spec.config).resolve()
    config = load_config(config_path)
    return [await run_case(config, config_path, case) for case in spec.tests]


async def run_case(config: SampanConfig, config_path: Path, case: FlowTestCase) -> CaseResult:
    started = time.monotonic()
    result = CaseResult(case.name)
    flows = [
        f.model_copy(update={"retry": _faster(f.retry)}) if f.retry is not None else f
        for f in config.flows
        if case.flow is None or f.name == case.flow
    ]
    if not flows:
        result.problems.append(f"no flow named {case.flow!r} in {config_path.name}")
        return result
    for entry in config.node.python_path:  # python steps import from here, as in a node
        if str(entry) not in sys.path:
            sys.path.insert(0, str(entry))
    metrics = Metrics()
    bus = open_bus("memory://", metrics=metrics)
    store = open_store("memory://", config_path.parent)
    await bus.start()
    await store.start()
    try:
        caller = FixtureServiceCaller(case.services)
        recorded: dict[str, list[FlowMessage]] = {}
        retry = _faster(config.bus.retry)
        service = FlowService(
            flows,
            bus=bus,
            store=store,
            metrics=metrics,
            base_dir=config_path.parent,
            data_dir=config_path.parent,
            node="flow-test",
            default_retry=retry,
            routes=config.routes,
            services=caller,
            lease_seconds=5.0,
            start_sources=False,
            replace_sink=lambda kind: RecordingSink(recorded.setdefault(f"sink:{kind}", [])),
        )
        for topic in case.expect:
            if ":" not in topic and topic != "dlq":
                await bus.create_group(topic, TEST_GROUP, start="earliest")
        await service.start()
        for message in case.input:
            topic = message.topic or service.flows[0].topic
            value = (
                message.text.encode() if message.text is not None else orjson.dumps(message.data)
            )
            await bus.publish(topic, value, key=message.key, headers=message.headers)
        deadline = time.monotonic() + case.timeout
        await _settle(bus, service, case.timeout)
        # Stateful steps release some outputs on a timer (an aggregate's or a gap's timeout),
        # after the flows settled: wait for what the case expects, as long as a timer may take.
        timers = min(time.monotonic() + _longest_timer(flows), deadline)
        while time.monotonic() < timers:
            if await _all_arrived(bus, service, caller, recorded, case):
                await _settle(bus, service, max(deadline - time.monotonic(), 0.1))
                break
            await asyncio.sleep(0.05)
        await service.stop(1.0)
        for name, expected in case.expect.items():
            actual = await _actual(bus, service, caller, recorded, name)
            result.problems.extend(_compare(name, expected, actual))
    except Exception as exc:
        result.problems.append(f"the case could not run: {type(exc).__name__}: {exc}")
    finally:
        await store.close()
        await bus.close()
    result.seconds = time.monotonic() - started
    return result


def _faster(retry: RetryConfig) -> RetryConfig:
    return retry.model_copy(update={"initial_backoff": 0.01, "max_backoff": 0.05})


async def _settle(bus: Bus, service: FlowService, within: float) -> None:
    """Until every flow's group has nothing waiting, leased or backing off, three times in a
    row (a step may publish to a topic another flow consumes)."""
    deadline = time.monotonic() + within
    quiet = 0
    while time.monotonic() < deadline:
        pending = 0
        for flow in service.flows:
            pending += await bus.lag(flow.topic, flow.group)
        quiet = quiet + 1 if pending == 0 else 0
        if quiet >= 3:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"flows still busy after {within:.1f}s")


def _longest_timer(value: Any) -> float:
    """The longest ``timeout`` among the steps (nested ones too), plus the sweep that
    notices it (every quarter of it, at most a second): how long after the flows settled a
    step may still release an output."""
    if isinstance(value, StepSpec):
        longest = _longest_timer(value.options)
        timeout = getattr(value.options, "timeout", None)
        if isinstance(timeout, int | float) and timeout > 0:
            longest = max(longest, timeout + min(1.0, timeout / 4))
        return longest
    if isinstance(value, BaseModel):
        return max((_longest_timer(v) for v in value.__dict__.values()), default=0.0)
    if isinstance(value, list | tuple):
        return max((_longest_timer(v) for v in value), default=0.0)
    return 0.0


async def _all_arrived(
    bus: Bus,
    service: FlowService,
    caller: FixtureServiceCaller,
    recorded: dict[str, list[FlowMessage]],
    case: FlowTestCase,
) -> bool:
    """Whether every expectation has at least as many messages as it lists (read without
    taking them: a topic's by its lag, the others as `_actual` reads them)."""
    for name, expected in case.expect.items():
        if ":" in name or name == "dlq":
            count = len(await _actual(bus, service, caller, recorded, name))
        else:
            count = await bus.lag(name, TEST_GROUP)
        if count < len(expected):
            return False
    return True


@dataclass
class Actual:
    data: Any
    key: str | None
    headers: dict[str, str]
    error: str = ""


async def _actual(
    bus: Bus,
    service: FlowService,
    caller: FixtureServiceCaller,
    recorded: dict[str, list[FlowMessage]],
    name: str,
) -> list[Actual]:
    if name == "dlq":
        letters = []
        for topic in dict.fromkeys(flow.topic for flow in service.flows):
            letters.extend(await bus.dlq_list(topic, limit=1000))
        return [Actual(decode_payload(d.value), d.key, dict(d.headers), d.error) for d in letters]
    if name.startswith("service:"):
        wanted = name.removeprefix("service:")
        return [
            Actual(body, None, {"path": path, "method": method})
            for svc, method, path, body in caller.calls
            if svc == wanted
        ]
    if name.startswith("sink:"):
        return [Actual(m.data, m.key, m.headers) for m in recorded.get(name, [])]
    out: list[Actual] = []
    while True:
        got = await bus.fetch(
            name, TEST_GROUP, consumer="flow-test", max_messages=500, lease_seconds=30.0
        )
        if not got:
            return out
        out.extend(Actual(decode_payload(d.value), d.key, dict(d.headers)) for d in got)
        await bus.ack(got)


def _compare(name: str, expected: list[ExpectedMessage], actual: list[Actual]) -> list[str]:
    problems = []
    if len(expected) != len(actual):
        problems.append(
            f"{name}: expected {len(expected)} message(s), got {len(actual)}"
            + (f": {[a.data for a in actual][:5]}" if actual else "")
        )
    for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
        where = f"{name}[{index}]"
        if want.data is not None and not matches(want.data, got.data):
            problems.append(f"{where}: data {_show(got.data)} does not match {_show(want.data)}")
        if want.key is not None and want.key != got.key:
            problems.append(f"{where}: key {got.key!r}, expected {want.key!r}")
        for header, value in want.headers.items():
            if got.headers.get(header) != value:
                problems.append(
                    f"{where}: header {header} is {got.headers.get(header)!r}, expected {value!r}"
                )
        if want.error_contains is not None and want.error_contains not in got.error:
            problems.append(f"{where}: error {got.error!r} lacks {want.error_contains!r}")
    return problems


def matches(expected: Any, actual: Any) -> bool:
    """Objects match when every expected key matches (extra keys are fine); lists and
    scalars must match exactly, element by element."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and matches(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 200 else text[:200] + "..."

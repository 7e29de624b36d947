"""Runs a list of built steps over messages, applying each step's ``on_error``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from functools import partial
from typing import NoReturn

from sampan.bus.retry import Unretryable
from sampan.flows.endpoint import Sink
from sampan.flows.errors import StepFailed, UnretryableStepFailed, step_failure
from sampan.flows.message import FlowMessage
from sampan.flows.spec import OnErrorConfig
from sampan.flows.step import Later, Resume, Step, StepRunner
from sampan.observe.metrics import Counter

log = logging.getLogger("sampan.flows")

HEADER_ERROR = "flow-error"
HEADER_ERROR_STEP = "flow-error-step"


class GuardedStep:
    """A step with its ``on_error``: local tries, then fail, dead-letter, skip, continue or
    send the message to an error endpoint."""

    __slots__ = ("_errors", "_on_error", "_sink", "step", "unguarded")

    def __init__(
        self, step: Step, on_error: OnErrorConfig | None, sink: Sink | None, errors: Counter
    ) -> None:
        self.step = step
        self._on_error = on_error
        self._sink = sink
        self._errors = errors
        self.unguarded = on_error is None
        """No ``on_error``: the pipeline calls the step itself and reports failures through
        `failed` (one coroutine per message and step instead of two)."""

    def failed(self, exc: Exception) -> NoReturn:
        """What `process` does when a step without ``on_error`` raises."""
        self._errors.inc()
        raise step_failure(self.step.label, exc) from exc

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        policy = self._on_error
        if policy is None:
            try:
                return await self.step.process(message)
            except Exception as exc:
                self.failed(exc)
        # A step may change the message before failing; ``continue`` goes on with the original.
        original = message.copy() if policy.action == "continue" else message
        for attempt in range(1, policy.attempts + 1):
            try:
                return await self.step.process(message if attempt == 1 else original.copy())
            except Exception as exc:
                self._errors.inc()
                failure = step_failure(self.step.label, exc)
                if attempt < policy.attempts and not isinstance(exc, Unretryable):
                    await asyncio.sleep(policy.backoff)
                    continue
                return await self._give_up(original, failure)
        raise AssertionError("unreachable")

    async def _give_up(self, message: FlowMessage, failure: Exception) -> list[FlowMessage]:
        policy = self._on_error
        assert policy is not None
        if self._sink is not None:
            failed = message.copy()
            failed.headers[HEADER_ERROR] = str(failure)[:1000]
            failed.headers[HEADER_ERROR_STEP] = self.step.label
            await self._sink.send(failed)
            return []
        if policy.action == "skip":
            log.warning("skipped %s after %s", message.origin or "a message", failure)
            return []
        if policy.action == "continue":
            log.warning("continuing %s past %s", message.origin or "a message", failure)
            return [message]
        if policy.action == "dead_letter":
            raise _dead_letter_now(failure)
        raise failure


def _dead_letter_now(failure: Exception) -> Exception:
    if isinstance(failure, Unretryable):
        return failure
    if isinstance(failure, StepFailed):
        return UnretryableStepFailed(failure.label, failure.cause)
    return Unretryable(str(failure))


class Pipeline(StepRunner):
    """Steps in order. ``tail`` is what runs after the last step when a stateful step resumes
    the flow from the middle (see `sampan.flows.step`); a normal run returns its output."""

    def __init__(self, tail: Resume) -> None:
        self.steps: list[GuardedStep] = []
        self._sinks: list[Sink] = []
        self._tail = tail

    def add(self, step: GuardedStep, sink: Sink | None = None) -> None:
        self.steps.append(step)
        if sink is not None:
            self._sinks.append(sink)

    def resume_after(self, index: int) -> Resume:
        async def resume(messages: list[FlowMessage]) -> None:
            for message in messages:
                # The stateful step forgets its state once this returns: outputs must be
                # durable by then, not waiting in the batch's outbox.
                message.outbox = None
            out = await self._run_from(index + 1, messages)
            if out:
                await self._tail(out)

        return resume

    async def run(self, messages: list[FlowMessage]) -> list[FlowMessage]:
        return await self._run_from(0, messages)

    def run_now(self, messages: list[FlowMessage]) -> list[FlowMessage] | Later:
        if len(messages) != 1:
            return self._run_now_from(0, messages)
        # One message (a flow's batch runs each on its own): step after step while each
        # gives back exactly one, with no list built per step.
        message = messages[0]
        for index, guarded in enumerate(self.steps):
            if not guarded.unguarded:  # on_error may retry after a pause: always async
                return Later(partial(self._run_from, index, messages))
            try:
                result = guarded.step.process_now(message)
            except Exception as exc:
                guarded.failed(exc)
            if isinstance(result, Later):
                return Later(partial(self._finish_step, index, result, [], []))
            messages = result
            if len(messages) != 1:  # filtered, held, or split: the general path goes on
                return self._run_now_from(index + 1, messages)
            message = messages[0]
        return messages

    def _run_now_from(self, start: int, messages: list[FlowMessage]) -> list[FlowMessage] | Later:
        steps = self.steps
        for index in range(start, len(steps)):
            if not messages:
                return messages
            guarded = steps[index]
            if not guarded.unguarded:  # on_error may retry after a pause: always async
                return Later(partial(self._run_from, index, messages))
            now = guarded.step.process_now
            out: list[FlowMessage] = []
            for position, message in enumerate(messages):
                try:
                    result = now(message)
                except Exception as exc:
                    guarded.failed(exc)
                if isinstance(result, Later):
                    rest = messages[position + 1 :]
                    return Later(partial(self._finish_step, index, result, out, rest))
                if len(messages) == 1:
                    out = result
                else:
                    out.extend(result)
            messages = out
        return messages

    async def _finish_step(
        self, index: int, later: Later, out: list[FlowMessage], rest: list[FlowMessage]
    ) -> list[FlowMessage]:
        """The async rest of a `run_now` that stopped in step ``index``."""
        guarded = self.steps[index]
        try:
            out = out + await later.finish()
            for message in rest:
                out.extend(await guarded.step.process(message))
        except Exception as exc:
            guarded.failed(exc)
        return await self._run_from(index + 1, out)

    async def _run_from(self, start: int, messages: list[FlowMessage]) -> list[FlowMessage]:
        steps = self.steps
        for index in range(start, len(steps)):
            if not messages:
                return messages
            guarded = steps[index]
            # A step without on_error is awaited directly (the hot path of most flows).
            process = guarded.step.process if guarded.unguarded else guarded.process
            try:
                if len(messages) == 1:
                    messages = await process(messages[0])
                else:
                    out: list[FlowMessage] = []
                    for message in messages:  # in order: a split keeps its sequence downstream
                        out.extend(await process(message))
                    messages = out
            except Exception as exc:
                if not guarded.unguarded:
                    raise
                guarded.failed(exc)
        return messages

    async def start(self) -> None:
        for sink in self._sinks:
            await sink.start()
        for guarded in self.steps:
            await guarded.step.start()

    async def stop(self) -> None:
        for guarded in reversed(self.steps):
            await _quietly(guarded.step.stop(), guarded.step.label)
        for sink in self._sinks:
            await _quietly(sink.stop(), "on_error sink")


async def _quietly(awaitable: Awaitable[None], what: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("stopping %s failed", what)

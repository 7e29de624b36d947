"""One running flow: its source, its consumer group and its steps.

Every flow consumes a bus topic: its own (a ``topic`` or a ``route`` source) or an ingress
topic its connector lands messages on. The bus therefore gives every flow the same
delivery semantics: a message is acked only after all its steps (every ``to`` of every
branch) succeeded, failures are retried with backoff and then dead-lettered naming the
failing step, keys keep their order while different keys run concurrently, and a stop
finishes or hands back in-flight messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from sampan.bus.base import Delivery, OutgoingMessage, StartPosition
from sampan.bus.batch_consumer import BatchConsumer, BatchOutcome
from sampan.bus.consumer import ConsumerOptions
from sampan.bus.retry import RetryPolicy
from sampan.flows.builder import FlowBuilder
from sampan.flows.config import FlowConfig
from sampan.flows.endpoint import EndpointContext, Sink, Source
from sampan.flows.endpoints.route import RouteSourceConfig
from sampan.flows.endpoints.topic import TopicSourceConfig
from sampan.flows.expressions import evaluator
from sampan.flows.kinds import source_kinds
from sampan.flows.message import FlowMessage
from sampan.flows.outbox import Outbox
from sampan.flows.pipeline import Pipeline
from sampan.flows.service_caller import ServiceCaller
from sampan.flows.step import Later
from sampan.flows.steps.headers import header_text

log = logging.getLogger("sampan.flows")


async def _end(_messages: list[FlowMessage]) -> None:
    """What comes out of a flow's last step is done."""


class Flow:
    def __init__(
        self,
        config: FlowConfig,
        ctx: EndpointContext,
        services: ServiceCaller,
        *,
        retry: RetryPolicy,
        fetch_batch: int = 256,
        lease_seconds: float = 30.0,
        route_topics: dict[str, str] | None = None,
        start_source: bool = True,
        replace_sink: Callable[[str], Sink] | None = None,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.name = config.name
        builder = FlowBuilder(ctx, services, replace_sink)
        self.pipeline: Pipeline = builder.build_steps(config.steps, "", _end)
        self._step_errors = builder.step_errors
        self.topic, self.group, start = self._input(config, route_topics or {})
        self.source: Source | None = None
        ingress = config.ingress_topic()
        if ingress is not None and start_source:
            build = source_kinds()[config.source.kind].build
            assert build is not None
            self.source = build(config.source.options, ctx)
        self._key = evaluator(config.key) if config.key is not None else None
        self._options = ConsumerOptions(
            concurrency=config.concurrency,
            batch=fetch_batch,
            lease_seconds=lease_seconds,
            retry=retry,
            start=start,
        )
        self.consumer: BatchConsumer | None = None
        self._quartet = ctx.metrics.target("flow", config.name)

    @staticmethod
    def _input(config: FlowConfig, route_topics: dict[str, str]) -> tuple[str, str, StartPosition]:
        options = config.source.options
        if isinstance(options, TopicSourceConfig):
            return options.topic, options.group or config.name, options.start
        if isinstance(options, RouteSourceConfig):
            return route_topics[options.route], config.name, "earliest"
        ingress = config.ingress_topic()
        assert ingress is not None
        return ingress, config.name, "earliest"

    async def start(self) -> None:
        await self.pipeline.start()
        self.consumer = BatchConsumer(
            self.ctx.bus, self.topic, self.group, self.handle_batch, self._options, self.ctx.metrics
        )
        await self.consumer.start()
        if self.source is not None:
            await self.source.start(self.emit)
        log.info("flow %s: %s -> %d step(s)", self.name, self.topic, len(self.pipeline.steps))

    async def stop(self, grace: float = 10.0) -> None:
        """Intake first, then in-flight messages (finished or handed back), then steps."""
        if self.source is not None:
            await self.source.stop()
        if self.consumer is not None:
            await self.consumer.stop(grace)
        await self.pipeline.stop()

    async def handle_batch(self, deliveries: list[Delivery]) -> list[BatchOutcome]:
        """Run the messages' steps one after the other, each as far as it gets without
        waiting (most get to the end: see `Step.process_now`), then publish their topic
        outputs together; messages that had to wait go on concurrently, each in its own
        task, and are settled when they end."""
        outbox = Outbox()
        outcomes: list[BatchOutcome] = [None] * len(deliveries)
        waiting: list[tuple[int, asyncio.Task[list[FlowMessage]]]] = []
        run_now = self.pipeline.run_now
        started = time.perf_counter()
        for index, delivery in enumerate(deliveries):
            message = FlowMessage.arrived(
                delivery.value,
                dict(delivery.headers),
                delivery.key,
                f"{delivery.topic}@{delivery.offset}",
                (outbox, index),
            )
            try:
                progress = run_now([message])
            except Exception as exc:
                outcomes[index] = exc
                continue
            if isinstance(progress, Later):  # it has to wait: the rest runs in its own task
                waiting.append((index, asyncio.ensure_future(progress.finish())))
        try:
            errors = await outbox.flush(self.ctx.bus)
        except BaseException:
            # Stopping (or a bus gone wrong): the batch's deliveries are handed back, so the
            # messages still waiting must not run on beside their redelivery.
            for _, task in waiting:
                task.cancel()
            raise
        later = {index for index, _ in waiting}  # observed when they end (_settle_waiting)
        for index, error in errors.items():
            if outcomes[index] is None:
                outcomes[index] = error
                if index not in later:
                    # The `to` failed, as in its step: one step error (none if a later step
                    # failed too, which counted it: one per failed attempt, as unbatched).
                    self._step_errors.inc()
        settled = [o for i, o in enumerate(outcomes) if i not in later] if later else outcomes
        self._quartet.observe_many(
            time.perf_counter() - started,
            len(settled),
            errors=len(settled) - settled.count(None),
        )
        for index, task in waiting:
            outcomes[index] = self._settle_waiting(task, outcomes[index], started)
        return outcomes

    async def _settle_waiting(
        self, task: asyncio.Task[list[FlowMessage]], flush_error: BatchOutcome, started: float
    ) -> None:
        try:
            await task
            if isinstance(flush_error, BaseException):
                self._step_errors.inc()  # counted now: had the task failed, its step counted
                raise flush_error  # an output it made before waiting was not published
        except BaseException:
            self._quartet.observe(time.perf_counter() - started, error=True)
            raise
        self._quartet.observe(time.perf_counter() - started)

    async def emit(self, messages: Sequence[OutgoingMessage]) -> None:
        """A connector lands messages on the ingress topic (durable when this returns)."""
        if self._key is not None:
            messages = [self._keyed(message) for message in messages]
        await self.ctx.bus.publish_batch(self.topic, messages)

    def _keyed(self, message: OutgoingMessage) -> OutgoingMessage:
        assert self._key is not None
        value = self._key(FlowMessage(raw=message.value, headers=dict(message.headers or {})))
        return dataclasses.replace(message, key=None if value is None else header_text(value))

"""What a batch of a flow's messages publishes to bus topics, sent once the batch has run.

Run one at a time, every message of a flow would wait for its own ``to: {topic}`` publish to
be durable: one suspension, one future and one wake-up per message. A flow running a batch
(see `Flow.handle_batch`) instead lets its topic sinks drop outputs here while the batch's
messages run their steps without waiting, then publishes everything with one
``publish_batch`` per topic; each message is acked only if every output it made is durable.

An output made once the flush has begun (by a message that had to wait for I/O and so
finished after the batch) is published directly by its sink, as outside a batch. Messages
released by stateful steps (``resume``) are detached from the outbox first: those steps
forget their state once ``resume`` returns, so what follows must be durable by then.
"""

from __future__ import annotations

import asyncio

from sampan.bus.base import Bus, OutgoingMessage
from sampan.flows.errors import step_failure

_Output = tuple[int, str, OutgoingMessage]
"""The index of the message that made it, the label of its ``to`` step, the output."""


class Outbox:
    __slots__ = ("_by_topic", "closed")

    def __init__(self) -> None:
        self._by_topic: dict[str, list[_Output]] = {}
        self.closed = False

    def add(self, index: int, topic: str, message: OutgoingMessage, label: str) -> None:
        """Queue an output of the batch's message ``index`` made by step ``label`` (only
        while open)."""
        outputs = self._by_topic.get(topic)
        if outputs is None:
            self._by_topic[topic] = [(index, label, message)]
        else:
            outputs.append((index, label, message))

    async def flush(self, bus: Bus) -> dict[int, Exception]:
        """Publish every output, also those of messages that failed after making them (as
        outside a batch, where they would already be out: a wire tap, say); returns, per
        message index, the error that kept one of its outputs from being published (naming
        its ``to`` step, as the dead letter should)."""
        self.closed = True
        sends = [_publish(bus, topic, outputs) for topic, outputs in self._by_topic.items()]
        self._by_topic = {}
        errors: dict[int, Exception] = {}
        for found in await asyncio.gather(*sends):
            errors.update(found)
        return errors


async def _publish(bus: Bus, topic: str, outputs: list[_Output]) -> dict[int, Exception]:
    """One atomic ``publish_batch``; if the bus refuses it, message by message, so that one
    bad output (a reserved header, say) fails only the message that made it."""
    try:
        await bus.publish_batch(topic, [m for _, _, m in outputs])
    except Exception as exc:
        if len(outputs) == 1:
            return {outputs[0][0]: step_failure(outputs[0][1], exc)}
    else:
        return {}
    errors: dict[int, Exception] = {}
    for index, label, message in outputs:
        if index in errors:
            continue
        try:
            await bus.publish_batch(topic, [message])
        except Exception as exc:
            errors[index] = step_failure(label, exc)
    return errors

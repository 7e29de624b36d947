"""Claim check: park a large payload in the state store and pass a small reference on;
a later step (in this or another flow) checks it out again."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field

from sampan.flows.errors import InvalidMessage
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.step import BuildContext, Step, StepKind
from sampan.units import ByteSize, Duration

HEADER_CLAIM = "flow-claim-check"
NAMESPACE = "claim-check"
"""Shared by every flow of the store, so that the check-out may be in another flow."""


class ClaimCheckOptions(Options):
    action: Literal["check_in", "check_out"] = Field(
        description="`check_in` stores the payload, `check_out` restores it."
    )
    min_size: ByteSize = Field(
        0, ge=0, description="check_in: only payloads at least this large are parked."
    )
    ttl: Duration = Field(7 * 86400.0, gt=0, description="How long a parked payload is kept.")
    keep: bool = Field(False, description="check_out: keep the payload stored (fan-out readers).")


class ClaimCheckStep(Step):
    def __init__(self, options: ClaimCheckOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._options = options
        self._store = ctx.endpoint.store

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        if self._options.action == "check_in":
            body = message.body()
            if len(body) < self._options.min_size:
                return [message]
            claim = uuid.uuid4().hex
            await self._store.put(NAMESPACE, claim, body, self._options.ttl)
            message.data = {"claim_check": claim, "bytes": len(body)}
            message.headers[HEADER_CLAIM] = claim
            return [message]
        ticket = message.headers.get(HEADER_CLAIM)
        if ticket is None:
            return [message]  # it was small enough to travel as it was
        parked = await self._store.get(NAMESPACE, ticket)
        if parked is None:
            raise InvalidMessage(f"claim check {ticket} is not (or no longer) in the store")
        restored = FlowMessage(raw=parked, headers=message.headers, key=message.key)
        restored.origin = message.origin
        del restored.headers[HEADER_CLAIM]
        if not self._options.keep:
            await self._store.delete(NAMESPACE, ticket)
        return [restored]


KIND = StepKind(
    "claim_check",
    ClaimCheckOptions,
    ClaimCheckStep,
    "Park a large payload in the store and pass a reference on (check_in / check_out).",
    {"action": "check_in", "min_size": "64KiB"},
)

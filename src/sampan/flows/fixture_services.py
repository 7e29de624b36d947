"""Services answered from fixtures, for `sampan flow test`: a flow's tests must not need the
real customer service running, and must be able to say what the service answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from sampan.flows.service_caller import ServiceAnswer, ServiceCaller, ServiceUnavailable


class FixtureAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: str = Field("GET", description="Request method this answer is for.")
    path: str = Field(description="Request path this answer is for (exact).")
    status: int = Field(200, ge=100, le=599, description="Status answered.")
    json_body: Any = Field(None, alias="json", description="JSON body answered.")
    fail: bool = Field(False, description="Answer with a connection failure instead.")


class FixtureServiceCaller(ServiceCaller):
    """Answers calls from fixtures; a call nobody declared is answered 404 and recorded."""

    def __init__(self, fixtures: Mapping[str, list[FixtureAnswer]]) -> None:
        self._fixtures = fixtures
        self.calls: list[tuple[str, str, str, Any]] = []

    def knows(self, service: str) -> bool:
        return service in self._fixtures

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ServiceAnswer:
        sent = orjson.loads(body) if body else None
        self.calls.append((service, method, path, sent))
        for answer in self._fixtures.get(service, []):
            if answer.method.upper() == method and answer.path == path:
                if answer.fail:
                    raise ServiceUnavailable(f"{service}: connection failed (fixture)")
                data = orjson.dumps(answer.json_body) if answer.json_body is not None else b""
                return ServiceAnswer(answer.status, data, "application/json")
        return ServiceAnswer(404, b'{"title": "no fixture"}', "application/json")

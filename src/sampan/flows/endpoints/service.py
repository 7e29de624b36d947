"""A mesh service as a destination: the message is the request body, 2xx means delivered."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sampan.flows.endpoint import EndpointContext, EndpointKind, Sink
from sampan.flows.errors import RejectedByDestination
from sampan.flows.expressions import BraceTemplate, Expression, brace_renderer, evaluator
from sampan.flows.message import FlowMessage
from sampan.flows.options import Options
from sampan.flows.service_caller import MeshServiceCaller, ServiceCaller, ServiceUnavailable
from sampan.flows.steps.headers import header_text


class ServiceSinkConfig(Options):
    service: str = Field(description="Mesh service (see `services:`).")
    path: BraceTemplate = Field("/", description="Request path with `{expr}` placeholders.")
    method: Literal["POST", "PUT", "PATCH"] = Field("POST", description="HTTP method.")
    headers: dict[str, Expression] = Field(
        default_factory=dict, description="Request headers from JMESPath expressions."
    )


class ServiceSink(Sink):
    """4xx answers (except 408 and 429) fail the message for good: resending the same
    request cannot succeed, so it is dead-lettered at once instead of retried."""

    def __init__(self, config: ServiceSinkConfig, caller: ServiceCaller) -> None:
        self._config = config
        self._caller = caller
        self._path = brace_renderer(config.path, url_quote=True)
        self._headers = [(name, evaluator(expr)) for name, expr in config.headers.items()]

    async def send(self, message: FlowMessage) -> None:
        headers = {}
        for name, value_of in self._headers:
            value = value_of(message)
            if value is not None:
                headers[name] = header_text(value)
        answer = await self._caller.call(
            self._config.service,
            self._config.method,
            self._path(message),
            message.body(),
            headers,
        )
        if 200 <= answer.status < 300:
            return
        detail = f"{self._config.service} answered {answer.status}: " + answer.body[:200].decode(
            "utf-8", "replace"
        )
        if 400 <= answer.status < 500 and answer.status not in (408, 429):
            raise RejectedByDestination(detail)
        raise ServiceUnavailable(detail)


def _service_sink(config: ServiceSinkConfig, ctx: EndpointContext) -> Sink:
    caller = ctx.extra.get("services")
    if not isinstance(caller, ServiceCaller):
        caller = MeshServiceCaller(ctx.mesh)
    return ServiceSink(config, caller)


SINK = EndpointKind(
    "service", ServiceSinkConfig, _service_sink, "Send to a mesh service over HTTP (2xx = done)."
)

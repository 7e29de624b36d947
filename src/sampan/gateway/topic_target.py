"""The `topic` target: an HTTP request becomes a CloudEvent on a bus topic, answered 202.

The 202 is sent only after the bus has made the event durable. With an ``Idempotency-Key``
the event id is derived from the key (and the route and consumer), and the bus's dedupe key
makes a retried request publish once and get the same answer.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from sampan.bus.base import Bus, OutgoingMessage
from sampan.event import CloudEvent, InvalidEvent, now_rfc3339, to_bus_message
from sampan.gateway.config import TopicTarget
from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.http.response import Response, json_response, problem

IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c1f3e-8a35-4c8e-9d59-5a6d0d9e7c11")
MAX_IDEMPOTENCY_KEY = 255


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence == "application/json" or essence.endswith("+json")


def _field(document: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document


class TopicPublisher:
    def __init__(self, target: TopicTarget, bus: Bus, *, route_name: str) -> None:
        self.target = target
        self.bus = bus
        self.route_name = route_name
        self.source = target.source or f"/sampan/routes/{route_name}"
        self.extension_headers = [
            (h.lower().encode("latin-1"), h.lower().replace("-", "")[:20])
            for h in target.headers_as_extensions
        ]

    async def __call__(self, request: Request, params: dict[str, str], body_limit: int) -> Response:
        body = await request.body.read(body_limit)
        content_type = request.headers.get_str(b"content-type")
        document: Any = None
        if _is_json(content_type) and body:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return problem(400, "Invalid JSON body", str(exc))
        key = self._partition_key(request, params, document)
        idempotency = request.headers.get_str(b"idempotency-key")
        if idempotency is not None and not 0 < len(idempotency) <= MAX_IDEMPOTENCY_KEY:
            return problem(400, "Invalid Idempotency-Key", "must be 1 to 255 characters")
        consumer = request.state.get("consumer")
        scope = f"{self.route_name}\0{getattr(consumer, 'username', '')}\0{idempotency}"
        event_id = uuid.uuid5(IDEMPOTENCY_NAMESPACE, scope).hex if idempotency is not None else None
        extensions = {
            name: value.decode("latin-1")
            for header, name in self.extension_headers
            if (value := request.headers.get(header)) is not None
        }
        try:
            event = CloudEvent(
                id=event_id or uuid.uuid4().hex,
                source=self.source,
                type=self.target.type,
                time=now_rfc3339(),
                subject=request.path,
                datacontenttype=content_type or ("application/octet-stream" if body else None),
                data=body or None,
                partitionkey=key,
                traceparent=request.headers.get_str(b"traceparent"),
                extensions=extensions,
            )
            headers, value = to_bus_message(event)
        except InvalidEvent as exc:
            return problem(400, "Request cannot become an event", str(exc), attribute=exc.attribute)
        [offset] = await self.bus.publish_batch(
            self.target.name,
            [
                OutgoingMessage(
                    value,
                    key=key,
                    headers=headers,
                    dedupe_key=scope if idempotency is not None else None,
                    dedupe_ttl=self.target.idempotency_ttl,
                )
            ],
        )
        return json_response(
            202,
            {"id": event.id, "topic": self.target.name, "offset": offset},
            Headers([(b"location", f"/topics/{self.target.name}/{offset}".encode())]),
        )

    def _partition_key(self, request: Request, params: dict[str, str], document: Any) -> str | None:
        source = self.target.key_from
        if source is None:
            return None
        if source.header is not None:
            return request.headers.get_str(source.header.lower().encode("latin-1"))
        if source.path_param is not None:
            return params.get(source.path_param)
        if source.json_field is not None:
            found = _field(document, source.json_field)
            return None if found is None else str(found)
        return None

"""Content enricher: add data fetched from a service (through the mesh) or looked up in a
topic table (the latest message per key of a topic) to the payload."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from sampan.bus.base import Delivery
from sampan.bus.consumer import Consumer, ConsumerOptions
from sampan.config_types import Name
from sampan.flows.errors import InvalidMessage, RejectedByDestination
from sampan.flows.expressions import BraceTemplate, Expression, brace_renderer, evaluator
from sampan.flows.message import FlowMessage, decode_payload
from sampan.flows.options import Options
from sampan.flows.service_caller import ServiceUnavailable
from sampan.flows.step import BuildContext, Later, Step, StepKind
from sampan.flows.ttl_cache import TtlCache
from sampan.units import Duration

log = logging.getLogger("sampan.flows.enrich")

_ABSENT = object()


class EnrichCacheOptions(Options):
    ttl: Duration = Field(60.0, gt=0, description="How long an answer is reused.")
    max_entries: int = Field(10000, ge=1, description="Most answers kept (least recent go).")


class EnrichOptions(Options):
    service: str | None = Field(None, description="Mesh service to ask (see `services:`).")
    path: BraceTemplate = Field(
        "/", description="Request path; `{expr}` placeholders are URL-escaped JMESPath values."
    )
    method: Literal["GET", "POST"] = Field(
        "GET", description="GET, or POST sending the payload as JSON."
    )
    table: Name | None = Field(
        None, description="Topic read as a table: the latest message per key is the row."
    )
    key: Expression | None = Field(None, description="JMESPath giving the table key.")
    into: str = Field(description="Payload field that receives the result.")
    missing: Literal["fail", "null", "drop"] = Field(
        "fail",
        description="When the service answers 404 or the table has no row: fail the message "
        "(a 404 is dead-lettered at once; a missing row is retried, it may still be loading), "
        "set null, or drop the message.",
    )
    cache: EnrichCacheOptions | None = Field(
        None, description="Reuse answers for a while (per node, in memory)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnrichOptions:
        if (self.service is None) == (self.table is None):
            raise ValueError("give exactly one of service or table")
        if self.table is not None and self.key is None:
            raise ValueError("a table lookup needs `key`")
        return self


class EnrichStep(Step):
    def __init__(self, options: EnrichOptions, ctx: BuildContext) -> None:
        self.label = ctx.label
        self._options = options
        self._ctx = ctx
        self._into = options.into
        self._path = brace_renderer(options.path, url_quote=True)
        self._key: Callable[[FlowMessage], Any] | None = (
            evaluator(options.key) if options.key is not None else None
        )
        self._cache: TtlCache[Any] | None = (
            TtlCache(options.cache.max_entries, options.cache.ttl) if options.cache else None
        )
        self._table_namespace = f"table:{options.table}"
        self._loader: Consumer | None = None

    async def start(self) -> None:
        if self._options.table is None:
            return
        ctx = self._ctx.endpoint
        store = ctx.store
        namespace = self._table_namespace

        async def load(delivery: Delivery) -> None:
            if delivery.key is None:
                log.warning("table %s: message %d has no key; ignored", namespace, delivery.offset)
                return
            await store.put(namespace, delivery.key, delivery.value)

        self._loader = Consumer(
            ctx.bus,
            self._options.table,
            f"table.{ctx.node}",
            load,
            ConsumerOptions(concurrency=4, start="earliest"),
            ctx.metrics,
        )
        await self._loader.start()

    async def stop(self) -> None:
        if self._loader is not None:
            await self._loader.stop()

    def process_now(self, message: FlowMessage) -> list[FlowMessage] | Later:
        """A cache hit needs no waiting."""
        cache = self._cache
        if cache is None:
            return Later(partial(self.process, message))
        payload = self._payload(message)
        lookup = self._lookup(message)
        found, value = cache.get(lookup)
        if found:
            return self._merge(message, payload, lookup, value)
        return Later(partial(self._fetch, message, payload, lookup, True))

    async def process(self, message: FlowMessage) -> list[FlowMessage]:
        return await self._fetch(message, self._payload(message), self._lookup(message))

    async def _fetch(
        self, message: FlowMessage, payload: dict[str, Any], lookup: str, counted: bool = False
    ) -> list[FlowMessage]:
        """``counted``: the cache was already asked (and missed) for this message."""
        if self._options.service is not None:
            value = await self._cached(lookup, lambda: self._ask_service(lookup, message), counted)
        else:
            value = await self._cached(lookup, lambda: self._read_table(lookup), counted)
        return self._merge(message, payload, lookup, value)

    def _payload(self, message: FlowMessage) -> dict[str, Any]:
        payload = message.data
        if not isinstance(payload, dict):
            raise InvalidMessage(f"cannot enrich into {self._into!r}: the payload is no object")
        return payload

    def _lookup(self, message: FlowMessage) -> str:
        """The service path, or the table key, to look up (also the cache key)."""
        if self._options.service is not None:
            return self._path(message)
        assert self._key is not None
        key = self._key(message)
        if key is None:
            raise InvalidMessage("the table key expression gave null")
        return key if isinstance(key, str) else orjson.dumps(key).decode()

    def _merge(
        self, message: FlowMessage, payload: dict[str, Any], lookup: str, value: Any
    ) -> list[FlowMessage]:
        if value is _ABSENT:
            if self._options.missing == "drop":
                return []
            if self._options.missing == "fail":
                if self._options.table is not None:
                    # The row may not be loaded yet (the table is read concurrently): retry.
                    raise LookupError(f"no row {lookup!r} in table {self._options.table!r} yet")
                raise InvalidMessage(f"nothing found for {lookup!r}")
            value = None
        message.data = {**payload, self._into: value}
        return [message]

    async def _cached(self, lookup: str, fetch: Callable[[], Any], counted: bool = False) -> Any:
        cache = self._cache
        if cache is not None:
            # Looked at again even after a miss: another message may have filled it since.
            found, value = cache.get(lookup, count=not counted)
            if found:
                return value
        value = await fetch()
        if cache is not None and value is not _ABSENT:
            cache.put(lookup, value)
        return value

    async def _ask_service(self, path: str, message: FlowMessage) -> Any:
        service = self._options.service
        assert service is not None
        body = message.body() if self._options.method == "POST" else None
        answer = await self._ctx.services.call(service, self._options.method, path, body)
        if answer.status == 404:
            return _ABSENT
        if 200 <= answer.status < 300:
            return decode_payload(answer.body) if answer.body else None
        detail = answer.body[:200].decode("utf-8", "replace")
        if 400 <= answer.status < 500 and answer.status not in (408, 429):
            raise RejectedByDestination(f"{service} answered {answer.status}: {detail}")
        raise ServiceUnavailable(f"{service} answered {answer.status}: {detail}")

    async def _read_table(self, key: str) -> Any:
        stored = await self._ctx.endpoint.store.get(self._table_namespace, key)
        return _ABSENT if stored is None else decode_payload(stored)


KIND = StepKind(
    "enrich",
    EnrichOptions,
    EnrichStep,
    "Add data from a service (through the mesh) or a topic table to the payload.",
    {
        "service": "customers",
        "path": "/customers/{data.customer_id}",
        "into": "customer",
        "cache": {"ttl": "60s"},
    },
)

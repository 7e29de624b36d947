"""Building ``Delivery`` and ``OutgoingMessage`` objects at the rate the bus moves them
(100k+/s).

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which looks
the attribute up by name every time: half of the cost of leasing a message in memory, or of
a flow's ``to`` step making its output. Setting the slots through their descriptors directly
builds the very same object (same type, equal, frozen afterwards) in about half the time
(Delivery 0.72 -> 0.38 µs, OutgoingMessage 0.53 -> 0.31 µs). The field lists are checked
against the dataclasses when this module is imported, so a new field or a ``__post_init__``
fails loudly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from sampan.bus.base import Delivery, OutgoingMessage


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot descriptors' setters of ``cls``, in ``names`` order, which must be all its
    fields, in order."""
    if tuple(f.name for f in dataclasses.fields(cls)) != names or hasattr(
        cls, "__post_init__"
    ):  # pragma: no cover - guards a change of the dataclass
        raise ImportError(f"sampan.bus.fast_messages no longer matches {cls.__name__}'s fields")
    return tuple(vars(cls)[name].__set__ for name in names)


_new = object.__new__
(
    _set_topic,
    _set_group,
    _set_offset,
    _set_key,
    _set_value,
    _set_headers,
    _set_published_at,
    _set_attempt,
    _set_lease,
) = _slot_setters(
    Delivery,
    ("topic", "group", "offset", "key", "value", "headers", "published_at", "attempt", "lease"),
)


def new_delivery(
    topic: str,
    group: str,
    offset: int,
    key: str | None,
    value: bytes,
    headers: Mapping[str, str],
    published_at: float,
    attempt: int,
    lease: int,
) -> Delivery:
    """``Delivery(topic, group, offset, ...)``, built without the dataclass ``__init__``."""
    d: Delivery = _new(Delivery)
    _set_topic(d, topic)
    _set_group(d, group)
    _set_offset(d, offset)
    _set_key(d, key)
    _set_value(d, value)
    _set_headers(d, headers)
    _set_published_at(d, published_at)
    _set_attempt(d, attempt)
    _set_lease(d, lease)
    return d


(
    _set_out_value,
    _set_out_key,
    _set_out_headers,
    _set_out_deliver_at,
    _set_out_dedupe_key,
    _set_out_dedupe_ttl,
) = _slot_setters(
    OutgoingMessage, ("value", "key", "headers", "deliver_at", "dedupe_key", "dedupe_ttl")
)
_DEDUPE_TTL: float = OutgoingMessage(b"").dedupe_ttl  # the default


def new_outgoing(
    value: bytes,
    key: str | None,
    headers: Mapping[str, str] | None,
    deliver_at: float | None,
) -> OutgoingMessage:
    """``OutgoingMessage(value, key, headers, deliver_at)`` (no dedupe key), built without
    the dataclass ``__init__``."""
    m: OutgoingMessage = _new(OutgoingMessage)
    _set_out_value(m, value)
    _set_out_key(m, key)
    _set_out_headers(m, headers)
    _set_out_deliver_at(m, deliver_at)
    _set_out_dedupe_key(m, None)
    _set_out_dedupe_ttl(m, _DEDUPE_TTL)
    return m

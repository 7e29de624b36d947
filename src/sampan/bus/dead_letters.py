"""How a dead letter is written and read back, shared by the backends that keep the failure's
facts in message headers (the embedded one and Redis)."""

from __future__ import annotations

from collections.abc import Mapping

from sampan.bus.base import (
    HEADER_DLQ_ATTEMPTS,
    HEADER_DLQ_ERROR,
    HEADER_DLQ_FAILED_AT,
    HEADER_DLQ_GROUP,
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_PUBLISHED_AT,
    HEADER_DLQ_TOPIC,
    DeadLetter,
    Delivery,
)

DLQ_HEADER_PREFIX = "sampan-dlq-"


def dead_letter_headers(d: Delivery, error: str, failed_at: float | None) -> dict[str, str]:
    """The original headers plus why and where it failed; ``failed_at`` None when the store
    stamps the time itself (Redis uses its own clock)."""
    headers = dict(d.headers)
    headers.update(
        {
            HEADER_DLQ_ERROR: error,
            HEADER_DLQ_ATTEMPTS: str(d.attempt),
            HEADER_DLQ_TOPIC: d.topic,
            HEADER_DLQ_OFFSET: str(d.offset),
            HEADER_DLQ_GROUP: d.group,
            HEADER_DLQ_PUBLISHED_AT: repr(d.published_at),
        }
    )
    if failed_at is not None:
        headers[HEADER_DLQ_FAILED_AT] = repr(failed_at)
    return headers


def read_dead_letter(
    dlq_offset: int, topic: str, key: str | None, value: bytes, stored: Mapping[str, str]
) -> DeadLetter:
    headers = dict(stored)
    return DeadLetter(
        dlq_offset=dlq_offset,
        topic=headers.pop(HEADER_DLQ_TOPIC, topic),
        group=headers.pop(HEADER_DLQ_GROUP, ""),
        original_offset=int(headers.pop(HEADER_DLQ_OFFSET, "-1")),
        key=key,
        value=value,
        error=headers.pop(HEADER_DLQ_ERROR, ""),
        attempts=int(headers.pop(HEADER_DLQ_ATTEMPTS, "0")),
        failed_at=float(headers.pop(HEADER_DLQ_FAILED_AT, "0")),
        headers={k: v for k, v in headers.items() if not k.startswith(DLQ_HEADER_PREFIX)},
    )

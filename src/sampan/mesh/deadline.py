"""Deadline propagation: each hop learns how long its caller will still wait, spends part
of it, and tells the next hop what is left.

The header (``MeshConfig.deadline_header``, default ``x-sampan-deadline-ms``) carries the
caller's *remaining* time as a non-negative integer number of milliseconds, like gRPC's
``grpc-timeout`` but always in ms and without a unit letter: ``x-sampan-deadline-ms: 850``.
A relative value needs no synchronised clocks between machines; the time spent on the
wire is not subtracted (it is small against the budgets involved).

Reading (:meth:`Deadline.from_header`): the value must be 1 to ``MAX_DIGITS`` ASCII digits,
optionally surrounded by spaces or tabs; anything else (negative, fractional, a unit, too
long, empty) is ignored as if absent. A valid header can only *shorten* this hop's own
budget: the deadline is ``now + min(header, default_total)``, so an outside client cannot
hold the service's resources longer than its configured ``total`` timeout by sending a huge
value (absurd values are capped that way). ``0`` means the caller has already given up:
the deadline is expired and the request should fail fast (504) without calling anyone.

Writing (:meth:`Deadline.header_value`): the time remaining at the moment of sending,
rounded *down* to whole milliseconds, so a downstream hop never believes it has more time
than we will wait for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["MAX_DIGITS", "Deadline"]

MAX_DIGITS: Final = 10
"""Longest accepted header value (10 digits: about 115 days in ms)."""

_WHITESPACE: Final = b" \t"


def _parse_ms(value: bytes | None) -> int | None:
    if value is None:
        return None
    digits = value.strip(_WHITESPACE)
    if not 0 < len(digits) <= MAX_DIGITS or not digits.isdigit():  # bytes.isdigit: ASCII
        return None
    return int(digits)


@dataclass(frozen=True, slots=True)
class Deadline:
    at: float
    """The instant (the node's monotonic clock, seconds) after which nobody waits."""
    source: Literal["header", "default"] = "default"
    """Whether the caller's header shortened the deadline or our own total applies."""

    @classmethod
    def after(cls, now: float, seconds: float) -> Deadline:
        return cls(now + max(0.0, seconds))

    @classmethod
    def from_header(cls, value: bytes | None, *, now: float, default_total: float) -> Deadline:
        """The deadline of a request that arrived at ``now`` with the deadline header
        ``value`` (None when absent), given this hop's own ``total`` timeout."""
        ms = _parse_ms(value)
        if ms is not None and ms / 1000 < default_total:
            return cls(now + ms / 1000, "header")
        return cls(now + max(0.0, default_total), "default")

    def remaining(self, now: float) -> float:
        """Seconds left (0 when expired)."""
        return max(0.0, self.at - now)

    def expired(self, now: float) -> bool:
        return now >= self.at

    def header_value(self, now: float) -> bytes:
        """The header value to send downstream at ``now``: whole ms left, rounded down."""
        # The nanosecond of slack absorbs float error (at - now) without ever rounding up
        # by a meaningful amount.
        ms = math.floor(self.remaining(now) * 1000 + 1e-6)
        return str(min(ms, 10**MAX_DIGITS - 1)).encode("ascii")

    def per_try_timeout(self, now: float, per_try: float) -> float:
        """The timeout for one attempt: ``per_try``, or less if the deadline is nearer."""
        return min(per_try, self.remaining(now))

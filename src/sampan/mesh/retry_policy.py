"""Which failed attempts may be tried again, and how long to wait before doing so.

The rules, in order (``retry_on`` is :attr:`MeshRetryConfig.retry_on`):

- ``connect`` errors are retried when ``connect`` is in ``retry_on``, *whatever the method and
  whatever the body*: the connection never opened, so not one byte of the request left
  this process and the upstream cannot have acted on it. (A connect *timeout* is a connect
  error too: the caller passes ``error_kind="connect"`` for any error whose phase is
  ``connect``.)
- Every other retry re-sends the request, so the body must be replayable (buffered,
  at most ``max_body_bytes``) and the method must be idempotent (GET, HEAD, OPTIONS, PUT,
  DELETE, TRACE) unless ``idempotent_only`` is false.
- ``reset`` and ``timeout`` are retried only when in ``retry_on`` and ``before_response`` (no
  response byte reached us, so nothing has been passed on to our caller). The upstream
  may have seen and executed the request, which is why the idempotency rule applies.
- ``protocol`` errors (the upstream speaks broken HTTP) are never retried.
- A response status is retried when its number is in ``retry_on`` (default 502, 503, 504).

The decider does not count attempts or consult the retry budget; the caller checks
``attempt < config.attempts`` and :meth:`RetryBudget.try_withdraw` after a True here.
"""

from __future__ import annotations

import math
import random
from typing import Final

from sampan.mesh.config import MeshRetryConfig

__all__ = ["IDEMPOTENT_METHODS", "RetryDecider"]

IDEMPOTENT_METHODS: Final = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
"""RFC 9110 §9.2.2: methods whose repetition has the same effect as one request."""

# 2**1000 is still a finite float; beyond that the delay is capped anyway.
_MAX_EXPONENT: Final = 1000


class RetryDecider:
    """Stateless apart from the random source used for jitter."""

    __slots__ = ("_error_kinds", "_rng", "_statuses", "config")

    def __init__(self, config: MeshRetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self._statuses = frozenset(int(value) for value in config.retry_on if value.isdigit())
        self._error_kinds = frozenset(value for value in config.retry_on if not value.isdigit())

    @property
    def attempts(self) -> int:
        """Tries in all, the first included."""
        return self.config.attempts

    def idempotent(self, method: str) -> bool:
        return method.upper() in IDEMPOTENT_METHODS

    def retryable(
        self,
        method: str,
        *,
        status: int | None = None,
        error_kind: str | None = None,
        before_response: bool = True,
        body_replayable: bool = True,
    ) -> bool:
        """May this failed attempt be tried again? Give ``status`` for a response,
        ``error_kind`` (``UpstreamError.kind``, or ``connect`` for any connect-phase error)
        for a failure without one."""
        if error_kind is not None:
            if error_kind not in self._error_kinds:
                return False  # also 'protocol' and unknown kinds, never in `on`
            if error_kind == "connect":
                return True  # nothing was sent: method and body do not matter
            return before_response and self._may_resend(method, body_replayable)
        if status is not None:
            return status in self._statuses and self._may_resend(method, body_replayable)
        return False

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = the first retry).

        Exponential (``initial * 2**(attempt-1)``) capped at ``max``; then the ``jitter``
        fraction of it is randomised downwards, so the result lies in
        ``[delay * (1 - jitter), delay]`` and never exceeds ``max``.
        """
        if attempt < 1:
            raise ValueError(f"attempt counts retries from 1, got {attempt}")
        backoff = self.config.backoff
        exponent = min(attempt - 1, _MAX_EXPONENT)
        delay = min(backoff.max, backoff.initial * math.ldexp(1.0, exponent))
        return delay * (1.0 - backoff.jitter * self._rng.random())

    def _may_resend(self, method: str, body_replayable: bool) -> bool:
        if not body_replayable:
            return False
        return not self.config.idempotent_only or self.idempotent(method)

"""How the mesh chooses one endpoint of a service for each request.

``make_balancer`` turns a service's ``BalancerConfig`` into a ``Balancer``; the caller then,
per request, filters the service's endpoints with ``available(now)`` (and a traffic split,
``traffic_split.py``), computes ``hash_key`` for consistent hashing, and calls ``pick``.
The implementations are in ``balancers.py``; the latency estimate in ``peak_ewma.py``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from sampan.http.request import Request
from sampan.mesh.balancers import ConsistentHash, LeastRequest, PeakEwmaP2C, RoundRobin
from sampan.mesh.config import BalancerConfig
from sampan.mesh.endpoint import EndpointState

__all__ = ["Balancer", "cookie_value", "hash_key", "make_balancer"]


class Balancer(Protocol):
    def pick(
        self, endpoints: Sequence[EndpointState], key: bytes | None, now: float
    ) -> EndpointState | None:
        """One of ``endpoints`` (those available now), or None when it is empty.

        ``key`` is the request's hash key (consistent-hash only; see ``hash_key``); ``now`` is
        the monotonic clock, for latency decay. Called once per request (and per retry)."""
        ...


def make_balancer(config: BalancerConfig, rng: random.Random | None = None) -> Balancer:
    """The balancer ``config.type`` names. ``rng`` seeds the random choices (tests); each
    balancer otherwise gets its own ``random.Random``. Consistent hashing balances requests
    without a hash key with p2c-peak-ewma."""
    random_ = rng if rng is not None else random.Random()
    kind = config.type
    if kind == "round-robin":
        return RoundRobin()
    if kind == "least-request":
        return LeastRequest(random_)
    p2c = PeakEwmaP2C(random_, config.decay, config.default_rtt)
    if kind == "p2c-peak-ewma":
        return p2c
    if kind == "consistent-hash":
        return ConsistentHash(fallback=p2c)
    raise ValueError(f"unknown balancer type {kind!r}")


def hash_key(config: BalancerConfig, request: Request, client_ip: str) -> bytes | None:
    """The consistent-hash key of ``request``: the value of the configured header (the first
    one, if repeated), of the configured cookie, or the client's IP address. None when the
    balancer is not consistent-hash, or the header/cookie is absent or empty — such requests
    are balanced by p2c-peak-ewma instead (no stickiness)."""
    hash_on = config.hash_on
    if hash_on is None or config.type != "consistent-hash":
        return None
    if hash_on.header is not None:
        value = request.headers.get(hash_on.header.lower().encode("latin-1"))
        return value or None
    if hash_on.cookie is not None:
        return cookie_value(request, hash_on.cookie.encode("latin-1"))
    if hash_on.client_ip and client_ip:
        return client_ip.encode("latin-1")
    return None


def cookie_value(request: Request, name: bytes) -> bytes | None:
    """The value of cookie ``name`` (case-sensitive, surrounding quotes removed) from the
    request's ``Cookie`` header(s); None when absent or empty."""
    for header, value in request.headers.items:
        if header != b"cookie":
            continue
        for pair in value.split(b";"):
            key, eq, cookie = pair.partition(b"=")
            if eq and key.strip() == name:
                cookie = cookie.strip()
                if len(cookie) >= 2 and cookie[:1] == b'"' and cookie[-1:] == b'"':
                    cookie = cookie[1:-1]
                return cookie or None
    return None

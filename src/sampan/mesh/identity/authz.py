"""Who may call whom: ``mesh.authorization`` rules checked against the caller's SPIFFE ID.

A rule is ``svc/<from> -> svc/<to>``; ``*`` (or ``svc/*``) on a side matches any service.
The policy is an allow-list and denies by default: no rule matching, no peer identity
(plain TCP, no client certificate), an identity of another trust domain or of another
shape than ``spiffe://<td>/svc/<name>`` — all denied. ``* -> *`` allows every service
of the trust domain.

``AuthorizationGate`` applies the policy to a request at the gateway or the sidecar:
a denied call is answered 403 problem+json, counted in
``sampan_mesh_authz_denied_total{service=...}`` and logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from sampan.http.response import Response, problem
from sampan.mesh.identity.spiffe import service_of, validate_service, validate_trust_domain

if TYPE_CHECKING:
    from sampan.http.request import Request
    from sampan.observe.metrics import Counter, Metrics

__all__ = ["DENIED_METRIC", "AuthorizationGate", "AuthorizationPolicy"]

log = logging.getLogger(__name__)

DENIED_METRIC: Final = "sampan_mesh_authz_denied_total"
_RULE: Final = re.compile(r"\s*(\S+)\s*->\s*(\S+)\s*")
_ANY: Final = "*"
_PEER_CACHE_MAX: Final = 4096


def _side(text: str, rule: str) -> str:
    """``svc/<name>`` -> name, ``*``/``svc/*`` -> ``*``; anything else is a ValueError."""
    if text in (_ANY, "svc/*"):
        return _ANY
    if not text.startswith("svc/"):
        raise ValueError(f"authorization rule {rule!r}: {text!r} must be 'svc/<name>' or '*'")
    name = text[4:]
    try:
        return validate_service(name)
    except ValueError as exc:
        raise ValueError(f"authorization rule {rule!r}: {exc}") from None


class AuthorizationPolicy:
    """Parsed ``mesh.authorization`` rules of one trust domain."""

    __slots__ = ("_any_to", "_from_any", "_open", "_pairs", "_peers", "rules", "trust_domain")

    def __init__(self, rules: Iterable[tuple[str, str]], trust_domain: str) -> None:
        self.trust_domain = validate_trust_domain(trust_domain)
        self.rules = tuple(rules)
        self._open = (_ANY, _ANY) in self.rules
        self._from_any = frozenset(dst for src, dst in self.rules if src == _ANY)
        self._any_to = frozenset(src for src, dst in self.rules if dst == _ANY)
        self._pairs = frozenset(self.rules)
        # peer SPIFFE ID -> service name (None: not a service of this trust domain). Peers
        # are CA-issued identities, so few; the cap only bounds memory if that ever changes.
        self._peers: dict[str, str | None] = {}

    @classmethod
    def parse(cls, rules: list[str], trust_domain: str) -> AuthorizationPolicy:
        """Parse ``["svc/orders -> svc/payments", "* -> svc/health"]``; a malformed rule
        raises ValueError naming it."""
        parsed: list[tuple[str, str]] = []
        for rule in rules:
            match = _RULE.fullmatch(rule) if isinstance(rule, str) else None
            if match is None:
                raise ValueError(
                    f"authorization rule {rule!r}: write 'svc/<from> -> svc/<to>' ('*' for any)"
                )
            parsed.append((_side(match.group(1), rule), _side(match.group(2), rule)))
        return cls(parsed, trust_domain)

    def peer_service(self, peer_id: str | None) -> str | None:
        """The service name of a peer of this trust domain, else None."""
        if peer_id is None:
            return None
        peers = self._peers
        try:
            return peers[peer_id]
        except KeyError:
            pass
        service = service_of(peer_id, self.trust_domain)
        if len(peers) >= _PEER_CACHE_MAX:
            peers.clear()
        peers[peer_id] = service
        return service

    def allows(self, peer_id: str | None, destination_service: str) -> bool:
        """May the peer with SPIFFE ID ``peer_id`` call ``destination_service``?"""
        source = self.peer_service(peer_id)
        if source is None:
            return False
        return (
            self._open
            or destination_service in self._from_any
            or source in self._any_to
            or (source, destination_service) in self._pairs
        )


class AuthorizationGate:
    """Authorises requests by the ``peer_id`` the server put in ``request.state``.

    ``service`` is the destination this gate guards (the sidecar's or the gateway's own
    service); ``authorize`` may name another one per call (a gateway fronting several)."""

    __slots__ = ("_counters", "_metrics", "policy", "service")

    def __init__(self, policy: AuthorizationPolicy, service: str | None, metrics: Metrics) -> None:
        if service is not None:
            validate_service(service)
        self.policy = policy
        self.service = service
        self._metrics = metrics
        self._counters: dict[str, Counter] = {}

    def denied_counter(self, destination_service: str) -> Counter:
        """``sampan_mesh_authz_denied_total{service=destination_service}``."""
        counter = self._counters.get(destination_service)
        if counter is None:
            counter = self._metrics.counter(
                DENIED_METRIC,
                "Calls refused because the caller's SPIFFE ID is not allowed.",
                service=destination_service,
            )
            self._counters[destination_service] = counter
        return counter

    def authorize(
        self, request: Request, destination_service: str | None = None
    ) -> Response | None:
        """None if the caller may call ``destination_service`` (default: the gate's
        service); else the 403 problem+json to answer (the denial is counted and logged)."""
        destination = destination_service if destination_service is not None else self.service
        if destination is None:
            raise ValueError("AuthorizationGate.authorize needs a destination service")
        peer_id = request.state.get("peer_id")
        if self.policy.allows(peer_id, destination):
            return None
        self.denied_counter(destination).inc()
        if peer_id is None:
            detail = f"calls to {destination} need a mesh client certificate"
        else:
            detail = f"{peer_id} may not call {destination}"
        log.info("mesh authorization denied: %s", detail)
        return problem(403, "Forbidden", detail, service=destination)

    __call__ = authorize

"""Authorisation rules and the gate that answers 403 and counts denials."""

from __future__ import annotations

import orjson
import pytest

from sampan.http.headers import Headers
from sampan.http.request import Request
from sampan.mesh.identity.authz import DENIED_METRIC, AuthorizationGate, AuthorizationPolicy
from sampan.observe.metrics import Metrics

TD = "sampan.local"


def sid(service: str, trust_domain: str = TD) -> str:
    return f"spiffe://{trust_domain}/svc/{service}"


def test_exact_rule() -> None:
    policy = AuthorizationPolicy.parse(["svc/orders -> svc/payments"], TD)
    assert policy.allows(sid("orders"), "payments")
    assert not policy.allows(sid("payments"), "orders")  # rules are one-way
    assert not policy.allows(sid("inventory"), "payments")
    assert not policy.allows(sid("orders"), "inventory")


def test_wildcards() -> None:
    policy = AuthorizationPolicy.parse(
        ["* -> svc/health", "svc/admin -> *", "svc/*  ->  svc/catalog"], TD
    )
    assert policy.allows(sid("anyone"), "health")
    assert policy.allows(sid("anyone"), "catalog")
    assert policy.allows(sid("admin"), "payments")
    assert not policy.allows(sid("anyone"), "payments")
    everyone = AuthorizationPolicy.parse(["*->*"], TD)
    assert everyone.allows(sid("x"), "y")


def test_default_deny_and_what_never_passes() -> None:
    empty = AuthorizationPolicy.parse([], TD)
    assert not empty.allows(sid("orders"), "payments")
    open_policy = AuthorizationPolicy.parse(["* -> *"], TD)
    assert not open_policy.allows(None, "payments")  # no client certificate
    assert not open_policy.allows(sid("orders", "other.local"), "payments")  # foreign domain
    assert not open_policy.allows(f"spiffe://{TD}/ns/x/svc/orders", "payments")  # other shape
    assert not open_policy.allows(f"spiffe://{TD}/svc/orders/x", "payments")
    assert not open_policy.allows(f"spiffe://{TD}", "payments")
    assert not open_policy.allows("spiffe://SAMPAN.local/svc/orders", "payments")  # not valid
    assert not open_policy.allows("https://sampan.local/svc/orders", "payments")


def test_peer_cache_is_bounded() -> None:
    policy = AuthorizationPolicy.parse(["* -> *"], TD)
    for i in range(10_000):
        assert policy.allows(sid(f"s{i}"), "x")
    assert len(policy._peers) <= 4096


@pytest.mark.parametrize(
    "rule",
    [
        "svc/orders",
        "svc/orders -> ",
        "orders -> svc/payments",
        "svc/orders -> payments",
        "svc/orders => svc/payments",
        "svc/orders -> svc/payments -> svc/x",
        "svc/ord ers -> svc/payments",
        "svc/a/b -> svc/payments",
        "svc/.. -> svc/payments",
        "spiffe://sampan.local/svc/orders -> svc/payments",
        "",
    ],
)
def test_invalid_rules_are_named(rule: str) -> None:
    with pytest.raises(ValueError) as caught:
        AuthorizationPolicy.parse(["svc/a -> svc/b", rule], TD)
    assert repr(rule) in str(caught.value)


def test_invalid_trust_domain() -> None:
    with pytest.raises(ValueError, match="trust domain"):
        AuthorizationPolicy.parse([], "Bad Domain")


def _request(peer: str | None, *, tls: bool = True) -> Request:
    request = Request("GET", b"/", "/", b"", Headers([(b"host", b"x")]))
    if tls:
        request.state["peer_id"] = peer
    return request


def _denied(metrics: Metrics, service: str) -> str | None:
    for line in metrics.render().decode().splitlines():
        if line.startswith(f'{DENIED_METRIC}{{service="{service}"}} '):
            return line.rsplit(" ", 1)[1]
    return None


def test_gate_allows_and_denies_with_403_problem_and_counts() -> None:
    metrics = Metrics()
    gate = AuthorizationGate(
        AuthorizationPolicy.parse(["svc/orders -> svc/payments"], TD), "payments", metrics
    )
    assert gate.authorize(_request(sid("orders"))) is None
    assert gate(_request(sid("orders")), "payments") is None
    denied = gate.authorize(_request(sid("inventory")))
    assert denied is not None
    assert denied.status == 403
    assert denied.headers.get(b"content-type") == b"application/problem+json"
    assert isinstance(denied.body, bytes)
    body = orjson.loads(denied.body)
    assert body["status"] == 403 and body["title"] == "Forbidden"
    assert body["detail"] == f"{sid('inventory')} may not call payments"
    assert body["service"] == "payments"
    assert _denied(metrics, "payments") == "1"
    # plain TCP (no peer_id at all) and TLS without an identity are denied too
    for request in (_request(None, tls=False), _request(None)):
        response = gate.authorize(request)
        assert response is not None and response.status == 403
        assert isinstance(response.body, bytes)
        assert b"need a mesh client certificate" in response.body
    assert _denied(metrics, "payments") == "3"
    # another destination per call has its own series
    assert gate.authorize(_request(sid("orders")), "ledger") is not None
    assert _denied(metrics, "ledger") == "1"
    assert gate.denied_counter("payments").value == 3


def test_gate_needs_a_destination() -> None:
    gate = AuthorizationGate(AuthorizationPolicy.parse([], TD), None, Metrics())
    with pytest.raises(ValueError, match="destination"):
        gate.authorize(_request(sid("orders")))
    assert gate.authorize(_request(sid("orders")), "payments") is not None

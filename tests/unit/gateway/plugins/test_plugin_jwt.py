from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sampan.gateway.plugins.errors import PluginConfigError
from sampan.gateway.plugins.jwt_auth import JwtPlugin
from sampan.gateway.plugins.registry import build_plugin

SECRET = "s3cret-that-is-long-enough-for-hs512-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(iss: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss, "sub": "user-42", "exp": now + 300, "iat": now, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def consumers(rsa_key) -> list[dict[str, Any]]:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    return [
        {
            "username": "hs",
            "groups": ["g1"],
            "jwt": [
                {"issuer": "hs256", "algorithm": "HS256", "secret": SECRET},
                {"issuer": "hs384", "algorithm": "HS384", "secret": SECRET},
                {"issuer": "hs512", "algorithm": "HS512", "secret": SECRET},
            ],
        },
        {
            "username": "rs",
            "jwt": [{"issuer": "rs", "algorithm": "RS256", "public_key": pem(rsa_key)}],
        },
        {
            "username": "es",
            "jwt": [{"issuer": "es", "algorithm": "ES256", "public_key": pem(ec_key)}],
        },
        {
            "username": "ed",
            "jwt": [{"issuer": "ed", "algorithm": "EdDSA", "public_key": pem(ed_key)}],
        },
        {"_keys": {"es": ec_key, "ed": ed_key}},
    ]


@pytest.fixture
def env(env_factory, consumers):
    return env_factory([c for c in consumers if "_keys" not in c])


@pytest.fixture
def keys(consumers, rsa_key) -> dict[str, Any]:
    return {**consumers[-1]["_keys"], "rs": rsa_key}


async def test_each_algorithm(env, keys, request_factory) -> None:
    plugin = build_plugin("jwt", {}, env)
    cases = [
        ("hs256", "HS256", SECRET, "hs"),
        ("hs384", "HS384", SECRET, "hs"),
        ("hs512", "HS512", SECRET, "hs"),
        ("rs", "RS256", keys["rs"], "rs"),
        ("es", "ES256", keys["es"], "es"),
        ("ed", "EdDSA", keys["ed"], "ed"),
    ]
    for iss, alg, key, user in cases:
        token = jwt.encode(claims(iss), key, algorithm=alg)
        request = request_factory(headers=bearer(token))
        assert await plugin.on_request(request) is None, alg
        assert request.state["consumer"].username == user
        assert request.state["jwt_claims"]["sub"] == "user-42"
        assert b"authorization" not in request.headers


async def test_alg_none_rejected(env, request_factory) -> None:
    plugin = build_plugin("jwt", {}, env)
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    for iss in ("hs256", "rs"):
        token = f"{header}.{b64(json.dumps(claims(iss)).encode())}."
        response = await plugin.on_request(request_factory(headers=bearer(token)))
        assert response is not None and response.status == 401
        assert b'error="invalid_token"' in response.headers.get(b"www-authenticate")


async def test_hs_rs_confusion_rejected(env, rsa_key, request_factory) -> None:
    """The classic attack: sign HS256 with the RSA public key PEM as the HMAC secret."""
    plugin = build_plugin("jwt", {}, env)
    public_pem = pem(rsa_key).encode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims("rs")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    token = f"{header}.{payload}.{signature}"
    response = await plugin.on_request(request_factory(headers=bearer(token)))
    assert response is not None and response.status == 401
    assert orjson.loads(response.body)["detail"] == "Invalid token: algorithm not allowed."


async def test_wrong_signature_and_wrong_key(env, rsa_key2, request_factory) -> None:
    plugin = build_plugin("jwt", {}, env)
    bad = jwt.encode(claims("hs256"), SECRET + "x", algorithm="HS256")
    forged = jwt.encode(claims("rs"), rsa_key2, algorithm="RS256")
    for token in (bad, forged):
        response = await plugin.on_request(request_factory(headers=bearer(token)))
        assert response is not None and response.status == 401
        assert "signature" in orjson.loads(response.body)["detail"]


@pytest.mark.parametrize(
    ("extra", "options", "detail"),
    [
        ({"exp": int(time.time()) - 10}, {}, "token expired"),
        ({"nbf": int(time.time()) + 86400}, {}, "token not yet valid"),
        ({"aud": "other"}, {"audience": ["api"]}, "audience not accepted"),
        ({}, {"audience": ["api"]}, "missing claim aud"),
        ({}, {"required_claims": ["exp", "scope"]}, "missing claim scope"),
    ],
)
async def test_claim_checks(env, request_factory, extra, options, detail) -> None:
    plugin = build_plugin("jwt", options, env)
    token = jwt.encode(claims("hs256", **extra), SECRET, algorithm="HS256")
    response = await plugin.on_request(request_factory(headers=bearer(token)))
    assert response is not None and response.status == 401
    assert orjson.loads(response.body)["detail"] == f"Invalid token: {detail}."


async def test_exp_required_by_default_and_leeway(env, request_factory) -> None:
    plugin = build_plugin("jwt", {}, env)
    no_exp = {k: v for k, v in claims("hs256").items() if k != "exp"}
    response = await plugin.on_request(
        request_factory(headers=bearer(jwt.encode(no_exp, SECRET, algorithm="HS256")))
    )
    assert response is not None and response.status == 401
    lenient = build_plugin("jwt", {"leeway": "30s", "audience": ["api"]}, env)
    token = jwt.encode(
        claims("hs256", exp=int(time.time()) - 5, aud=["x", "api"]), SECRET, algorithm="HS256"
    )
    assert await lenient.on_request(request_factory(headers=bearer(token))) is None


async def test_missing_unknown_malformed(env, request_factory) -> None:
    plugin = build_plugin("jwt", {}, env)
    response = await plugin.on_request(request_factory())
    assert response is not None and response.status == 401
    assert response.headers.get(b"www-authenticate") == b'Bearer realm="sampan"'
    for token in ("abc", "a.b.c", "x" * 9000, jwt.encode(claims("nobody"), SECRET, "HS256")):
        response = await plugin.on_request(request_factory(headers=bearer(token)))
        assert response is not None and response.status == 401
        assert response.headers.get(b"content-type") == b"application/problem+json"


async def test_claims_to_headers_strip_spoofed(env, request_factory) -> None:
    plugin = build_plugin(
        "jwt", {"claims_to_headers": {"sub": "x-user-id", "roles": "x-roles", "bad": "x-bad"}}, env
    )
    token = jwt.encode(
        claims("hs256", roles=["a", "b"], bad="x\r\nx-admin: 1"), SECRET, algorithm="HS256"
    )
    request = request_factory(
        headers=[*bearer(token), ("x-user-id", "admin"), ("x-bad", "spoof"), ("x-other", "1")]
    )
    assert await plugin.on_request(request) is None
    assert request.headers.get_all(b"x-user-id") == [b"user-42"]
    assert request.headers.get(b"x-roles") == b'["a","b"]'
    assert b"x-bad" not in request.headers
    assert request.headers.get(b"x-other") == b"1"
    # a rejected request also has the spoofed copies removed
    request = request_factory(headers=[("x-user-id", "admin")])
    assert (await plugin.on_request(request)).status == 401
    assert b"x-user-id" not in request.headers


async def test_cookie_and_query_tokens(env, request_factory) -> None:
    plugin = build_plugin("jwt", {"cookie_names": ["session"], "query_params": ["jwt"]}, env)
    token = jwt.encode(claims("hs256"), SECRET, algorithm="HS256")
    request = request_factory(headers=[("cookie", f"theme=dark; session={token}")])
    assert await plugin.on_request(request) is None
    assert request.headers.get(b"cookie") == b"theme=dark"
    request = request_factory(query=f"a=1&jwt={token}".encode())
    assert await plugin.on_request(request) is None
    assert request.query == b"a=1"


async def test_anonymous(env, request_factory) -> None:
    plugin = build_plugin("jwt", {"anonymous": "guest"}, env)
    request = request_factory()
    assert await plugin.on_request(request) is None
    assert request.state["consumer"].username == "guest"
    assert (await plugin.on_request(request_factory(headers=bearer("a.b.c")))).status == 401


def test_config_errors(env_factory) -> None:
    with pytest.raises(PluginConfigError, match="give exactly one of secret, public_key, jwks_url"):
        build_plugin(
            "jwt",
            {},
            env_factory([{"username": "x", "jwt": [{"issuer": "i", "algorithm": "RS256"}]}]),
        )
    with pytest.raises(PluginConfigError, match="already belongs"):
        build_plugin(
            "jwt",
            {},
            env_factory(
                [
                    {"username": n, "jwt": [{"issuer": "i", "algorithm": "HS256", "secret": "k"}]}
                    for n in ("a", "b")
                ]
            ),
        )


# ------------------------------------------------------------------------ JWKS


class JwksServer:
    """A minimal HTTP/1.1 responder serving one (replaceable) JWKS document."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.hits = 0
        self.status = 200
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/jwks.json"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.hits += 1
        body = orjson.dumps(self.document)
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (self.status, len(body), body)
        )
        await writer.drain()
        writer.close()


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    yield server
    server.server.close()
    await server.server.wait_closed()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_jwks_cache_rotation_and_min_interval(
    env_factory, jwks_server, rsa_key, rsa_key2, request_factory
) -> None:
    jwks_server.document = {"keys": [jwk(rsa_key, "k1")]}
    env = env_factory(
        [
            {
                "username": "idp",
                "jwt": [{"issuer": "idp", "algorithm": "RS256", "jwks_url": jwks_server.url}],
            }
        ]
    )
    plugin = build_plugin("jwt", {"jwks_cache_ttl": "5m", "jwks_min_refresh_interval": "10s"}, env)
    assert isinstance(plugin, JwtPlugin)
    jwks = next(iter(plugin.jwks.values()))
    clock = FakeClock()
    jwks.clock = clock
    await plugin.start()
    try:
        assert jwks_server.hits == 1
        t1 = jwt.encode(claims("idp"), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        for _ in range(3):  # cached: no more fetches
            assert await plugin.on_request(request_factory(headers=bearer(t1))) is None
        assert jwks_server.hits == 1

        # rotation: the IdP publishes k2; a token with k2 triggers one refresh
        jwks_server.document = {"keys": [jwk(rsa_key, "k1"), jwk(rsa_key2, "k2")]}
        t2 = jwt.encode(claims("idp"), rsa_key2, algorithm="RS256", headers={"kid": "k2"})
        clock.now += 11
        assert await plugin.on_request(request_factory(headers=bearer(t2))) is None
        assert jwks_server.hits == 2

        # unknown kids within the minimum interval: no fetch at all (no amplification)
        t3 = jwt.encode(claims("idp"), rsa_key2, algorithm="RS256", headers={"kid": "nope"})
        for _ in range(5):
            response = await plugin.on_request(request_factory(headers=bearer(t3)))
            assert response is not None and response.status == 401
            assert orjson.loads(response.body)["detail"] == "Invalid token: unknown signing key."
        assert jwks_server.hits == 2
        clock.now += 11  # after the interval one more refresh is allowed
        await plugin.on_request(request_factory(headers=bearer(t3)))
        assert jwks_server.hits == 3

        # TTL: after it the document is refreshed; a failing refresh keeps the known keys
        jwks_server.status = 500
        clock.now += 301
        assert await plugin.on_request(request_factory(headers=bearer(t1))) is None
        assert jwks_server.hits == 4
        counter = plugin.env.metrics.counter(
            "sampan_jwt_jwks_errors", "JWKS fetches that failed.", route="r1"
        )
        assert counter.value == 1

        # concurrent unknown kids after the interval: one fetch for all of them
        jwks_server.status = 200
        clock.now += 11
        results = await asyncio.gather(
            *(plugin.on_request(request_factory(headers=bearer(t3))) for _ in range(10))
        )
        assert all(r is not None and r.status == 401 for r in results)
        assert jwks_server.hits == 5
    finally:
        await plugin.close()


async def test_jwks_skips_keys_of_other_algorithms(
    env_factory, jwks_server, rsa_key, request_factory
) -> None:
    oct_key = {"kty": "oct", "kid": "h", "k": b64(b"secret" * 8), "alg": "HS256"}
    jwks_server.document = {"keys": [oct_key, jwk(rsa_key, "k1")]}
    env = env_factory(
        [
            {
                "username": "idp",
                "jwt": [{"issuer": "idp", "algorithm": "RS256", "jwks_url": jwks_server.url}],
            }
        ]
    )
    plugin = build_plugin("jwt", {}, env)
    await plugin.start()
    try:
        jwks = next(iter(plugin.jwks.values()))
        assert set(jwks.keys) == {"k1"}
        forged = jwt.encode(claims("idp"), "secret" * 8, algorithm="HS256", headers={"kid": "h"})
        response = await plugin.on_request(request_factory(headers=bearer(forged)))
        assert response is not None and response.status == 401
    finally:
        await plugin.close()


async def test_jwks_down_at_start_does_not_fail(env_factory, request_factory) -> None:
    env = env_factory(
        [
            {
                "username": "idp",
                "jwt": [
                    {"issuer": "idp", "algorithm": "RS256", "jwks_url": "http://127.0.0.1:1/jwks"}
                ],
            }
        ]
    )
    plugin = build_plugin("jwt", {"jwks_timeout": 1}, env)
    await plugin.start()
    await plugin.close()

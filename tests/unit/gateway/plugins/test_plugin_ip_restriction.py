from __future__ import annotations

import pytest

from sampan.gateway.plugins.errors import PluginConfigError


@pytest.mark.parametrize(
    ("ip", "ok"),
    [
        ("10.1.2.3", True),
        ("10.9.9.9", False),  # inside allow, but denied: deny wins
        ("192.168.1.1", False),
        ("2001:db8::1", True),
        ("2001:db8:dead::1", False),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped IPv6 counts as IPv4
        ("fe80::1%eth0", False),
        ("not-an-ip", False),
        ("", False),
    ],
)
async def test_allow_deny(build, request_factory, ip, ok) -> None:
    plugin = build(
        "ip-restriction",
        {"allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.9.0.0/16", "2001:db8:dead::/48"]},
    )
    response = await plugin.on_request(request_factory(client=ip))
    if ok:
        assert response is None
    else:
        assert response is not None and response.status == 403
        assert response.headers.get(b"content-type") == b"application/problem+json"


async def test_client_ip_from_state_first(build, request_factory) -> None:
    plugin = build("ip-restriction", {"deny": ["203.0.113.0/24"]})
    request = request_factory(client="10.0.0.1")  # the proxy
    request.state["client_ip"] = "203.0.113.50"  # the real client, computed by the gateway
    assert (await plugin.on_request(request)).status == 403
    assert await plugin.on_request(request_factory(client="10.0.0.1")) is None


def test_bad_cidr_located(build) -> None:
    with pytest.raises(PluginConfigError) as info:
        build("ip-restriction", {"allow": ["10.0.0.0/8", "10.0.0.0/33"]})
    assert info.value.errors[0][0] == "allow[1]"
    assert info.value.locs[0] == ("allow", 1)

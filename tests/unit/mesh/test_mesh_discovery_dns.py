"""DNS discovery against a real (tiny) DNS server on 127.0.0.1: A/AAAA, SRV, TTLs, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from sampan.mesh.config import DnsDiscovery
from sampan.mesh.discovery_dns import DnsDiscoverer, DnsDiscoveryError, parse_nameserver
from sampan.mesh.endpoint_set import EndpointSet

Records = dict[tuple[str, str], tuple[int, list[str]]]


class TinyDns(asyncio.DatagramProtocol):
    """Answers from ``records`` ((name, type) -> (ttl, rdata texts)); ``glue`` adds records
    to the additional section of answers for a name. ``mode``: ok, servfail or drop."""

    def __init__(self) -> None:
        self.records: Records = {}
        self.glue: dict[str, Records] = {}
        self.mode = "ok"
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if self.mode == "drop":
            return
        response = dns.message.make_response(query)
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.records:
            ttl, texts = self.records[(name, rdtype)]
            response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", rdtype, texts))
            for (glue_name, glue_type), (glue_ttl, glue_texts) in self.glue.get(name, {}).items():
                response.additional.append(
                    dns.rrset.from_text_list(glue_name, glue_ttl, "IN", glue_type, glue_texts)
                )
        elif not any(known == name for known, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)

    def count(self, name: str, rdtype: str) -> int:
        return self.queries.count((name, rdtype))


@pytest.fixture
async def tiny_dns() -> AsyncIterator[tuple[TinyDns, str]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(TinyDns, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        yield protocol, f"127.0.0.1:{port}"
    finally:
        transport.close()


def discovery(nameserver: str, **fields: object) -> DnsDiscovery:
    return DnsDiscovery.model_validate({"nameserver": nameserver, **fields})


def urls(endpoint_set: EndpointSet) -> list[str]:
    return sorted(state.url for state in endpoint_set.all())


async def wait_for(condition: Callable[[], bool], within: float) -> float:
    """Poll ``condition`` every 10 ms; returns the seconds it took, fails after ``within``."""
    started = time.monotonic()
    for _ in range(int(within / 0.01) + 1):
        if condition():
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {within}s")


async def test_a_records_are_re_resolved_when_the_ttl_runs_out(
    tiny_dns: tuple[TinyDns, str],
) -> None:
    server, nameserver = tiny_dns
    server.records[("api.test.", "A")] = (1, ["10.0.0.1", "10.0.0.2"])
    endpoints = EndpointSet("api")
    config = discovery(nameserver, name="api.test", port=8080, min_ttl=0.05, max_ttl=10)
    discoverer = DnsDiscoverer(config, endpoints)
    started = time.monotonic()
    await discoverer.start()
    try:
        assert urls(endpoints) == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
        assert discoverer.status.ttl == 1.0 and discoverer.status.resolutions == 1
        kept = endpoints.get("http://10.0.0.2:8080")
        assert kept is not None and kept.source == "dns"
        kept.requests = 7

        server.records[("api.test.", "A")] = (1, ["10.0.0.2", "10.0.0.3"])
        await asyncio.sleep(0.5)  # within the TTL: no new query, old set
        assert server.count("api.test.", "A") == 1
        assert urls(endpoints) == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]

        await wait_for(lambda: "http://10.0.0.3:8080" in urls(endpoints), within=2.0)
        assert time.monotonic() - started >= 0.95
        assert urls(endpoints) == ["http://10.0.0.2:8080", "http://10.0.0.3:8080"]
        assert endpoints.get("http://10.0.0.2:8080") is kept and kept.requests == 7
        assert server.count("api.test.", "A") == 2
    finally:
        await discoverer.stop()


async def test_ttl_is_clamped_to_min_and_max(tiny_dns: tuple[TinyDns, str]) -> None:
    server, nameserver = tiny_dns
    server.records[("zero.test.", "A")] = (0, ["10.0.0.1"])
    server.records[("long.test.", "A")] = (86400, ["10.0.1.1"])
    zero = DnsDiscoverer(
        discovery(nameserver, name="zero.test", port=80, min_ttl=0.2, max_ttl=5),
        EndpointSet("zero"),
    )
    long = DnsDiscoverer(
        discovery(nameserver, name="long.test", port=80, min_ttl=0.05, max_ttl=0.15),
        long_set := EndpointSet("long"),
    )
    assert await zero.resolve_once() == 0.2
    assert await long.resolve_once() == 0.15
    await zero.start()
    await long.start()
    try:
        server.records[("long.test.", "A")] = (86400, ["10.0.1.2"])
        await wait_for(lambda: urls(long_set) == ["http://10.0.1.2"], within=1.0)
        await asyncio.sleep(0.45)
    finally:
        await zero.stop()
        await long.stop()
    # TTL 0 but min_ttl 0.2: start + about two more in ~0.5 s, not a query storm.
    assert 2 <= server.count("zero.test.", "A") <= 6


async def test_srv_uses_ports_weights_and_the_lowest_priority_group(
    tiny_dns: tuple[TinyDns, str],
) -> None:
    server, nameserver = tiny_dns
    srv = "_http._tcp.api.test."
    server.records[(srv, "SRV")] = (
        60,
        ["1 10 8080 a.test.", "1 30 9090 b.test.", "1 0 8081 a.test.", "2 50 7070 c.test."],
    )
    server.glue[srv] = {("a.test.", "A"): (30, ["10.0.0.1"])}  # b.test needs its own query
    server.records[("b.test.", "A")] = (5, ["10.0.0.2"])
    server.records[("c.test.", "A")] = (60, ["10.0.0.9"])
    endpoints = EndpointSet("api")
    config = discovery(nameserver, name=srv, record="SRV", min_ttl=0.05, max_ttl=300)
    discoverer = DnsDiscoverer(config, endpoints)

    assert await discoverer.resolve_once() == 5.0  # the smallest TTL of the records used
    weights = {state.url: state.weight for state in endpoints.all()}
    assert weights == {
        "http://10.0.0.1:8080": 10,
        "http://10.0.0.2:9090": 30,
        "http://10.0.0.1:8081": 1,  # SRV weight 0 counts as the smallest share
    }
    assert server.count("a.test.", "A") == 0  # glue was used
    assert server.count("c.test.", "A") == 0  # priority 2 is not needed

    # The preferred group cannot be resolved: the next group takes over.
    server.records[(srv, "SRV")] = (60, ["1 10 8080 gone.test.", "2 50 7070 c.test."])
    server.glue.clear()
    await discoverer.resolve_once()
    assert [(s.url, s.weight) for s in endpoints.all()] == [("http://10.0.0.9:7070", 50)]


async def test_aaaa_and_both_families(tiny_dns: tuple[TinyDns, str]) -> None:
    server, nameserver = tiny_dns
    server.records[("dual.test.", "A")] = (30, ["10.0.0.1"])
    server.records[("dual.test.", "AAAA")] = (20, ["::1"])
    server.records[("v4only.test.", "A")] = (30, ["10.0.0.5"])
    dual = EndpointSet("dual")
    both = DnsDiscoverer(
        discovery(nameserver, name="dual.test", record="A+AAAA", port=8443, scheme="https"),
        dual,
    )
    assert await both.resolve_once() == 20.0
    assert urls(dual) == ["https://10.0.0.1:8443", "https://[::1]:8443"]
    six = EndpointSet("six")
    assert await DnsDiscoverer(
        discovery(nameserver, name="dual.test", record="AAAA", port=80), six
    ).resolve_once()
    assert urls(six) == ["http://[::1]"]
    # A+AAAA where only A exists still works.
    v4 = EndpointSet("v4")
    await DnsDiscoverer(
        discovery(nameserver, name="v4only.test", record="A+AAAA", port=81), v4
    ).resolve_once()
    assert urls(v4) == ["http://10.0.0.5:81"]


async def test_failures_keep_the_last_good_set_and_retry_with_backoff(
    tiny_dns: tuple[TinyDns, str],
) -> None:
    server, nameserver = tiny_dns
    server.records[("api.test.", "A")] = (0, ["10.0.0.1"])
    endpoints = EndpointSet("api")
    config = discovery(nameserver, name="api.test", port=80, min_ttl=0.05, max_ttl=0.2)
    discoverer = DnsDiscoverer(config, endpoints, timeout=0.3)
    await discoverer.start()
    try:
        before = endpoints.all()
        server.mode = "servfail"
        await wait_for(lambda: discoverer.status.consecutive_failures >= 2, within=1.0)
        assert endpoints.all() is before
        assert discoverer.status.last_error is not None

        server.mode = "ok"
        server.records[("api.test.", "A")] = (0, ["10.0.0.2"])
        await wait_for(lambda: urls(endpoints) == ["http://10.0.0.2"], within=1.0)
        assert discoverer.status.consecutive_failures == 0
        assert discoverer.status.last_error is None
        assert discoverer.status.failures >= 2
    finally:
        await discoverer.stop()

    # Each kind of failure raises from resolve_once and leaves the set alone.
    kept = endpoints.all()
    server.mode = "drop"
    with pytest.raises(DnsDiscoveryError, match="timed out"):
        await discoverer.resolve_once()
    server.mode = "ok"
    missing = DnsDiscoverer(discovery(nameserver, name="nope.test", port=80), endpoints)
    with pytest.raises(DnsDiscoveryError, match="NXDOMAIN"):
        await missing.resolve_once()
    server.records[("api.test.", "TXT")] = (0, ['"x"'])
    server.records.pop(("api.test.", "A"))
    with pytest.raises(DnsDiscoveryError, match="no records"):
        await discoverer.resolve_once()
    assert endpoints.all() is kept


async def test_a_failed_first_resolution_does_not_fail_start(
    tiny_dns: tuple[TinyDns, str],
) -> None:
    server, nameserver = tiny_dns
    server.mode = "servfail"
    endpoints = EndpointSet("api")
    config = discovery(nameserver, name="api.test", port=80, min_ttl=0.05, max_ttl=0.1)
    discoverer = DnsDiscoverer(config, endpoints, timeout=0.3)
    await discoverer.start()
    try:
        assert endpoints.all() == () and discoverer.status.failures == 1
        server.mode = "ok"
        server.records[("api.test.", "A")] = (30, ["10.0.0.7"])
        await wait_for(lambda: urls(endpoints) == ["http://10.0.0.7"], within=1.0)
    finally:
        await discoverer.stop()


def test_parse_nameserver() -> None:
    assert parse_nameserver("10.0.0.53") == ("10.0.0.53", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    for bad in ("dns.local:53", "127.0.0.1:0", "[::1", "[::1]x", "127.0.0.1:abc"):
        with pytest.raises(ValueError, match="nameserver"):
            parse_nameserver(bad)
